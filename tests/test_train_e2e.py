"""End-to-end training through the real CLI: real gloo processes, megatron-core, streaming shards."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, error_lines, run_hetron

from data.prepare import Manifest
from data.sample_store import load_length_index, write_length_index
from pretrain.architecture import padded_vocab_size, resolve_model, training_flops_per_token
from pretrain.config import ParallelConfig, load_config

pytestmark = pytest.mark.slow


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def last_row(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def train(run_dir: Path, shards: Path, *extra: str, expect_ok: bool = True):
    proc = run_hetron(["train", f"run.dir={run_dir}", f"data.shards={shards}", *TINY, *extra])
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_first_batch_loss_equal_at_1_rank_dp2_tp2(tmp_path, small_shards):
    common = ["train.steps=1", "checkpoint.every=1"]
    train(tmp_path / "one", small_shards, *common, "launch.nproc=1")
    train(tmp_path / "dp2", small_shards, *common, "launch.nproc=2")
    train(tmp_path / "tp2", small_shards, *common, "launch.nproc=2", "parallel.tensor=2")
    one, dp2, tp2 = (losses(tmp_path / name) for name in ("one", "dp2", "tp2"))
    assert one[1] == pytest.approx(dp2[1], rel=1e-5, abs=1e-5)
    assert one[1] == pytest.approx(tp2[1], rel=1e-5, abs=1e-5)
    # every data-parallel rank reads only its own samples of the batch; tensor-parallel ranks share theirs
    reads = {name: last_row(tmp_path / name) for name in ("one", "dp2", "tp2")}
    assert reads["one"]["data_read_samples"] == reads["one"]["data_batch_samples"] > 2
    assert reads["tp2"]["data_read_tokens"] == reads["tp2"]["data_batch_tokens"]
    assert reads["dp2"]["data_batch_tokens"] == reads["one"]["data_batch_tokens"]
    assert reads["dp2"]["data_read_tokens"] <= 0.6 * reads["dp2"]["data_batch_tokens"]


@pytest.mark.parametrize("precision", [
    [],
    # bf16 weights with megatron's non-distributed mixed-precision optimizer (fp32 main params)
    ["train.precision=bf16", "parallel.distributed_optimizer=false"],
], ids=["fp32-distributed-optimizer", "bf16-plain-optimizer"])
def test_resume_is_bitwise_exact_including_data_order(tmp_path, small_shards, precision):
    common = ["launch.nproc=2", "checkpoint.every=2", "schedule.total_steps=6", *precision]
    train(tmp_path / "full", small_shards, *common, "train.steps=6")
    train(tmp_path / "split", small_shards, *common, "train.steps=3")
    proc = train(tmp_path / "split", small_shards, *common, "train.steps=6")
    assert "resumed from" in proc.stdout and "step_00000003" in proc.stdout
    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 7))
    assert [full[s] for s in range(1, 7)] == [split[s] for s in range(1, 7)]


def test_resume_at_another_data_parallel_size(tmp_path, small_shards):
    common = ["checkpoint.every=2", "schedule.total_steps=4"]
    train(tmp_path / "full", small_shards, *common, "launch.nproc=2", "train.steps=4")
    train(tmp_path / "resized", small_shards, *common, "launch.nproc=2", "train.steps=2")
    proc = train(tmp_path / "resized", small_shards, *common, "launch.nproc=1", "train.steps=4")
    assert "resumed from" in proc.stdout
    full, resized = losses(tmp_path / "full"), losses(tmp_path / "resized")
    for step in (3, 4):  # same data order and state; only the reduction order differs
        assert resized[step] == pytest.approx(full[step], rel=1e-5)


def test_kill_while_writing_checkpoint_keeps_previous_one(tmp_path, small_shards):
    run = tmp_path / "run"
    common = ["launch.nproc=2", "checkpoint.every=2", "schedule.total_steps=6"]
    proc = run_hetron(["train", f"run.dir={run}", f"data.shards={small_shards}", *TINY, *common, "train.steps=6"],
                      env={"HETRON_FAULT": "kill-in-checkpoint:4"})
    assert proc.returncode != 0
    ckpts = run / "checkpoints"
    assert (ckpts / ".tmp-step_00000004").is_dir(), sorted(p.name for p in ckpts.iterdir())
    assert not (ckpts / "step_00000004").exists()
    assert (ckpts / "step_00000002" / "hetron_state.json").is_file()
    resumed = train(run, small_shards, *common, "train.steps=6", "--resume")
    assert "step_00000002" in resumed.stdout
    assert not (ckpts / ".tmp-step_00000004").exists()
    train(tmp_path / "full", small_shards, *common, "train.steps=6")
    assert losses(run)[6] == losses(tmp_path / "full")[6]


def test_summary_metrics_and_plot(tmp_path, small_shards):
    run = tmp_path / "run"
    proc = run_hetron(["train", f"run.dir={run}", f"data.shards={small_shards}", *TINY[:-4], "train.steps=4",
                       "train.eval_every=2", "launch.nproc=1", "checkpoint.every=4", "--no-progress",
                       "run.profile_steps=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out loss" in proc.stdout and str(run.resolve()) in proc.stdout
    assert re.search(r"expected: about \d+ s more for the last step left \([\d.]+ s/step over steps 2-3;", proc.stdout), \
        proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(rows[0])
    assert any("eval_loss" in r for r in rows)
    assert (run / "loss.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.*"))
    assert (run / "config.yaml").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["num_layers"] == 2  # resolved, not null
    # model FLOPs: 6 per matmul parameter + attention, over the step time, per rank; no MFU on CPU
    arch = resolve_model(load_config(str(run / "config.yaml")).model, ParallelConfig())
    vocab = padded_vocab_size(Manifest.load(small_shards).vocab_size, 1)
    for r in rows:
        expected = training_flops_per_token(arch, vocab) * r["batch_tokens"] / r["step_s"] / 1e12
        assert r["model_tflops_per_rank"] == pytest.approx(expected) and r["mfu"] is None
    assert "MFU not reported on CPU" in proc.stdout
    (trace,) = (run / "profile").iterdir()  # the chosen step only, rank 0 of 1
    assert trace.name == "step_00000003-rank_0.json"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)


def test_expected_duration_line_reads_in_seconds_then_minutes():
    from pretrain.progress import expected_duration_line

    assert expected_duration_line(2.5, 20, 3).startswith("expected: about 50 s more for the 20 steps left (2.50 s/step")
    assert expected_duration_line(3.0, 57, 3).startswith("expected: about 2.9 min more for the 57 steps left")


# ------------------------------------------------------------------------------------ bad inputs


def one_error_line(proc) -> str:
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("arg, words", [
    ("train.stepz=3", ["train.stepz", "unknown"]),
    ("train.steps=abc", ["train.steps", "integer"]),
    ("model.preset=huge", ["model.preset", "tiny"]),
    ("schedule.min_lr=1", ["schedule.min_lr", "peak_lr"]),
    ("parallel.tensor=3", ["parallel.tensor"]),
    ("--no-progres", ["unrecognized arguments: --no-progres", "see --help"]),
])
def test_bad_config_is_one_line(tmp_path, arg, words):
    line = one_error_line(run_hetron(["train", f"run.dir={tmp_path / 'r'}", arg]))
    for w in words:
        assert w in line
    assert not (tmp_path / "r").exists()


def test_missing_and_empty_corpus(tmp_path):
    line = one_error_line(run_hetron(["prepare", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]))
    assert "nope" in line and "does not exist" in line
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.py").write_text("  \n")
    line = one_error_line(run_hetron(["prepare", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]))
    assert "no non-empty" in line
    assert not (tmp_path / "o").exists()


def test_corrupt_and_missing_shard(tmp_path, small_shards):
    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    run = tmp_path / "run"
    train(run, shards, "train.steps=2", "launch.nproc=1", "checkpoint.every=2")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    index = load_length_index(shards / "train")
    write_length_index(shards / "train", index[:-2])  # shards changed after prepare
    line = one_error_line(train(run, shards, "train.steps=4", "launch.nproc=1", expect_ok=False))
    assert "length index" in line and "stale" in line and str(shards / "train") in line
    write_length_index(shards / "train", index)
    shard = sorted((shards / "train").glob("shard.*.mds"))[0]
    shard.write_bytes(b"garbage" * 10)
    line = one_error_line(train(run, shards, "train.steps=4", "launch.nproc=1", expect_ok=False))
    assert "shard" in line
    shard.unlink()
    line = one_error_line(train(run, shards, "train.steps=4", "launch.nproc=1", expect_ok=False))
    assert "shard" in line and "missing" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_tokenizer_mismatch(tmp_path, small_shards, small_corpus):
    other = tmp_path / "other"
    proc = run_hetron(["prepare", "--corpus", str(small_corpus / "json"), "--out", str(other), "--vocab-size", "300",
                       "--max-context", "256", "--eval-fraction", "0.4"])
    assert proc.returncode == 0, proc.stderr
    line = one_error_line(train(tmp_path / "r", small_shards, "train.steps=1", f"data.tokenizer={other / 'tokenizer.json'}",
                                expect_ok=False))
    assert "tokenizer" in line


def test_resume_without_checkpoint(tmp_path, small_shards):
    line = one_error_line(train(tmp_path / "r", small_shards, "train.steps=1", "--resume", expect_ok=False))
    assert "no complete checkpoint" in line


def test_documents_longer_than_model_context(tmp_path, small_shards):
    line = one_error_line(train(tmp_path / "r", small_shards, "train.steps=1", "model.seq_length=128",
                                "data.global_batch_tokens=1024", expect_ok=False))
    assert "model.seq_length=128" in line and "256" in line
