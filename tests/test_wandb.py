"""Weights & Biases logging (run.wandb=true): an offline run writes W&B's own files under run.dir/wandb
with the losses of metrics.jsonl, a resume logs to the same W&B run, and a W&B run that cannot start
(online without a login) is one line, exit 2, before any step."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import TINY, error_lines, run_hetron


def wandb_records(path: Path):
    """The protobuf records of a .wandb file (W&B's transaction log: a 7-byte header, then records
    in 32 KiB blocks, each chunk with a 7-byte header of checksum, length and chunk type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of a block
            pos += left
            continue
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def logged_losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                if "loss" in row:
                    out[row["_step"]] = row["loss"]
    return out


def train(run_dir: Path, shards: Path, *extra: str, env=None):
    return run_hetron(["train", f"run.dir={run_dir}", f"data.shards={shards}", *TINY, "run.wandb=true", *extra],
                      env=env)


@pytest.mark.slow
def test_offline_run_writes_its_losses_and_a_resume_continues_the_same_wandb_run(tmp_path, small_shards):
    run = tmp_path / "run"
    first = train(run, small_shards, "train.steps=3", "schedule.total_steps=4", "checkpoint.every=3")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (run / "wandb" / "run_id").read_text().strip()
    second = train(run, small_shards, "train.steps=4", "schedule.total_steps=4", "checkpoint.every=3")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (run / "wandb" / "run_id").read_text().strip() == run_id
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(run_id) for p in runs)  # one W&B run id, two attempts
    jsonl = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert logged_losses(run) == pytest.approx(jsonl, rel=1e-12) and sorted(jsonl) == [1, 2, 3, 4]


def test_online_without_a_login_is_one_line_before_any_step(tmp_path, small_shards):
    run = tmp_path / "run"
    proc = train(run, small_shards, "run.wandb_mode=online", "train.steps=2",
                 env={"WANDB_API_KEY": "", "HOME": str(tmp_path / "home"), "WANDB_CONFIG_DIR": str(tmp_path / "cfg")})
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "run.wandb=true" in lines[0] and "wandb login" in lines[0] and "run.wandb_mode=offline" in lines[0]
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()


def test_bad_wandb_mode_is_one_line(tmp_path):
    proc = run_hetron(["train", f"run.dir={tmp_path / 'r'}", "run.wandb=true", "run.wandb_mode=cloud"])
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "run.wandb_mode='cloud' is not one of offline, online" in lines[0]
    assert not (tmp_path / "r").exists()
