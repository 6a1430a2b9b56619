"""Staged runs: stage boundaries and per-stage schedules (pure), config errors, and through the
real CLI a two-stage run with replay that resumes exactly from inside stage 2."""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from conftest import TINY, error_lines, run_hetron

from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.stages import StagePlan

C_HEADERS = sysconfig.get_paths()["include"]


def staged(*stages: str, extra: tuple[str, ...] = ()):
    return load_config(None, [f"stages=[{', '.join(stages)}]", "data.global_batch_tokens=1000", *extra])


def test_stage_boundaries_steps_from_token_budgets_and_rewarm_at_the_boundary():
    cfg = staged("{name: a, steps: 100, schedule: {peak_lr: 1.0e-3, min_lr: 1.0e-4, warmup_steps: 10}}",
                 "{name: b, tokens: 49500, schedule: {kind: rewarm, peak_lr: 2.0e-3, min_lr: 2.0e-4, warmup_steps: 5}}")
    plan = StagePlan.of(cfg.stages)
    assert [s.steps for s in cfg.stages] == [100, 50]  # ceil(49500 / 1000)
    assert cfg.train.steps == plan.total_steps == 150 and plan.boundaries() == [100]
    assert plan.locate(99)[0].name == "a" and plan.locate(100) == (plan.spans[1], 0)
    a, b = (s.schedule for s in cfg.stages)
    assert b.total_steps == 50 and b.warmup_init_lr == pytest.approx(1e-4)  # starts where stage a ended
    assert plan.lr(99) == pytest.approx(a.lr(99))
    assert plan.lr(100) == pytest.approx(1e-4)  # re-warm starts at step 0 of stage b
    assert plan.lr(105) == pytest.approx(2e-3)  # peak after its 5 warmup steps
    assert plan.lr(149) == pytest.approx(b.lr(49)) and plan.lr(149) < 3e-4


def test_stage_schedule_inherits_the_run_schedule_and_spans_its_stage():
    cfg = staged("{name: a, steps: 40}", "{name: b, steps: 20}", extra=("schedule.peak_lr=5e-4", "schedule.kind=wsd",
                                                                       "schedule.cooldown_steps=4"))
    assert [(s.schedule.kind, s.schedule.peak_lr, s.schedule.total_steps) for s in cfg.stages] == [
        ("wsd", 5e-4, 40), ("wsd", 5e-4, 20)]


@pytest.mark.parametrize("stages, extra, message", [
    (["{name: a, steps: 30, schedule: {total_steps: 50}}"], (),
     "stages[0].schedule.total_steps=50 disagrees with the stage's length of 30 steps"),
    (["{name: a, steps: 30, schedule: {kind: wsd, cooldown_steps: 40}}"], (), "stages[0].schedule.cooldown_steps=40"),
    (["{name: a, steps: 3, tokens: 10}"], (), "stages[0] needs exactly one of tokens"),
    (["{name: a}"], (), "stages[0] needs exactly one of tokens"),
    (["{name: a, steps: 3}", "{name: a, steps: 3}"], (), "stages[1].name='a' is used by another stage"),
    (["{steps: 3}"], (), "stages[0].name is required"),
    (["{name: a, steps: 3}"], ("train.steps=4",), "train.steps=4 is longer than the stages (3 steps)"),
    (["{name: a, steps: 3}"], ("replay.fraction=0.1",), "replay.fraction > 0 needs an earlier stage"),
    (["{name: a, steps: 3}", "{name: b, steps: 3}"], ("replay.fraction=1",), "replay.fraction=1.0 must lie in [0, 1)"),
    (["{name: a, steps: 3, data: [{path: x, proportion: 0}]}"], (), "stages[0].data[0].proportion=0.0 must be positive"),
    (["{name: a, steps: 3}"], ("init_optimizer=drop",), "init_optimizer='drop' is not one of keep, reset"),
    (["{name: a, steps: 3}"], ("init_from=/no/such/run",), "init_from='/no/such/run'"),
])
def test_bad_stage_configs_name_the_key(stages, extra, message):
    with pytest.raises(ConfigError) as err:
        staged(*stages, extra=extra)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------- end to end


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train(run_dir: Path, shards: Path, cache: Path, *extra: str, ok: bool = True):
    proc = run_hetron(["train", f"run.dir={run_dir}", f"data.shards={shards}", *TINY, "launch.nproc=2", *extra],
                      env={"HETRON_CACHE": str(cache)})
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


TWO_STAGES = ("stages=[{name: py, steps: 3}, {name: c, data: [{path: " + C_HEADERS + "}], steps: 3, "
              "schedule: {kind: rewarm, warmup_steps: 1}}]")


@pytest.mark.slow
def test_two_stage_run_with_replay_interrupted_inside_stage_2_resumes_exactly(tmp_path, small_shards, hetron_cache):
    common = (TWO_STAGES, "replay.fraction=0.25", "checkpoint.every=4", "train.eval_every=3", "train.eval_batches=1")
    train(tmp_path / "full", small_shards, hetron_cache, *common)
    train(tmp_path / "split", small_shards, hetron_cache, *common, "train.steps=4")  # stops inside stage 2
    proc = train(tmp_path / "split", small_shards, hetron_cache, *common)
    assert "resumed from" in proc.stdout and "step_00000004" in proc.stdout
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 7))
    assert [r["loss"] for r in full] == [r["loss"] for r in split]
    assert [r["lr"] for r in full] == [r["lr"] for r in split]
    lrs = {r["step"]: r["lr"] for r in full}
    assert lrs[4] < lrs[5]  # stage 2 (steps 4-6 logged as 4..6) re-warms from stage 1's final LR
    evals = {r["step"]: r for r in full if "eval_loss" in r}
    assert set(evals[3]) >= {"eval_loss", "eval_loss/py"} and "eval_loss/c" not in evals[3]
    assert evals[6]["eval_loss"] == evals[6]["eval_loss/c"] and "eval_loss/py" in evals[6]  # forgetting metric

    # A new run from the staged run's checkpoint: its stages are the earlier ones (replay, eval).
    proc = train(tmp_path / "next", small_shards, hetron_cache, f"init_from={tmp_path / 'full'}", "init_optimizer=reset",
                 "stages=[{name: c2, data: [{path: " + C_HEADERS + "}], steps: 2}]", "replay.fraction=0.5",
                 "train.eval_every=2", "train.eval_batches=1")
    assert "initialized from" in proc.stdout and "step_00000006" in proc.stdout
    assert "(optimizer state: fresh (init_optimizer=reset))" in proc.stdout
    last = metrics(tmp_path / "next")[-1]
    assert last["step"] == 2 and {"eval_loss/py", "eval_loss/c", "eval_loss/c2"} <= set(last)
    # the distributed optimizer's state cannot go into the plain one: one line, nothing written
    proc = train(tmp_path / "plain", small_shards, hetron_cache, f"init_from={tmp_path / 'full'}",
                 "parallel.distributed_optimizer=false", ok=False)
    assert proc.returncode != 0
    assert "holds distributed-optimizer state, which parallel.distributed_optimizer=false cannot load" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "plain" / "checkpoints").exists()


@pytest.mark.slow
def test_stage_shards_with_another_tokenizer_is_one_clear_line(tmp_path, small_shards, small_corpus, hetron_cache):
    other = tmp_path / "other"
    proc = run_hetron(["prepare", "--corpus", str(small_corpus / "json"), "--out", str(other), "--vocab-size", "300",
                       "--max-context", "256", "--eval-fraction", "0.4"])
    assert proc.returncode == 0, proc.stderr
    proc = train(tmp_path / "r", small_shards, hetron_cache,
                 f"stages=[{{name: a, steps: 1}}, {{name: b, steps: 1, data: [{{path: {other}}}]}}]", ok=False)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "stages[1].data[0]" in lines[0] and "tokenizer" in lines[0], proc.stderr[-2000:]
