"""Global batches of a staged run: each stage a mixture of shard folders (mosaicml-streaming Streams
with proportions), plus replay of samples seen in earlier stages. Same interface as
data.loader.GlobalBatchLoader (next_batch, state_dict, load_state_dict).

Every sample taken is recorded by its split folder and local index, so the samples a stage consumed
are known exactly when a later stage replays them, and are saved with the loader state.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.loader import EpochReader, machine_wide_streaming_lock, open_split, read_sample
from data.seen_samples import ReplayPool, SeenSet, is_replay_slot, merge_seen
from pretrain.errors import HetronError
from pretrain.stages import StagePlan

INDEX_KEY = "__sample_index__"


@dataclass(frozen=True)
class StreamSource:
    name: str
    train: str  # split folders
    eval: str
    proportion: float


@functools.lru_cache(maxsize=None)
def _indexed_dataset_class():
    from streaming import StreamingDataset

    class IndexedStreamingDataset(StreamingDataset):
        """Yields each sample with its global index, so the loader can record what it consumed."""

        def get_item(self, sample_id: int, retry: int = 7):
            return {**super().get_item(sample_id, retry), INDEX_KEY: sample_id}

    return IndexedStreamingDataset


def open_mixture(sources: list[StreamSource], *, shuffle: bool, seed: int):
    from streaming import Stream

    for source in sources:
        if not (Path(source.train) / "index.json").is_file():
            raise HetronError(f"shard index {Path(source.train) / 'index.json'} is missing; re-run `hetron prepare`")
    total = sum(s.proportion for s in sources)
    streams = [Stream(local=s.train, proportion=s.proportion / total) if len(sources) > 1 else Stream(local=s.train)
               for s in sources]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with machine_wide_streaming_lock():
        try:
            return _indexed_dataset_class()(
                streams=streams, shuffle=shuffle, shuffle_seed=seed, num_canonical_nodes=1, batch_size=1,
                replication=world if world > 1 else None)
        except Exception as exc:  # streaming raises assorted errors on bad indexes
            raise HetronError(f"cannot open the mixture {[s.train for s in sources]}: {exc}") from None


class SplitReader:
    """Random access to samples of train split folders (for replay)."""

    def __init__(self):
        self._open: dict[str, object] = {}

    def read(self, split: str, index: int) -> np.ndarray:
        if split not in self._open:
            if not Path(split).is_dir():
                raise HetronError(f"replay source {split} is gone; replay needs the earlier stages' shards")
            self._open[split] = open_split(Path(split), shuffle=False, seed=0)
        return read_sample(self._open[split].get_item(index), split)


class MixtureBatchLoader:
    """One stage: global batches of at most `token_budget` predicted tokens from a mixture, with
    `replay_fraction` of the samples drawn from `pool` (samples seen before this stage).

    Position: (epoch, sample_in_epoch) of the mixture, `taken` samples of the stage, `replayed` of
    them from the pool. A sample looked at but not taken is not consumed; a resumed loader re-reads it.
    """

    def __init__(self, sources: list[StreamSource], token_budget: int, *, seed: int, shuffle: bool,
                 pool: ReplayPool | None = None, replay_fraction: float = 0.0, reader: SplitReader | None = None):
        self.sources = sources
        self.token_budget = token_budget
        self.seed = seed
        self.dataset = open_mixture(sources, shuffle=shuffle, seed=seed)
        self.stream = EpochReader(self.dataset, seed, Path(sources[0].train).parent)
        self.offsets = np.asarray(self.dataset.sample_offset_per_stream, dtype=np.int64)
        self.pool = pool if pool is not None and len(pool) else None
        self.replay_fraction = replay_fraction if self.pool is not None else 0.0
        self.reader = reader or SplitReader()
        self.taken = self.replayed = 0
        self.consumed: list[list[int]] = [[] for _ in sources]
        self.last_origins: list[tuple[str, tuple[str, int]]] = []  # of the last batch: ('new'|'replay', (split, index))
        self._lookahead = None

    def _next_new(self) -> tuple[int, int, np.ndarray]:
        item = self.stream.next_item()
        index = int(item[INDEX_KEY])
        stream = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return stream, index - int(self.offsets[stream]), read_sample(item, self.sources[stream].train)

    def _next_slot(self):
        """(kind, where, tokens) of the next sample, kind 'replay' or 'new'."""
        if self._lookahead is not None:
            slot, self._lookahead = self._lookahead, None
            return slot
        if is_replay_slot(self.taken, self.replay_fraction):
            split, index = self.pool.pick(self.replayed)
            return "replay", (split, index), self.reader.read(split, index)
        stream, index, tokens = self._next_new()
        return "new", (stream, index), tokens

    def _take(self, kind: str, where) -> None:
        self.taken += 1
        if kind == "replay":
            self.replayed += 1
        else:
            self.stream.sample_in_epoch += 1
            self.consumed[where[0]].append(where[1])

    def next_batch(self) -> list[np.ndarray]:
        self.last_origins = []
        batch, tokens = [], 0
        while True:
            slot = self._next_slot()
            kind, where, sample = slot
            n = len(sample) - 1
            if batch and tokens + n > self.token_budget:
                self._lookahead = slot
                return batch
            batch.append(sample)
            self.last_origins.append((kind, where if kind == "replay" else (self.sources[where[0]].train, where[1])))
            self._take(kind, where)
            tokens += n
            if tokens >= self.token_budget:
                return batch

    def seen(self) -> SeenSet:
        return {s.train: np.asarray(c, dtype=np.int64) for s, c in zip(self.sources, self.consumed)}

    def state_dict(self) -> dict:
        return {"epoch": self.stream.epoch, "sample_in_epoch": self.stream.sample_in_epoch, "taken": self.taken,
                "replayed": self.replayed, "seed": self.seed, "token_budget": self.token_budget,
                "consumed": [np.asarray(c, dtype=np.int64) for c in self.consumed]}

    def load_state_dict(self, state: dict) -> None:
        self.stream.seek(state["epoch"], state["sample_in_epoch"])
        self.taken, self.replayed = int(state["taken"]), int(state["replayed"])
        self.consumed = [list(map(int, c)) for c in state["consumed"]]
        self._lookahead = None


def stage_record(name: str, sources: list[StreamSource], seen: SeenSet) -> dict:
    """What a finished (or init_from) stage leaves to later ones: its eval sets and seen samples."""
    return {"name": name, "streams": [{"name": s.name, "train": s.train, "eval": s.eval} for s in sources],
            "seen": seen}


class StagedBatchLoader:
    """The loader of a staged run: switches to the next stage's mixture at each stage boundary (the
    loader counts the global batches it served, which is the trainer's step). Earlier stages (of
    this run and of an init_from run) feed replay and per-stage eval."""

    def __init__(self, stage_plan: StagePlan, sources: list[list[StreamSource]], token_budget: int, *, seed: int,
                 shuffle: bool, replay_fraction: float):
        self.stage_plan = stage_plan
        self.sources = sources
        self.token_budget = token_budget
        self.seed = seed
        self.shuffle = shuffle
        self.replay_fraction = replay_fraction
        self.reader = SplitReader()
        self.history: list[dict] = []  # stages of the init_from run, oldest first
        self.finished: list[dict] = []  # stages of this run already completed
        self.batches = 0
        self.stage_index = -1
        self.current: MixtureBatchLoader | None = None

    def earlier_records(self) -> list[dict]:
        return self.history + self.finished

    def set_history(self, records: list[dict]) -> None:
        if self.batches:
            raise HetronError("init_from history must be set before the first batch")
        names = {s.name for s in self.stage_plan.spans}
        for record in records:
            if record["name"] in names:
                raise HetronError(f"stage name {record['name']!r} is already a stage of the init_from run; rename it")
        self.history = list(records)
        self.current = None

    def _start_stage(self, index: int) -> None:
        seen = merge_seen(*(r["seen"] for r in self.earlier_records()))
        pool = ReplayPool(seen, seed=self.seed + 7919 * (index + 1)) if self.replay_fraction > 0 else None
        if self.replay_fraction > 0 and (pool is None or len(pool) == 0) and index > 0:
            raise HetronError(f"stage {self.stage_plan.spans[index].name!r} replays, but no samples were seen before it")
        self.stage_index = index
        self.current = MixtureBatchLoader(self.sources[index], self.token_budget, seed=self.seed + index,
                                          shuffle=self.shuffle, pool=pool, replay_fraction=self.replay_fraction,
                                          reader=self.reader)

    def _ensure_stage(self) -> None:
        index = self.stage_plan.locate(self.batches)[0].index
        if self.current is not None and index == self.stage_index:
            return
        if self.current is not None and index == self.stage_index + 1:
            self.finished.append(self.current_record())
        self._start_stage(index)

    def current_record(self) -> dict:
        span = self.stage_plan.spans[self.stage_index]
        return stage_record(span.name, self.sources[self.stage_index], self.current.seen())

    def current_sources(self) -> list[StreamSource]:
        return self.sources[self.stage_plan.locate(self.batches)[0].index]

    def next_batch(self) -> list[np.ndarray]:
        self._ensure_stage()
        batch = self.current.next_batch()
        self.batches += 1
        return batch

    @property
    def last_origins(self):
        return self.current.last_origins

    def state_dict(self) -> dict:
        return {"plan": self.stage_plan.describe(), "batches": self.batches, "stage_index": self.stage_index,
                "stage": self.current.state_dict() if self.current is not None else None,
                "history": self.history, "finished": self.finished,
                "current_record": self.current_record() if self.current is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if "plan" not in state:
            raise HetronError("the checkpoint was written by a run without stages; start the staged run as a new "
                              "run with init_from=PATH instead of resuming")
        done = state["plan"][: state["stage_index"] + 1]
        if [list(x) for x in done] != self.stage_plan.describe()[: len(done)]:
            raise HetronError(f"the checkpoint's stages {done} (name, steps) differ from this config's "
                              f"{self.stage_plan.describe()[: len(done)]}; stages already run cannot change")
        self.history, self.finished = list(state["history"]), list(state["finished"])
        self.batches = int(state["batches"])
        self.current = None
        if state["stage"] is not None:
            self._start_stage(int(state["stage_index"]))
            self.current.load_state_dict(state["stage"])


def seen_by_plain_loader(split: str, state: dict, *, shuffle: bool) -> SeenSet:
    """The samples a GlobalBatchLoader (a run without stages) consumed, from its saved position:
    every sample once it finished an epoch, else the first `sample_in_epoch` of its epoch order."""
    if not (Path(split) / "index.json").is_file():
        raise HetronError(f"the init_from run's shards {split} are gone; replay needs them")
    dataset = open_mixture([StreamSource("init", split, split, 1.0)], shuffle=shuffle, seed=int(state["seed"]))
    if int(state["epoch"]) > 0:
        return {split: np.arange(dataset.num_samples, dtype=np.int64)}
    count = int(state["sample_in_epoch"])
    dataset.load_state_dict({"epoch": 0, "sample_in_epoch": 0, "num_canonical_nodes": 1,
                             "shuffle_seed": int(state["seed"]), "initial_physical_nodes": 1})
    indices = []
    for item in dataset:
        if len(indices) == count:
            break
        indices.append(int(item[INDEX_KEY]))
    return {split: np.asarray(indices, dtype=np.int64)}


def stage_eval_sets(earlier: list[dict], current_name: str, current: list[StreamSource]) -> dict[str, list[str]]:
    """Metric key -> eval split folders: `eval_loss` (the current stage), `eval_loss/<stage>` for it
    and every earlier stage (forgetting), `eval_loss/<stage>/<stream>` inside multi-stream stages."""
    stages = [(r["name"], r["streams"]) for r in earlier]
    stages.append((current_name, [{"name": s.name, "eval": s.eval} for s in current]))
    sets = {"eval_loss": [s.eval for s in current]}
    for name, streams in stages:
        sets[f"eval_loss/{name}"] = [s["eval"] for s in streams]
        if len(streams) > 1:
            sets.update({f"eval_loss/{name}/{s['name']}": [s["eval"]] for s in streams})
    return sets


def init_history(components: dict, *, replay: bool) -> list[dict]:
    """The stages an init_from checkpoint has seen, for replay and forgetting metrics: a staged run's
    records, or one stage 'init' for a run without stages (its seen samples rebuilt from its loader
    position, only when replay needs them)."""
    loader = components.get("loader", {})
    if "plan" in loader:
        current = [loader["current_record"]] if loader.get("current_record") else []
        return list(loader["history"]) + list(loader["finished"]) + current
    split = components.get("train_split")
    if split is None:
        raise HetronError("the init_from checkpoint does not record its shards (written by an older hetron); "
                          "it can give weights but no replay")
    seen = seen_by_plain_loader(split, loader, shuffle=components.get("train_shuffle", True)) if replay else {}
    eval_split = str(Path(split).parent / "eval")
    return [stage_record("init", [StreamSource("init", split, eval_split, 1.0)], seen)]
