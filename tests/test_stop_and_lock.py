"""Stopping a run by a signal and owning a run folder: real launcher and rank processes.

SIGTERM or SIGINT to the launcher (or SIGTERM to one rank) saves a checkpoint at the next step on
every rank, ends every process with a message saying how to resume, and the resumed run gives the
losses of an uninterrupted one. A second run on a folder in use is refused; a lock left by a run
that is gone is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HETRON, REPO, TINY, error_lines, run_hetron

from pretrain import run_lock
from pretrain.errors import HetronError

STEPS = 24
COMMON = [*TINY, "launch.nproc=2", f"train.steps={STEPS}", f"schedule.total_steps={STEPS}", "checkpoint.every=1000",
          "run.log_every=1"]


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows}


def start(run: Path, shards: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*HETRON, "train", f"run.dir={run}", f"data.shards={shards}", *COMMON, *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for_step(run: Path, proc: subprocess.Popen, step: int = 1, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.is_file() and len([x for x in path.read_text().splitlines() if x.strip()]) >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no training step within the timeout")


def rank_pids(run: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"run.dir={run}"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_shards):
    run = tmp_path_factory.mktemp("full") / "run"
    proc = run_hetron(["train", f"run.dir={run}", f"data.shards={small_shards}", *COMMON])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return losses(run)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to the launcher", "SIGINT to the launcher", "SIGTERM to rank 1"])
def test_a_signal_checkpoints_every_rank_and_the_run_resumes_exactly(tmp_path, small_shards, uninterrupted, how):
    run = tmp_path / "run"
    proc = start(run, small_shards)
    wait_for_step(run, proc)
    sig = signal.SIGINT if "SIGINT" in how else signal.SIGTERM
    if "rank 1" in how:
        pids = [p for p in rank_pids(run) if p != proc.pid]
        rank1 = [p for p in pids if "RANK=1" in Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace").replace("\0", " ")]
        os.kill(rank1[0], sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, (out[-2000:], err[-2000:])
    stopped = [line for line in out.splitlines() if line.startswith("stopped at step")]
    assert stopped and "checkpoint saved" in stopped[0] and "resume" in stopped[0], out[-2000:]
    assert signal.Signals(sig).name in stopped[0]
    step = int(stopped[0].split()[3].rstrip(";"))
    assert step < STEPS and (run / "checkpoints" / f"step_{step:08d}").is_dir()
    time.sleep(1)
    assert rank_pids(run) == [], "ranks left running after the launcher exited"
    assert not (run / run_lock.LOCK_FILE).exists()
    resumed = run_hetron(["train", f"run.dir={run}", f"data.shards={small_shards}", *COMMON])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in got] == [uninterrupted[s] for s in got]


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, small_shards):
    run = tmp_path / "run"
    long = ["train.steps=100000", "schedule.total_steps=100000"]  # runs until stopped
    first = start(run, small_shards, *long)
    try:
        wait_for_step(run, first)
        second = run_hetron(["train", f"run.dir={run}", f"data.shards={small_shards}", *COMMON, *long])
        lines = error_lines(second.stderr)
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
        assert f"pid {first.pid} on {socket.gethostname()}" in lines[0] and "in use" in lines[0]
        assert first.poll() is None  # the owner trains on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=240)


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch):
    # set, then deleted: monkeypatch then removes what acquire() below sets, so nothing leaks to later tests
    monkeypatch.setenv(run_lock.OWNER_ENV, "")
    monkeypatch.delenv(run_lock.OWNER_ENV)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / run_lock.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "slurm_job_id": "", "started": "x"}))
    message = run_lock.acquire(tmp_path)
    assert message and f"pid {dead.pid}" in message
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    run_lock.release(tmp_path)
    assert not lock.exists()
    monkeypatch.delenv(run_lock.OWNER_ENV, raising=False)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": alive.pid, "slurm_job_id": "", "started": "x"}))
        with pytest.raises(HetronError, match=f"in use by another run .pid {alive.pid}"):
            run_lock.acquire(tmp_path)
        # the same Slurm job, requeued on another node: its earlier run is over
        lock.write_text(json.dumps({"host": "node-elsewhere", "pid": alive.pid, "slurm_job_id": "4242", "started": "x"}))
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        assert "node-elsewhere" in run_lock.acquire(tmp_path)
    finally:
        alive.kill()
        run_lock.release(tmp_path)
