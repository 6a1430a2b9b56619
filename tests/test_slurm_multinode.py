"""One job across two Slurm nodes: hnode1 and hnode2 of scripts/slurm-local.sh start-cluster, each a
slurmd in its own network namespace (own address, hostname and /dev/shm), so ranks 0-1 and 2-3 reach
each other over the bridge as on a cluster. Trains the tiny model over gloo: the same losses as one
node, preemption and requeue across both nodes, a rank killed mid-step, a node lost without a word
(link down, every process killed), and sequence-parallel groups that span the nodes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, TWO_NODE_PARTITION, run_hetron, wait_for

from launch.status_cli import slurm_state
from launch.submit import Submission, SubmitOptions, prepare, submit
from pretrain.checkpoint import newest_checkpoint
from pretrain.cli import main as hetron
from pretrain.rank_hosts import read_table
from pretrain.train_program import TRAIN

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("require_two_nodes")]

STEPS = 8
JOB = ["model.preset=tiny", "data.global_batch_tokens=1024", "train.eval_every=0", "run.plot=false",
       "run.tensorboard=false", "launch.nproc=2", "checkpoint.every=2"]
LONG = ["train.steps=60", "schedule.total_steps=60"]  # to be cut short; resumed with fewer train.steps
ENDED = {"COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED"}


@pytest.fixture(scope="module")
def submit_two_nodes(hetron_home):
    jobs: list[Submission] = []

    def submit_run(train_args: list[str], **options) -> Submission:
        sub = submit(prepare(SubmitOptions(train_args=train_args, nodes=2, partition=TWO_NODE_PARTITION, time="10",
                                           **options), TRAIN))[0]
        jobs.append(sub)
        return sub

    yield submit_run
    for sub in jobs:
        if not sub.job.done():
            subprocess.run(["scancel", sub.job_id], check=False)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def steps_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return max(losses(run_dir), default=0) if metrics.is_file() and metrics.stat().st_size else 0


def job_log(sub: Submission) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(sub.stdout.parent.glob(f"{sub.job_id}_*_log.*")))


def state(sub: Submission) -> str:
    found = slurm_state(sub.job_id)
    return found.state if found else "UNKNOWN"


def finished(sub: Submission) -> Submission:
    """Ended in accounting, not only done for submitit (rank 0's result is there): every task has
    written its result by then, on both nodes."""
    wait_for(f"job {sub.job_id} to end", lambda: sub.job.done() and state(sub) in ENDED)
    return sub


def node_processes(node: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", f"hetron-{node}"], capture_output=True, text=True, check=True).stdout
    return [int(p) for p in out.split()]


def rank_process(node: str, rank: int) -> int:
    """The pid of the job task with SLURM_PROCID=rank among the node's processes."""
    for pid in node_processes(node):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and f"SLURM_PROCID={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no task of rank {rank} on {node}")


def restart_cluster() -> None:
    proc = subprocess.run([str(REPO / "scripts" / "slurm-local.sh"), "start-cluster"], capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def two_node_run(submit_two_nodes, tmp_path_factory) -> Submission:
    return finished(submit_two_nodes([*JOB, f"train.steps={STEPS}", f"run.dir={tmp_path_factory.mktemp('two-node')}"]))


def test_two_nodes_train_like_one_node_of_four_ranks(two_node_run, tmp_path):
    log = job_log(two_node_run)
    assert sorted(r["rank"] for r in two_node_run.job.results()) == [0, 1, 2, 3], log[-3000:]
    assert "master hnode1:" in log  # MASTER_ADDR is the first node
    table = read_table(two_node_run.run_dir)
    assert [(e.rank, e.host) for e in table] == [(0, "hnode1"), (1, "hnode1"), (2, "hnode2"), (3, "hnode2")]
    assert {e.address for e in table} == {"10.77.0.11", "10.77.0.12"}
    assert "4 ranks on 2 hosts: hnode1 (ranks 0-1), hnode2 (ranks 2-3)" in log

    one_node = run_hetron(["train", *JOB, f"train.steps={STEPS}", "launch.nproc=4", f"run.dir={tmp_path}",
                           "--no-progress"])
    assert one_node.returncode == 0, one_node.stderr[-2000:]
    got, want = losses(two_node_run.run_dir), losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want  # bitwise: the same gloo reductions, whichever host a rank is on


def test_preempted_two_node_job_resumes_on_both_nodes_to_the_same_losses(submit_two_nodes, two_node_run, tmp_path,
                                                                         capsys):
    preempted = submit_two_nodes([*JOB, f"train.steps={STEPS}", "checkpoint.every=1000", f"run.dir={tmp_path}"])
    wait_for("the first steps", lambda: steps_done(tmp_path) >= 2)
    assert steps_done(tmp_path) < STEPS, "the run ended before it could be preempted"
    signalled = time.monotonic()
    preempted.job._interrupt()  # Slurm's preemption: USR2 to every task of both nodes

    results = finished(preempted).job.results()
    log = job_log(preempted)
    assert sorted((r["rank"], r["restarts"]) for r in results) == [(0, 1), (1, 1), (2, 1), (3, 1)], log[-3000:]
    stopped = re.search(r"stopped at step (\d+) on SIGUSR2; checkpoint saved", log)
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", log)
    assert stopped and resumed, log[-3000:]
    assert int(resumed.group(1)) == int(stopped.group(1)) < STEPS  # nothing lost beyond the signal's checkpoint
    assert losses(tmp_path) == losses(two_node_run.run_dir)
    assert {e.host for e in read_table(tmp_path)} == {"hnode1", "hnode2"}  # the resumed attempt spans both too
    print(f"signal to end of the requeued job: {time.monotonic() - signalled:.1f} s")

    assert hetron(["status", preempted.job_id]) == 0
    out = capsys.readouterr().out
    assert "requeued 1 time(s)" in out and ": COMPLETED" in out


def test_a_rank_killed_mid_step_ends_the_job_names_itself_and_resumes_when_submitted_again(submit_two_nodes, tmp_path,
                                                                                           capsys):
    """After a rank dies nothing requeues: the job fails naming the lost node, and the same command
    resumes from the checkpoint."""
    job = submit_two_nodes([*JOB, *LONG, f"run.dir={tmp_path}"])
    wait_for("a checkpoint", lambda: steps_done(tmp_path) >= 3)
    os.kill(rank_process("hnode2", 3), signal.SIGKILL)
    killed = time.monotonic()
    wait_for("the job to end", lambda: state(job) in ENDED, 120)
    took = time.monotonic() - killed
    assert state(job) == "FAILED" and slurm_state(job.job_id).exit_code != "0:0"
    log = job_log(job)
    assert "srun: error: hnode2: task 3: Killed" in log
    # the survivors on the other node name the node (and ranks) they lost
    assert re.search(r"hetron train: error: rank [01] on hnode1 lost ranks 2-3 on hnode2 \(a rank there died", log), \
        log[-3000:]
    assert took < 120
    print(f"rank killed -> job ended: {took:.1f} s")
    assert hetron(["status", job.job_id]) == 1
    assert "FAILED" in capsys.readouterr().out

    checkpoint = newest_checkpoint(tmp_path / "checkpoints")
    step = int(checkpoint.name.split("_")[1])
    target = steps_done(tmp_path) + 2  # past what the killed attempt logged
    again = finished(submit_two_nodes([*JOB, *LONG, f"train.steps={target}", f"run.dir={tmp_path}"]))
    assert f"resumed from {checkpoint} at step {step}" in job_log(again), job_log(again)[-3000:]
    assert max(losses(tmp_path)) == target


def attempts(sub: Submission) -> list[str]:
    """The states of every attempt of the job, oldest first (a requeued job has one per run)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", sub.job_id, "-o", "State"], capture_output=True,
                         text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_a_lost_node_fails_the_attempt_and_slurm_requeues_it_to_resume(submit_two_nodes, tmp_path):
    # hnode2's link goes down first, then all its processes (slurmd, slurmstepd, tasks) are killed.
    # launch.timeout_s below Slurm's SlurmdTimeout (30 s): the survivors time out before Slurm ends the step.
    job = submit_two_nodes([*JOB, "train.steps=10", "launch.timeout_s=20", f"run.dir={tmp_path}"])
    wait_for("a checkpoint", lambda: newest_checkpoint(tmp_path / "checkpoints") is not None and steps_done(tmp_path) >= 3)
    # Which survivors see a connection close and which a collective time out depends on whether a last
    # packet got through before the link went down: either way, one line naming what was lost.
    survivors_line = re.compile(r"hetron train: error: rank [01] on hnode1 (lost ranks 2-3 on hnode2|got no answer "
                                r"from the other ranks within launch.timeout_s)")
    try:
        subprocess.run(["ip", "link", "set", "hetron-v2", "down"], check=True)
        for pid in node_processes("hnode2"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        lost = time.monotonic()
        wait_for("the survivors' line", lambda: survivors_line.search(job_log(job)), 120)
        wait_for("the attempt to end", lambda: "NODE_FAIL" in attempts(job), 120)
        took = time.monotonic() - lost
    finally:
        subprocess.run(["ip", "link", "set", "hetron-v2", "up"], check=True)
        restart_cluster()
    assert took < 120
    print(f"node lost -> attempt ended (NODE_FAIL): {took:.1f} s")
    stopped_at = steps_done(tmp_path)

    # Slurm requeues a batch job whose node failed; it resumes on both nodes once hnode2 is back.
    wait_for("the requeued attempt to end", lambda: len(attempts(job)) >= 2 and attempts(job)[-1] in ENDED)
    log = job_log(job)
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", log)
    assert resumed and int(resumed.group(1)) <= stopped_at, log[-3000:]
    assert attempts(job)[0] == "NODE_FAIL" and attempts(job)[-1] == "COMPLETED", attempts(job)
    assert sorted(losses(tmp_path)) == list(range(1, 11))
    assert {e.host for e in read_table(tmp_path)} == {"hnode1", "hnode2"}


def test_sequence_parallel_groups_spanning_the_nodes_give_the_single_rank_loss(submit_two_nodes, long_shards,
                                                                                tmp_path):
    # documents up to 1024 tokens at 300 tokens per rank: the longest need a group of all 4 ranks
    common = [*JOB, f"data.shards={long_shards}", "model.seq_length=1024", "data.global_batch_tokens=6000",
              "train.steps=1", "checkpoint.every=1"]
    one = run_hetron(["train", *common, "launch.nproc=1", f"run.dir={tmp_path / 'one'}", "--no-progress"])
    assert one.returncode == 0, one.stderr[-2000:]
    job = finished(submit_two_nodes([*common, "sp.mode=adaptive", "sp.tokens_per_rank=300",
                                     f"run.dir={tmp_path / 'sp'}"]))
    assert sorted(r["rank"] for r in job.job.results()) == [0, 1, 2, 3], job_log(job)[-3000:]
    first = lambda run: json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])
    assert first("sp")["sp_max_group"] == 4  # a group of ranks 0-3: hnode1 and hnode2
    assert first("sp")["loss"] == pytest.approx(first("one")["loss"], rel=1e-5)


def test_multi_node_sbatch_example_trains_across_both_nodes(two_node_run, tmp_path):
    """launch/examples/multi_node.sbatch, as a user runs it, with the cluster's sizes instead of 8 GPUs."""
    import sys

    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RUN_DIR": str(run_dir)}
    out = subprocess.run(["sbatch", "--parsable", f"--partition={TWO_NODE_PARTITION}", "--nodes=2",
                          "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                          f"--output={tmp_path / 'job.log'}", str(REPO / "launch" / "examples" / "multi_node.sbatch"),
                          *JOB, f"train.steps={STEPS}"], env=env, capture_output=True, text=True, check=True)
    job_id = out.stdout.strip().split(";")[0]
    try:
        wait_for(f"job {job_id} to end", lambda: (s := slurm_state(job_id)) is not None and s.state in ENDED)
    finally:
        subprocess.run(["scancel", job_id], check=False)
    log = (tmp_path / "job.log").read_text()
    assert slurm_state(job_id).state == "COMPLETED", log[-3000:]
    assert [(e.rank, e.host) for e in read_table(run_dir)] == [(0, "hnode1"), (1, "hnode1"), (2, "hnode2"),
                                                               (3, "hnode2")]
    assert losses(run_dir) == losses(two_node_run.run_dir)
