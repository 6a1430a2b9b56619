"""The once-per-run report of the compute path, and the megatron-core release range."""
from __future__ import annotations

import re

import pytest
from conftest import REPO, TINY, run_hetron

from pretrain.accelerators import TESTED_MEGATRON_CORE, accelerator_report, megatron_core_supported


def test_supported_megatron_core_releases_match_the_pin():
    pin = re.search(r'"megatron-core>=([\d.]+),<([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml must pin megatron-core to a tested range"
    low, high = pin.groups()
    assert megatron_core_supported(low) and not megatron_core_supported(high)
    assert [low.rsplit(".", 1)[0]] == list(TESTED_MEGATRON_CORE)
    assert not megatron_core_supported("0.19.2") and not megatron_core_supported(None)
    assert not megatron_core_supported("0.160.0")


def test_report_names_the_fallbacks_in_use_here():
    lines = accelerator_report(cuda=False, backend="gloo")
    text = "\n".join(lines)
    assert "CPU" in lines[0] and "gloo" in lines[0]
    assert "torch AdamW (no Transformer Engine/Apex fused Adam)" in text and "torch norms (no Apex)" in text
    assert "NOT a tested release" not in text


@pytest.mark.slow
def test_training_reports_the_compute_path_once(tmp_path, small_shards):
    proc = run_hetron(["train", f"run.dir={tmp_path}", f"data.shards={small_shards}", *TINY, "train.steps=1",
                       "launch.nproc=2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("hetron: compute: CPU") == 1
    assert "Transformer Engine and Apex are not installed" not in proc.stdout + proc.stderr
