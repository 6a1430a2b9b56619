"""The five capabilities in one job, as a long-context continual-pretraining run would combine them:
LISA (slices moved at every switch, offloaded state) + loss-based reweighting + adaptive sequence
parallelism (documents up to 1024 tokens at 600 tokens per rank) + two stages with re-warming and
replay, on 4 gloo ranks, interrupted inside a LISA interval and inside stage 2 and resumed; and LISA +
reweighting under pipeline parallelism (PP2 x DP2). Every resumed run equals the uninterrupted one."""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from conftest import run_hetron

C_HEADERS = sysconfig.get_paths()["include"]
MODEL = ["model.num_layers=4", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
         "data.vocab_size=512", "train.eval_every=0", "run.tensorboard=false", "run.plot=false", "--no-progress",
         "launch.nproc=4"]
LISA_AND_REWEIGHT = ["lisa.layers=2", "lisa.interval=3", "lisa.state=offload", "reweight.strategy=linupper",
                     "reweight.r=0.3", "reweight.burn_in_steps=1"]
# stage 2 covers steps 4..7 (0-based) and LISA's interval 1 steps 3..5: a stop after 5 steps is inside both
STAGES = ("stages=[{name: py, steps: 4}, {name: c, data: [{path: " + C_HEADERS + "}], steps: 4, "
          "schedule: {kind: rewarm, warmup_steps: 1}}]")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train(run: Path, *args: str):
    proc = run_hetron(["train", f"run.dir={run}", *MODEL, *args], env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def interrupted_equals_uninterrupted(tmp_path: Path, stop: int, *args: str) -> tuple[list[dict], list[dict]]:
    train(tmp_path / "full", *args)
    train(tmp_path / "split", *args, f"train.steps={stop}", f"checkpoint.every={stop}")
    proc = train(tmp_path / "split", *args, f"checkpoint.every={stop}")
    assert "resumed from" in proc.stdout and f"step_{stop:08d}" in proc.stdout, proc.stdout[-2000:]
    full, split = rows(tmp_path / "full"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in full]
    for key in ("loss", "lr", "lisa_active_layers", "weight_max", "sp_max_group"):
        assert [r.get(key) for r in split] == [r.get(key) for r in full], key
    return full, split


@pytest.mark.slow
def test_lisa_reweighting_adaptive_sp_and_stages_with_replay_resume_exactly(tmp_path, long_shards):
    full, _ = interrupted_equals_uninterrupted(
        tmp_path, 5, f"data.shards={long_shards}", "model.seq_length=1024", "data.global_batch_tokens=6000",
        "sp.mode=adaptive", "sp.tokens_per_rank=600", *LISA_AND_REWEIGHT, STAGES, "replay.fraction=0.25")
    # every capability really acted in this run
    assert max(r["sp_max_group"] for r in full) >= 2  # documents longer than a rank's shard
    assert all("weight_max" in r for r in full[1:]) and "weight_max" not in full[0]  # burn-in, then weighted
    assert len({tuple(r["lisa_active_layers"]) for r in full}) >= 2 and full[-1]["lisa_offload_host_bytes"] > 0
    lr = [r["lr"] for r in full]
    assert lr[4] < lr[5]  # stage 2 re-warms
    # no rank read the whole batch, replayed samples included: each read only its groups' documents.
    # (At 600 tokens per rank a micro-batch holds two long documents, on two groups of 2; at 300 every
    # long document needed all 4 ranks, and every rank rightly read everything.)
    assert all(r["data_read_tokens"] < r["data_batch_tokens"] for r in full)


@pytest.mark.slow
def test_lisa_and_reweighting_under_pipeline_parallelism_resume_exactly(tmp_path, small_shards):
    full, _ = interrupted_equals_uninterrupted(
        tmp_path, 5, f"data.shards={small_shards}", "model.seq_length=256", "data.global_batch_tokens=2048",
        "parallel.pipeline=2", "train.steps=8", "schedule.total_steps=8", *LISA_AND_REWEIGHT, "lisa.layers=1",
        "seed=3")
    assert all("weight_max" in r for r in full[1:])
    # each pipeline stage trains 1 of its 2 layers (rank 0 logs stage 0's); at seed 3 stage 0's layer 0
    # leaves at step 3 and returns, from the offloaded state the resumed run loaded, at step 6
    assert [r["lisa_active_layers"] for r in full] == [[0]] * 3 + [[1]] * 3 + [[0]] * 2
