"""A rank that dies or hangs ends the local launch soon, with one line naming it; the checkpoint before
stays loadable. Real gloo ranks through the real CLI: one killed with SIGKILL mid-run, one stopped with
SIGSTOP (it keeps its sockets open, as a hung rank or a node gone silent does, so only
launch.timeout_s can end the wait)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import HETRON, REPO, TINY, run_hetron

from pretrain.checkpoint import newest_checkpoint
from pretrain.rank_hosts import RankHost, hosts_summary, lost_peer_message, rank_ranges, read_table

pytestmark = pytest.mark.slow
# the schedule spelled out: resuming with fewer train.steps must not change it
RUN = [*TINY, "train.steps=200", "schedule.total_steps=200", "checkpoint.every=2", "launch.nproc=3"]


def test_rank_ranges_and_hosts_summary():
    assert rank_ranges([5, 0, 1, 2]) == "0-2, 5"
    table = [RankHost(0, "a", "10.0.0.1", 1), RankHost(1, "a", "10.0.0.1", 2), RankHost(2, "b", "10.0.0.2", 3)]
    assert hosts_summary(table) == "3 ranks on 2 hosts: a (ranks 0-1), b (rank 2)"


def test_lost_peer_message_names_the_host_behind_the_address():
    table = [RankHost(0, "n1", "10.0.0.1", 1), RankHost(1, "n1", "10.0.0.1", 2), RankHost(2, "n2", "10.0.0.2", 3),
             RankHost(3, "n2", "10.0.0.2", 4)]
    error = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                         "[10.0.0.2]:6861. This is typically caused by a remote worker crashing. Exception raised "
                         "from recv at ...")
    line = lost_peer_message(error, table, table[0], 4, "/run/checkpoints/step_00000004")
    assert line == ("rank 0 on n1 lost ranks 2-3 on n2 (a rank there died or its node went away) during step 5: "
                    "Connection closed by peer [10.0.0.2]:6861.; the last checkpoint, /run/checkpoints/step_00000004, "
                    "is intact: run the job again to resume from it")
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 40000ms for recv operation")
    assert "got no answer from the other ranks within launch.timeout_s" in lost_peer_message(
        timeout, table, table[0], 0, None)


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*HETRON, "train", *RUN, f"run.dir={run_dir}", *extra], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while newest_checkpoint(run_dir / "checkpoints") is None or not (run_dir / "ranks.json").is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.3)


def finish(proc: subprocess.Popen, within_s: float) -> tuple[int, str, float]:
    began = time.monotonic()
    try:
        _, err = proc.communicate(timeout=within_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the launch did not end within {within_s} s of losing a rank") from None
    return proc.returncode, err, time.monotonic() - began


def test_a_killed_rank_ends_the_launch_with_its_name_and_the_run_resumes(tmp_path):
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, proc)
    victim = read_table(tmp_path)[2]
    os.kill(victim.pid, signal.SIGKILL)
    code, err, took = finish(proc, 60)
    assert code == 128 + signal.SIGKILL, err[-2000:]
    assert f"launcher: rank 2 (pid {victim.pid}) on {victim.host} died of SIGKILL; the other ranks were stopped" in err
    assert "lost contact with the other ranks" in err or "lost rank" in err  # rank 0's own line
    print(f"rank killed -> launch ended: {took:.1f} s")

    checkpoint = newest_checkpoint(tmp_path / "checkpoints")
    step = int(checkpoint.name.split("_")[1])
    again = run_hetron(["train", *RUN, f"train.steps={step + 1}", f"run.dir={tmp_path}"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {checkpoint} at step {step}" in again.stdout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == step + 1


def test_a_hung_rank_fails_the_others_after_launch_timeout_s(tmp_path):
    proc = start(tmp_path, "launch.timeout_s=15")
    wait_for_checkpoint(tmp_path, proc)
    victim = read_table(tmp_path)[1]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        code, err, took = finish(proc, 90)
    finally:
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert code == 2, err[-2000:]
    assert "hetron train: error: rank 0 on" in err and "within launch.timeout_s" in err, err[-2000:]
    assert took >= 10  # it waited for the timeout, not less
    print(f"rank hung -> launch ended: {took:.1f} s (launch.timeout_s=15)")


def test_launch_timeout_s_must_be_positive(tmp_path):
    proc = run_hetron(["train", *TINY, "launch.timeout_s=0", f"run.dir={tmp_path}"])
    assert proc.returncode == 2 and "launch.timeout_s=0.0 must be positive" in proc.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text,lost", [
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.77.0.12]:40123", True),
    ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 20000ms for recv operation "
     "to complete", True),
    ("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error", True),
    ("mat1 and mat2 shapes cannot be multiplied (256x64 and 128x64)", False),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
])
def test_lost_peers_are_told_from_bugs_in_the_step(text, lost):
    import torch.distributed as dist

    from pretrain.rank_hosts import is_communication_failure

    assert is_communication_failure(RuntimeError(text)) is lost
    assert is_communication_failure(dist.DistError("anything"))
