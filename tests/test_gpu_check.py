"""scripts/gpu-check.sh and scripts/gpu-wheels.sh in their dry modes (the CPU, tiny sizes): the GPU check
stays runnable for the first GPU that appears, and bad inputs are one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def script(name: str, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / name), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_wheel_set_for_the_gpu_machine_pins_what_it_lacks():
    proc = script("gpu-wheels.sh", "--dry-run", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = proc.stdout.splitlines()[0]
    assert "megatron-core==0.16.1" in listed and "mosaicml-streaming==" in listed and "highspy==" in listed
    for there in ("torch==", "transformers==", "numpy==", "safetensors==", "wandb=="):  # on the machine, or optional
        assert f" {there}" not in listed and not listed.split(": ", 1)[1].startswith(there), there
    assert "--python-version 3.12" in proc.stdout and "--only-binary=:all:" in proc.stdout


@pytest.mark.slow
def test_dry_run_runs_every_gpu_check_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    proc = script("gpu-check.sh", "--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["env.json", "gpu-tests.txt", "gpu-tests.xml", "gpu_bench.json",
                                                    "gpu_bench.txt", "report.txt"]
    report = (out / "report.txt").read_text()
    # every check ran but the one that needs Transformer Engine's CUDA attention
    assert "6 passed, 1 skipped" in report and "RATIO document / padded attention tokens/s" in report
    assert "dry run" in report


def test_unknown_argument_is_one_line():
    proc = script("gpu-check.sh", "--fast")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "scripts/gpu-check.sh: unknown argument '--fast' (use --dry-run, --out DIR)")


def test_missing_packages_without_wheels_is_one_line(tmp_path):
    if (REPO / ".whl").exists():
        pytest.skip(".whl/ exists in this checkout: the script would install from it")
    # the base interpreter of this machine has none of megatron-core & co.
    proc = script("gpu-check.sh", "--out", str(tmp_path / "out"), env={"PYTHON": sys._base_executable})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "run scripts/gpu-wheels.sh" in lines[0], proc.stderr
