"""`hetron submit --local`: the same job (TrainingJob, two tasks) through submitit's local executor, no Slurm."""
from __future__ import annotations

import json
import re

import pytest

from pretrain.cli import main as hetron

pytestmark = pytest.mark.slow


def test_local_submission_trains_two_ranks_and_is_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HETRON_HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    code = hetron(["submit", "--local", "model.preset=tiny", "data.global_batch_tokens=1024", "train.eval_every=0",
                   "run.plot=false", "run.tensorboard=false", "train.steps=2", "launch.nproc=2", f"run.dir={run_dir}"])
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    assert f"job {job_id}: completed" in out
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    log = (run_dir / "local" / f"{job_id}_1_log.err").read_text()
    assert re.search(r"hetron job: rank 1/2 \(local 1\) gloo master 127\.0\.0\.1:\d+", log), log[-2000:]

    assert hetron(["status", job_id]) == 0
    assert f"job {job_id} (local): COMPLETED" in capsys.readouterr().out
