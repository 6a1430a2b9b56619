"""The CLI answers --help and config errors before importing torch, megatron-core or streaming.

Each case runs the real `hetron` in a subprocess under `python -X importtime`, which lists every module
the process imported; a config error must exit 2 with one line, torch never among those modules. (Wall
time is measured in benchmarks/bench_cli_startup.py, not asserted.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, error_lines

HEAVY = ("torch", "megatron", "streaming", "transformers")  # seconds each; yaml, numpy, submitit are not


def run_with_import_list(args: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The CLI's result (stderr without the import lines) and the names of every module it imported."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pretrain.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=REPO)
    imported = set()
    kept = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "package":  # the header line
                imported.add(name)
        else:
            kept.append(line)
    proc.stderr = "\n".join(kept)
    return proc, imported


def heavy(imported: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in imported if m.split(".")[0] in HEAVY and m.split(".")[0] not in allowed)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["submit", "--help"]])
def test_help_imports_no_torch(args):
    proc, imported = run_with_import_list(args)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout
    assert heavy(imported) == []


@pytest.mark.parametrize("args, message", [
    (["train", "train.nope=1"], "unknown config key 'train.nope'"),
    (["train", "train.steps=many"], "train.steps='many' must be an integer"),
    (["train", "lisa.state=drop"], "lisa.state='drop' is not one of reset, offload"),
    (["train", "reweight.strategy=loud"], "reweight.strategy='loud' is not one of"),
    (["train", "model.hidden_size=130"], "model.hidden_size=130 is not divisible"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["submit", "--dry-run", "train.nope=1"], "unknown config key 'train.nope'"),
])
def test_config_error_before_torch(args, message):
    proc, imported = run_with_import_list(args)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert heavy(imported) == []


def test_invalid_yaml_file_before_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\n")
    proc, imported = run_with_import_list(["train", str(bad)])
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert f"{bad}: invalid YAML" in line
    assert heavy(imported) == []


def test_prepare_refuses_a_missing_corpus_before_torch(tmp_path):
    out = tmp_path / "shards"
    proc, imported = run_with_import_list(["prepare", "--corpus", str(tmp_path / "nope"), "--out", str(out)])
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert f"corpus '{tmp_path / 'nope'}' does not exist" in line
    assert heavy(imported) == [] and not out.exists()
