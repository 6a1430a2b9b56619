"""The plain sbatch scripts in launch/examples/ on the real local Slurm: single_node.sbatch trains to the
end; requeue.sbatch, signalled as at its time limit, requeues itself and resumes to the same losses.
Skipped, with the reason, only when no Slurm is reachable and CI is not set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.status_cli import slurm_state
from pretrain.checkpoint import newest_checkpoint

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("require_slurm")]

EXAMPLES = Path(__file__).resolve().parents[1] / "launch" / "examples"
TRAIN = ["model.preset=tiny", "data.global_batch_tokens=1024", "train.eval_every=0", "run.plot=false",
         "run.tensorboard=false", "train.steps=8", "checkpoint.every=2"]
# The examples ask for 8 GPUs on one node; here: 2 CPU tasks, no GPUs (gloo), a short limit.
SMALL_JOB = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING"}


def sbatch(script: str, run_dir: Path) -> str:
    env = {**os.environ, "RUN_DIR": str(run_dir), "MAX_REQUEUES": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # `hetron` of this virtualenv
    out = subprocess.run(["sbatch", "--parsable", *SMALL_JOB, f"--output={run_dir}.log", str(EXAMPLES / script),
                          *TRAIN], env=env, capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def wait_until_ended(job_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := slurm_state(job_id)) is None or state.state in UNFINISHED:
        assert time.monotonic() < deadline, f"job {job_id} still {state and state.state} after {timeout_s} s"
        time.sleep(0.5)
    return state.state


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_requeue_example_resumes_to_the_losses_of_the_single_node_example(tmp_path):
    plain, requeued = tmp_path / "single", tmp_path / "requeue"
    # One after the other: mosaicml-streaming's shared-memory registration has raced between jobs
    # opening datasets at the same moment.
    plain_job = sbatch("single_node.sbatch", plain)
    assert wait_until_ended(plain_job) == "COMPLETED", Path(f"{plain}.log").read_text()[-3000:]
    requeue_job = sbatch("requeue.sbatch", requeued)

    deadline = time.monotonic() + 240
    while newest_checkpoint(requeued / "checkpoints") is None:
        assert time.monotonic() < deadline, "no checkpoint from requeue.sbatch in 240 s"
        time.sleep(0.3)
    # What --signal=B:USR1@120 does near the time limit.
    subprocess.run(["scancel", "--batch", "--signal=USR1", requeue_job], check=True)

    assert wait_until_ended(requeue_job) == "COMPLETED", Path(f"{requeued}.log").read_text()[-3000:]
    log = Path(f"{requeued}.log").read_text()
    assert "hetron-requeue: signalled; requeueing (requeue 1 of 1)" in log
    assert "resumed from" in log
    assert slurm_state(requeue_job).requeues == 1
    assert sorted(losses(plain)) == list(range(1, 9))
    assert losses(requeued) == losses(plain)
