"""The plain sbatch scripts in launch/examples/ on the real local Slurm: single_node.sbatch trains to the
end with the CPUs per task it asked for; requeue.sbatch, signalled as at its time limit, forwards the
signal to its ranks, which checkpoint and stop, requeues itself and resumes from that checkpoint to the
same losses; ranks started by srun on an unprepared corpus stop at once naming the `hetron prepare`
command. Skipped, with the reason, only when no Slurm is reachable and CI is not set."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.status_cli import slurm_state
from pretrain.checkpoint import newest_checkpoint

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("require_slurm")]

EXAMPLES = Path(__file__).resolve().parents[1] / "launch" / "examples"
# One torch thread per rank in both runs, so that their losses can be compared bit for bit.
TRAIN = ["model.preset=tiny", "data.global_batch_tokens=1024", "train.eval_every=0", "run.plot=false",
         "run.tensorboard=false", "train.steps=8", "launch.threads_per_rank=1"]
# The examples ask for 8 GPUs on one node; here: 2 CPU tasks of 2 CPUs (the node's 4), no GPUs (gloo).
SMALL_JOB = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10"]
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING"}


def job_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}  # this `hetron`


def sbatch(script: str, run_dir: Path, *train: str) -> str:
    env = job_env(RUN_DIR=str(run_dir), MAX_REQUEUES="1")
    out = subprocess.run(["sbatch", "--parsable", *SMALL_JOB, f"--output={run_dir}.log", str(EXAMPLES / script),
                          *TRAIN, *train], env=env, capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def step_cpus(job_id: str) -> dict[str, int]:
    """Allocated CPUs of each step of the job, from accounting."""
    out = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "--format=JobID,AllocCPUS"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split("|")[0]: int(line.split("|")[1]) for line in out.splitlines() if line.strip()}


def wait_until_ended(job_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := slurm_state(job_id)) is None or state.state in UNFINISHED:
        assert time.monotonic() < deadline, f"job {job_id} still {state and state.state} after {timeout_s} s"
        time.sleep(0.5)
    return state.state


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_requeue_example_checkpoints_on_the_signal_and_resumes_to_the_losses_of_the_single_node_example(tmp_path):
    plain, requeued = tmp_path / "single", tmp_path / "requeue"
    # One after the other: mosaicml-streaming's shared-memory registration has raced between jobs
    # opening datasets at the same moment.
    plain_job = sbatch("single_node.sbatch", plain, "checkpoint.every=2")
    assert wait_until_ended(plain_job) == "COMPLETED", Path(f"{plain}.log").read_text()[-3000:]
    # srun got the CPUs per task that sbatch was given (22.05's srun does not inherit them by itself)
    assert step_cpus(plain_job)[f"{plain_job}.0"] == 2 * 2

    # no periodic checkpoint before the end: the only one to resume from is written on the signal
    requeue_job = sbatch("requeue.sbatch", requeued, "checkpoint.every=1000")
    deadline = time.monotonic() + 240
    while not (requeued / "metrics.jsonl").is_file() or len(losses(requeued)) < 2:
        assert time.monotonic() < deadline, "requeue.sbatch trained no 2 steps in 240 s"
        time.sleep(0.3)
    assert max(losses(requeued)) < 8, "the run ended before it could be signalled"
    # What --signal=B:USR2@90 does 90 s before the time limit.
    subprocess.run(["scancel", "--batch", "--signal=USR2", requeue_job], check=True)

    assert wait_until_ended(requeue_job) == "COMPLETED", Path(f"{requeued}.log").read_text()[-3000:]
    log = Path(f"{requeued}.log").read_text()
    assert "hetron-requeue: training stopped; requeueing (requeue 1 of 1)" in log, log[-3000:]
    stopped = re.search(r"stopped at step (\d+) on SIGUSR2; checkpoint saved", log)
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", log)
    assert stopped and resumed, log[-3000:]
    assert int(resumed.group(1)) == int(resumed.group(2)) == int(stopped.group(1)) < 8
    assert slurm_state(requeue_job).requeues == 1
    assert sorted(losses(plain)) == list(range(1, 9))
    assert losses(requeued) == losses(plain)


def test_ranks_under_srun_refuse_an_unprepared_corpus_at_once(tmp_path, small_corpus):
    """At scale rank 0 would tokenize a big corpus while the other ranks wait in a barrier until the
    process-group timeout; ranks of a distributed launch must prepare nothing and say what to run."""
    cache = tmp_path / "cache"
    rank = 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec hetron train "$@"'
    started = time.monotonic()
    proc = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", "--time=5", "bash", "-c", rank, "rank",
                           *TRAIN, f"data.corpus={small_corpus}", "data.vocab_size=512", f"run.dir={tmp_path / 'run'}",
                           "--no-progress"],
                          env=job_env(HETRON_CACHE=str(cache), MASTER_ADDR="127.0.0.1", MASTER_PORT="29731"),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert time.monotonic() - started < 120
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hetron train: error:")]
    assert len(errors) == 2, proc.stderr[-3000:]  # one line from each rank
    assert errors[0] == errors[1]
    shards = re.search(r"no prepared shards in (\S+) \(data\.corpus=", errors[0])
    assert shards and Path(shards.group(1)).parent == cache / "shards", errors[0]
    command = errors[0].split(": ")[-1]
    assert command.startswith(f"hetron prepare --corpus {small_corpus} --out {shards.group(1)} --vocab-size 512")
    assert not Path(shards.group(1)).exists()  # nothing was prepared inside the launch

    # the named command prepares exactly what the ranks look for
    subprocess.run([sys.executable, "-m", "pretrain.cli", *command.split()[1:]], env=job_env(), check=True,
                   capture_output=True, timeout=300)
    assert (Path(shards.group(1)) / "manifest.json").is_file()
