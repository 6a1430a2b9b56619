"""`hetron submit` end to end on the real local Slurm, training the tiny model on CPUs (gloo): a 2-task job,
a job preempted mid-run that is requeued and resumes to the same losses, a failing job, a sweep as a job
array. Skipped, with the reason, only when no Slurm is reachable and CI is not set."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for

from launch.status_cli import slurm_state
from launch.submit import Submission, SubmitOptions, prepare, submit
from pretrain.checkpoint import newest_checkpoint
from pretrain.cli import main as hetron
from pretrain.train_program import TRAIN

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("require_slurm")]

# Small and quick: ~1 s a step on 2 busy cores; no eval, plots or TensorBoard.
TINY = ["model.preset=tiny", "data.global_batch_tokens=1024", "train.eval_every=0", "run.plot=false",
        "run.tensorboard=false"]
TWO_TASKS = [*TINY, "train.steps=8", "checkpoint.every=2", "launch.nproc=2"]


@pytest.fixture(scope="module")
def submitted(hetron_home):
    """Submits through the same path as `hetron submit`; cancels whatever is still queued at the end."""
    jobs: list[Submission] = []

    def submit_run(train_args: list[str], **options) -> list[Submission]:
        subs = submit(prepare(SubmitOptions(train_args=train_args, time="10", **options), TRAIN))
        jobs.extend(subs)
        return subs

    yield submit_run
    for sub in jobs:
        if not sub.job.done():
            subprocess.run(["scancel", sub.job_id], check=False)


@pytest.fixture(scope="module")
def uninterrupted(submitted, tmp_path_factory) -> Submission:
    """The reference run, to its end. The tests' jobs run one after another: mosaicml-streaming's
    shared-memory registration has raced between jobs opening datasets at the same moment."""
    return finished(submitted([*TWO_TASKS, f"run.dir={tmp_path_factory.mktemp('uninterrupted')}"])[0])


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}  # a resumed run rewrites the steps after its checkpoint


def finished(sub: Submission) -> Submission:
    wait_for(f"job {sub.job_id} to end", sub.job.done)
    return sub


def test_two_task_job_completes_with_metrics_in_its_run_folder(uninterrupted):
    results = uninterrupted.job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert sorted(losses(uninterrupted.run_dir)) == list(range(1, 9))
    assert (uninterrupted.run_dir / "config.yaml").is_file()
    assert newest_checkpoint(uninterrupted.run_dir / "checkpoints").name == "step_00000008"
    wait_for("accounting to record the end", lambda: slurm_state(uninterrupted.job_id).state == "COMPLETED", 60)


def test_preempted_job_is_requeued_and_resumes_to_the_same_losses(submitted, uninterrupted, tmp_path):
    # no periodic checkpoint before the end: the one it resumes from is written on the signal
    preempted = submitted([*TWO_TASKS, "checkpoint.every=1000", f"run.dir={tmp_path}"])[0]
    wait_for("the first steps", lambda: (tmp_path / "metrics.jsonl").is_file() and len(losses(tmp_path)) >= 2)
    assert max(losses(tmp_path)) < 8, "the run ended before it could be preempted"
    preempted.job._interrupt()  # what Slurm does on preemption: SIGTERM, then USR2 to every task

    results = finished(preempted).job.results()
    log = preempted.stdout.read_text() + preempted.stderr.read_text()
    assert [r["restarts"] for r in results] == [1, 1], log[-3000:]
    assert slurm_state(preempted.job_id).requeues == 1
    stopped = re.search(r"stopped at step (\d+) on SIGUSR2; checkpoint saved", log)
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", log)
    assert stopped and resumed, log[-3000:]
    assert int(resumed.group(1)) == int(resumed.group(2)) == int(stopped.group(1)) < 8
    got, want = losses(tmp_path), losses(uninterrupted.run_dir)
    assert got == want, f"{resumed.group()}; steps that differ: {[s for s in want if got.get(s) != want[s]]}"


def test_failing_job_shows_its_error_and_is_not_requeued(submitted, tmp_path, capsys):
    # resume=latest with no checkpoint passes the up-front checks and fails inside the job.
    failing = submitted([*TINY, "train.steps=2", "launch.nproc=1", "resume=latest", f"run.dir={tmp_path}"],
                        max_requeues=3)[0]
    error = finished(failing).job.exception()
    assert error is not None and "resume requested but no complete checkpoint in" in str(error)
    wait_for("accounting to record the failure", lambda: slurm_state(failing.job_id).state == "FAILED", 30)

    assert hetron(["status", failing.job_id]) == 1
    out = capsys.readouterr().out
    assert f"job {failing.job_id}: FAILED" in out and "requeued 0 time(s)" in out
    assert "  error: TrainingFailed: hetron train: error: resume requested but no complete checkpoint in" in out


def test_sweep_runs_as_a_job_array_each_in_its_own_folder(hetron_home, tmp_path, capsys):
    code = hetron(["submit", *TINY, "train.steps=2", "launch.nproc=1", f"run.dir={tmp_path}",
                   "--sweep", "seed=1,2", "--array-parallelism", "1", "--time", "10", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    job_ids = re.findall(r"submitted job (\d+_\d+) \[seed=\d\]", out)
    array_id = job_ids[0].split("_")[0]
    assert job_ids == [f"{array_id}_0", f"{array_id}_1"]
    first, second = losses(tmp_path / "seed=1"), losses(tmp_path / "seed=2")
    assert sorted(first) == sorted(second) == [1, 2]
    assert first != second  # two seeds, two runs
    assert "#SBATCH --array=0-1%1" in (tmp_path / "slurm" / f"{array_id}_submission.sh").read_text()

    for job_id in job_ids:
        wait_for(f"accounting to record {job_id}'s end", lambda j=job_id: slurm_state(j).state == "COMPLETED", 60)
    assert hetron(["status", array_id]) == 0
    status = capsys.readouterr().out
    assert status.count(": COMPLETED") == 2 and "sweep point: seed=2" in status


def test_submit_prepares_a_new_corpus_on_this_host_before_the_job_starts(submitted, small_corpus, tmp_path,
                                                                       monkeypatch):
    """Inside the job the ranks only load shards: rank 0 tokenizing a big corpus while the others wait
    in a barrier would time out the process group at scale."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HETRON_CACHE", str(cache))
    job = submitted([*TINY, "train.steps=2", "launch.nproc=2", f"data.corpus={small_corpus}",
                     "data.vocab_size=512", f"run.dir={tmp_path / 'run'}"])[0]
    assert len(list(cache.glob("shards/*/manifest.json"))) == 1  # already there when submit returned
    results = finished(job).job.results()
    log = job.stdout.read_text() + job.stderr.read_text()
    assert sorted(r["rank"] for r in results) == [0, 1], log[-3000:]
    assert "preparing shards" not in log
    assert sorted(losses(tmp_path / "run")) == [1, 2]
