"""Shared pytest set-up: every test gets its own TMPDIR (mosaicml-streaming leaves /tmp locks and
/dev/shm segments behind), and tests find the shared real data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HETRON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set HETRON_SHARED_DATA")
    return SHARED_DATA

import shutil
import subprocess
import sys
import sysconfig

HETRON = [sys.executable, "-m", "pretrain.cli"]
# Tiny model settings for end-to-end runs: a few seconds per run on 2 cores.
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
        "model.seq_length=256", "data.global_batch_tokens=2048", "data.vocab_size=512", "train.eval_every=0",
        "run.tensorboard=false", "run.plot=false", "--no-progress"]


def run_hetron(args: list[str], env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    """Run the real `hetron` CLI in a subprocess; returns CompletedProcess with text output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(HETRON + args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd or REPO)


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not library warnings (what a user reads)."""
    noise = ("Warning", "warnings.warn", "return func", "No CUDA runtime", "warn(")
    return [line for line in stderr.splitlines() if line.strip() and not any(n in line for n in noise)]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A real corpus of a few hundred KB: some standard-library packages' sources."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in ("json", "email", "logging", "importlib"):
        shutil.copytree(stdlib / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="session")
def hetron_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hetron-cache")


@pytest.fixture(scope="session")
def small_shards(small_corpus, hetron_cache) -> Path:
    """Shards of the small corpus, prepared once per session through the real CLI."""
    out = hetron_cache / "small-shards"
    proc = run_hetron(["prepare", "--corpus", str(small_corpus), "--out", str(out), "--vocab-size", "512",
                       "--max-context", "256", "--eval-fraction", "0.1"])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def long_shards(small_corpus, hetron_cache) -> Path:
    """Shards with documents up to 1024 tokens: longer than one rank's sequence-parallel shard, so
    documents straddle shard boundaries."""
    out = hetron_cache / "long-shards"
    proc = run_hetron(["prepare", "--corpus", str(small_corpus), "--out", str(out), "--vocab-size", "512",
                       "--max-context", "1024", "--eval-fraction", "0.1"])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def require_slurm() -> None:
    """Slurm tests skip with the reason when no Slurm is reachable; with CI set they must run."""
    from launch.slurm_probe import slurm_unreachable_reason

    reason = slurm_unreachable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the Slurm tests must run, but: {reason}")
        pytest.skip(reason)
