"""hetron submit's planning and checks, the requeue bound and job records (no Slurm needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.job import TrainingJob
from launch.job_record import JobRecord, load_records, save_record
from launch.run_config import split_train_args
from launch.status_cli import log_to_show, step_reached
from launch.submit import (
    check_time_limit,
    estimated_seconds_per_step,
    mount_of,
    parse_sweep,
    plan_runs,
    shared_path_problem,
    sweep_folder_name,
)
from pretrain.checkpoint import STATE_FILE
from pretrain.cli import main as hetron
from pretrain.errors import ConfigError
from pretrain.train_program import TRAIN


def test_sweeps_are_the_product_of_their_axes():
    assert parse_sweep([]) == [{}]
    assert parse_sweep(["a=1,2", "b=x"]) == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]
    with pytest.raises(ConfigError, match="--sweep 'a': expected key=value1,value2"):
        parse_sweep(["a"])


def test_each_sweep_run_has_its_own_folder_and_overrides(tmp_path):
    args = split_train_args(["seed=1", "run.dir=/elsewhere", "train.steps=4"], TRAIN)
    runs = plan_runs(args, tmp_path, ["seed=7,8"])
    assert [r.run_dir for r in runs] == [tmp_path / "seed=7", tmp_path / "seed=8"]
    assert runs[1].train_args.argv() == ["train.steps=4", "seed=8", f"run.dir={tmp_path / 'seed=8'}"]
    assert sweep_folder_name({"data.corpus": "/a/b c"}) == "data.corpus=_a_b_c"


def test_config_comes_first_and_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "run.yaml").write_text("train:\n  steps: 3\n")
    monkeypatch.chdir(tmp_path)
    assert split_train_args(["run.yaml", "seed=2"], TRAIN).argv() == [str(tmp_path / "run.yaml"), "seed=2"]
    with pytest.raises(ConfigError, match="argument 'run.yaml': expected CONFIG first"):
        split_train_args(["seed=2", "run.yaml"], TRAIN)


def test_time_limit_must_reach_one_checkpoint():
    config = TRAIN.plan(None, ["train.steps=1000", "checkpoint.every=200"])
    check_time_limit(6, config, seconds_per_step=0.5, tasks=1)  # 60 s + 100 s <= 360 s - 90 s
    with pytest.raises(ConfigError, match=r"--time 3 min is shorter than one checkpoint interval: .*"
                                          r"checkpoint.every=200 x 0.5 s/step \(--seconds-per-step\) = 160 s"):
        check_time_limit(3, config, seconds_per_step=0.5, tasks=1)


def test_without_a_step_time_the_estimate_scales_with_batch_tokens_and_tasks():
    small = TRAIN.plan(None, ["model.preset=tiny", "data.global_batch_tokens=1024"])
    big = TRAIN.plan(None, ["model.preset=tiny", "data.global_batch_tokens=16384"])
    assert estimated_seconds_per_step(big, tasks=2) == 16 * estimated_seconds_per_step(small, tasks=2)
    assert estimated_seconds_per_step(big, tasks=1) == 2 * estimated_seconds_per_step(big, tasks=2)
    with pytest.raises(ConfigError, match=r"estimated: data.global_batch_tokens=16384 at ~450 tokens/s x 2"):
        check_time_limit(5, big, seconds_per_step=None, tasks=2)


def test_requeues_are_bounded_by_the_restart_count(monkeypatch, tmp_path):
    job = TrainingJob(TRAIN, ["train.steps=4", "resume=never"], str(tmp_path), str(tmp_path / "ckpt"), max_requeues=2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = job.checkpoint()
    assert again.function.train_argv == ["train.steps=4", "resume=auto"]  # a requeued run resumes
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert job.checkpoint() is None


def test_an_explicit_resume_path_survives_a_requeue_until_the_run_has_its_own_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    job = TrainingJob(TRAIN, ["resume=/ckpt/step_100"], str(tmp_path), str(tmp_path / "checkpoints"), max_requeues=3)
    assert job.checkpoint().function.train_argv == ["resume=/ckpt/step_100"]
    (tmp_path / "checkpoints" / "step_00000004.tmp").mkdir(parents=True)  # incomplete: still the path
    assert job.checkpoint().function.train_argv == ["resume=/ckpt/step_100"]
    complete = tmp_path / "checkpoints" / "step_00000004"
    complete.mkdir()
    (complete / STATE_FILE).write_text("{}")
    assert job.checkpoint().function.train_argv == ["resume=auto"]


def test_records_of_an_array_are_found_by_the_array_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HETRON_HOME", str(tmp_path))
    for index in (10, 2):
        save_record(JobRecord(f"77_{index}", "slurm", "/f", f"/r{index}", ["seed=1"], {"seed": str(index)}))
    save_record(JobRecord("770", "slurm", "/f", "/other", []))
    assert [r.job_id for r in load_records("77")] == ["77_2", "77_10"]
    assert load_records("77_10")[0].log_paths()[1].as_posix() == "/f/77_10_0_log.err"
    assert load_records("78") == []


def test_status_shows_the_last_step_and_the_log_with_the_traceback(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 4.25}) + "\n" + '{"step": 4, "lo')
    assert step_reached(tmp_path) == "step 3, loss 4.2500"
    (tmp_path / "5_0_log.err").write_text("fine\n")
    (tmp_path / "5_1_log.err").write_text("Traceback (most recent call last):\nValueError: boom\n")
    record = JobRecord("5", "slurm", str(tmp_path), str(tmp_path), [])
    assert log_to_show(record, failed=True).name == "5_1_log.err"
    assert log_to_show(record, failed=False) is None  # no stdout log yet
    (tmp_path / "5_0_log.out").write_text("step 3/4\n")
    assert log_to_show(record, failed=False).name == "5_0_log.out"


def test_dry_run_prints_the_sbatch_file_of_an_array(tmp_path, capsys):
    code = hetron(["submit", f"run.dir={tmp_path}", "train.steps=20", "launch.nproc=1", "--sweep", "seed=1,2",
                   "--time", "0:30:00", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("#!/bin/bash")
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --time=30", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --signal=USR2@90", f"#SBATCH --output={tmp_path}/slurm/%A_%a_0_log.out"):
        assert line in out
    assert f"run folder {tmp_path}/seed=2: hetron train train.steps=20 launch.nproc=1 seed=2" in err
    assert not (tmp_path / "slurm").exists()  # nothing written


def test_local_and_dry_run_do_not_combine(tmp_path, capsys):
    assert hetron(["submit", f"run.dir={tmp_path}", "--local", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "hetron submit: error: --dry-run prints an sbatch script: it does not combine with --local")


@pytest.mark.parametrize("argv, message", [
    (["submit", "--nodes", "x"], "hetron submit: error: argument --nodes: invalid int value: 'x' (see --help)"),
    (["status"], "hetron status: error: the following arguments are required: job (see --help)"),
])
def test_a_bad_option_is_one_line(argv, message, capsys):
    assert hetron(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_a_shard_cache_on_a_filesystem_local_to_this_host_is_refused(tmp_path):
    run_folder = tmp_path / "run"
    assert shared_path_problem(tmp_path / "cache" / "shards" / "x", run_folder) is None  # the run folder's own
    problem = shared_path_problem(Path("/dev/shm/hetron-cache/shards/x"), run_folder)  # tmpfs: this host's RAM
    assert problem == f"on tmpfs mounted at /dev/shm, a filesystem of this host and not the run folder's ({run_folder})"
    assert mount_of(Path("/proc/self")) == ("/proc", "proc")
