"""Shared pytest set-up: every test gets its own TMPDIR (mosaicml-streaming leaves /tmp locks and
/dev/shm segments behind), and tests find the shared real data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# CI draws the same property-test examples on every run (a landing must not hang on a new random draw);
# local runs draw afresh, which is how the examples pinned with @example were found
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

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
def hetron_home(tmp_path_factory) -> Path:
    """A job-record folder of the module's own (`hetron status` reads it), so jobs of other test runs
    on this machine are not listed."""
    home = tmp_path_factory.mktemp("hetron-home")
    previous = os.environ.get("HETRON_HOME")
    os.environ["HETRON_HOME"] = str(home)
    yield home
    if previous is None:
        del os.environ["HETRON_HOME"]
    else:
        os.environ["HETRON_HOME"] = previous


JOB_TIMEOUT_S = 300  # a Slurm job of the tests, from submission to its end, on a loaded machine


def wait_for(what: str, condition, timeout_s: float = JOB_TIMEOUT_S) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.3)


TWO_NODE_PARTITION = "multi"  # scripts/slurm-local.sh start-cluster: hnode1 and hnode2, 2 CPUs each


def two_nodes_unavailable_reason() -> str | None:
    """None when the local cluster's two namespaced nodes can run a job; else why not."""
    from launch.slurm_probe import slurm_unreachable_reason

    reason = slurm_unreachable_reason()
    if reason:
        return reason
    proc = subprocess.run(["sinfo", "-h", "-p", TWO_NODE_PARTITION, "-N", "-o", "%N %T"], capture_output=True,
                          text=True, timeout=30, check=False)
    states = dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)
    usable = [n for n, s in states.items() if s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if len(usable) >= 2:
        return None
    marker = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local")) / "cluster-unavailable"
    why = marker.read_text().strip() if marker.is_file() else "scripts/slurm-local.sh start-cluster was not run"
    return f"no two-node partition {TWO_NODE_PARTITION!r} (nodes: {states or 'none'}): {why}"


@pytest.fixture(scope="module")
def require_two_nodes() -> None:
    """Multi-node tests skip with the reason where namespaces are refused; with CI set they must run."""
    reason = two_nodes_unavailable_reason()
    if reason:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"CI is set and this is root, so the two-node tests must run, but: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def require_slurm() -> None:
    """Slurm tests skip with the reason when no Slurm is reachable; with CI set they must run."""
    from launch.slurm_probe import slurm_unreachable_reason

    reason = slurm_unreachable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the Slurm tests must run, but: {reason}")
        pytest.skip(reason)
