"""Global batches of a staged run: each stage a mixture of shard folders (mosaicml-streaming Streams
with proportions), plus replay of samples seen in earlier stages. Same interface as
data.loader.GlobalBatchLoader (next_batch, state_dict, load_state_dict).

Every sample taken is recorded by its split folder and local index, so the samples a stage consumed
are known exactly when a later stage replays them, and are saved with the loader state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.loader import EpochReader, open_sample_ids, open_split
from data.sample_store import INDEX_KEY, GlobalBatch, SampleSource, load_length_index
from data.seen_samples import ReplayPool, SeenSet, is_replay_slot, merge_seen
from pretrain.errors import HetronError
from pretrain.stages import StagePlan


@dataclass(frozen=True)
class StreamSource:
    name: str
    train: str  # split folders
    eval: str
    proportion: float


def open_mixture(sources: list[StreamSource], *, shuffle: bool, seed: int):
    """The sample-id stream of a mixture (data.loader.open_sample_ids)."""
    return open_sample_ids([s.train for s in sources], [s.proportion for s in sources], shuffle=shuffle, seed=seed)


def mixture_source(dataset, sources: list[StreamSource]) -> SampleSource:
    """Lengths by the mixture's global sample id: each stream's length index at its offset."""
    parts = [load_length_index(Path(s.train)) for s in sources]
    offsets = [int(o) for o in dataset.sample_offset_per_stream]
    if offsets != [int(x) for x in np.cumsum([0] + [p.size for p in parts[:-1]])]:
        raise HetronError(f"the mixture {[s.train for s in sources]} numbers its samples unlike its length indexes; "
                          "re-run `hetron prepare --force`")
    return SampleSource(dataset, np.concatenate(parts), str(Path(sources[0].train).parent))


class SplitReader:
    """Random access to samples of train split folders (for replay)."""

    def __init__(self):
        self._open: dict[str, SampleSource] = {}

    def source(self, split: str) -> SampleSource:
        if split not in self._open:
            if not Path(split).is_dir():
                raise HetronError(f"replay source {split} is gone; replay needs the earlier stages' shards")
            self._open[split] = SampleSource(open_split(Path(split), shuffle=False, seed=0),
                                             load_length_index(Path(split)), split)
        return self._open[split]


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
        self.source = mixture_source(self.dataset, sources)
        self.pool = pool if pool is not None and len(pool) else None
        self.replay_fraction = replay_fraction if self.pool is not None else 0.0
        self.reader = reader or SplitReader()
        self.taken = self.replayed = 0
        self.consumed: list[list[int]] = [[] for _ in sources]
        self.last_origins: list[tuple[str, tuple[str, int]]] = []  # of the last batch: ('new'|'replay', (split, index))
        self._lookahead = None

    def _next_new(self) -> tuple[int, int, int]:
        """(stream, index in its split, global id) of the mixture's next sample."""
        sample_id = int(self.stream.next_item()[INDEX_KEY])
        stream = int(np.searchsorted(self.offsets, sample_id, side="right") - 1)
        return stream, sample_id - int(self.offsets[stream]), sample_id

    def _next_slot(self):
        """(kind, where, (source, id)) of the next sample, kind 'replay' or 'new'."""
        if self._lookahead is not None:
            slot, self._lookahead = self._lookahead, None
            return slot
        if is_replay_slot(self.taken, self.replay_fraction):
            split, index = self.pool.pick(self.replayed)
            return "replay", (split, index), (self.reader.source(split), index)
        stream, index, sample_id = self._next_new()
        return "new", (stream, index), (self.source, sample_id)

    def _take(self, kind: str, where) -> None:
        self.taken += 1
        if kind == "replay":
            self.replayed += 1
        else:
            self.stream.sample_in_epoch += 1
            self.consumed[where[0]].append(where[1])

    def next_batch(self) -> GlobalBatch:
        self.last_origins = []
        refs, tokens = [], 0
        while True:
            slot = self._next_slot()
            kind, where, ref = slot
            n = ref[0].length(ref[1])
            if refs and tokens + n > self.token_budget:
                self._lookahead = slot
                break
            refs.append(ref)
            self.last_origins.append((kind, where if kind == "replay" else (self.sources[where[0]].train, where[1])))
            self._take(kind, where)
            tokens += n
            if tokens >= self.token_budget:
                break
        return GlobalBatch(refs)

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

    def next_batch(self) -> GlobalBatch:
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
