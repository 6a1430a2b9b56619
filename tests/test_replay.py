"""Replay: a fixed fraction of every global batch comes from samples a previous stage actually
served, drawn the same way after a resume."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import run_hetron

from data.mixture import StagedBatchLoader, StreamSource
from data.seen_samples import ReplayPool, is_replay_slot
from pretrain.errors import HetronError
from pretrain.schedules import ScheduleSpec
from pretrain.stages import StageConfig, StagePlan

BUDGET = 2048


def test_replay_slots_hold_the_fraction_in_every_stretch():
    for fraction in (0.05, 0.25, 0.5):
        slots = np.array([is_replay_slot(k, fraction) for k in range(2000)])
        assert abs(slots.mean() - fraction) <= 0.01
        for start in range(0, 2000, 37):  # any window of n samples holds n*f +- 1 replays
            window = slots[start:start + 40]
            assert abs(window.sum() - len(window) * fraction) <= 1
    assert not any(is_replay_slot(k, 0.0) for k in range(100))


def test_replay_pool_draws_only_seen_samples_each_once_per_pass():
    seen = {"/a/train": np.array([5, 3, 9]), "/b/train": np.array([0, 7])}
    pool = ReplayPool(seen, seed=1)
    first_pass = {pool.pick(r) for r in range(5)}
    assert first_pass == {("/a/train", 3), ("/a/train", 5), ("/a/train", 9), ("/b/train", 0), ("/b/train", 7)}
    again = ReplayPool(seen, seed=1)
    assert [pool.pick(r) for r in range(12)] == [again.pick(r) for r in range(12)]


@pytest.fixture(scope="module")
def c_shards(small_shards, hetron_cache) -> Path:
    """Python's C headers, prepared with the small shards' tokenizer (stage 2's data)."""
    out = hetron_cache / "c-shards"
    if not (out / "manifest.json").is_file():
        proc = run_hetron(["prepare", "--corpus", sysconfig.get_paths()["include"], "--out", str(out),
                           "--tokenizer", str(small_shards / "tokenizer.json"), "--max-context", "256",
                           "--eval-fraction", "0.1"])
        assert proc.returncode == 0, proc.stderr
    return out


def staged_loader(small_shards: Path, c_shards: Path, stage1_steps: int, fraction: float) -> StagedBatchLoader:
    stages = [StageConfig(name="py", steps=stage1_steps, schedule=ScheduleSpec(total_steps=stage1_steps)),
              StageConfig(name="c", steps=10_000, schedule=ScheduleSpec(total_steps=10_000))]
    sources = [[StreamSource("py", str(small_shards / "train"), str(small_shards / "eval"), 1.0)],
               [StreamSource("c", str(c_shards / "train"), str(c_shards / "eval"), 1.0)]]
    return StagedBatchLoader(StagePlan.of(stages), sources, BUDGET, seed=3, shuffle=True, replay_fraction=fraction)


def serve(loader: StagedBatchLoader, batches: int) -> list[tuple[str, tuple[str, int]]]:
    origins = []
    for _ in range(batches):
        batch = loader.next_batch()
        assert len(batch) == len(loader.last_origins)
        assert sum(len(s) - 1 for s in batch) <= BUDGET or len(batch) == 1
        origins.extend(loader.last_origins)
    return origins


def test_replay_fraction_and_source_over_2000_samples_and_across_resume(small_shards, c_shards):
    fraction, stage1_steps = 0.25, 12
    loader = staged_loader(small_shards, c_shards, stage1_steps, fraction)
    stage1 = serve(loader, stage1_steps)
    assert all(kind == "new" for kind, _ in stage1)  # nothing to replay in the first stage
    served_in_stage1 = {where for _, where in stage1}

    stage2, resumed_at, state = [], None, None
    while len(stage2) < 2000:
        if resumed_at is None and len(stage2) >= 700:
            resumed_at, state = len(stage2), loader.state_dict()
        stage2.extend(serve(loader, 1))
    replayed = [where for kind, where in stage2 if kind == "replay"]
    assert abs(len(replayed) / len(stage2) - fraction) <= 0.01
    assert set(replayed) <= served_in_stage1
    assert len(set(replayed)) > 0.9 * min(len(replayed), len(served_in_stage1))  # draws spread over the pool
    assert all(where[0] == str(c_shards / "train") for kind, where in stage2 if kind == "new")

    resumed = staged_loader(small_shards, c_shards, stage1_steps, fraction)
    resumed.load_state_dict(state)
    again = []
    while len(again) < len(stage2) - resumed_at:
        again.extend(serve(resumed, 1))
    assert again == stage2[resumed_at:]

    changed = staged_loader(small_shards, c_shards, stage1_steps + 1, fraction)  # stage 1 cannot change once run
    with pytest.raises(HetronError, match=r"stages already run cannot change"):
        changed.load_state_dict(state)
