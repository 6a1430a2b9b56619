"""Global batches by token budget from mosaicml-streaming shards, with a resumable position.

Every rank walks the same sample order (StreamingDataset `replication` = world size) and forms the
same global batch from the samples' lengths (data.sample_store's length index), without reading a
sample; each rank then packs its own share and reads only the samples in it. So the batch sequence
does not depend on the number of ranks, resuming at another data-parallel size continues the same
order, and the adaptive sequence-parallel planner sees the lengths of the whole batch on every rank.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path

from data.sample_store import INDEX_KEY, GlobalBatch, SampleSource, id_only_dataset_class, load_length_index
from data.streaming_shm import tolerate_unsized_shared_memory
from pretrain.errors import HetronError


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def machine_wide_streaming_lock():
    """Serialise StreamingDataset creation between jobs on one machine.

    Every rank of a job picks streaming's shared-memory prefix independently and only then does the
    local leader register it; a second job registering in between makes the first job's non-leaders
    fail ("shared memory registered does not match local leader"). The local leader holds this
    lock while its whole job creates the dataset."""
    import torch.distributed as dist

    if not dist.is_initialized():
        yield
        return
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    handle = None
    if leader:
        lock_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        handle = open(lock_dir / "hetron-streaming-open.lock", "w")
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        dist.barrier()
        yield
        dist.barrier()
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def open_split(split_dir: Path, *, shuffle: bool, seed: int):
    tolerate_unsized_shared_memory()
    with machine_wide_streaming_lock():
        return _open_split(split_dir, shuffle=shuffle, seed=seed)


def check_shard_files(split_dir: Path) -> None:
    """Every shard the index names exists with the size the index records."""
    index = Path(split_dir) / "index.json"
    if not index.is_file():
        raise HetronError(f"shard index {index} is missing; re-run `hetron prepare --force`")
    try:
        shards = json.loads(index.read_text())["shards"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HetronError(f"shard index {index} is corrupt; re-run `hetron prepare --force`") from None
    for shard in shards:
        raw = shard.get("raw_data") or {}
        path = Path(split_dir) / str(raw.get("basename"))
        if not path.is_file():
            raise HetronError(f"shard file {path} is missing; re-run `hetron prepare --force`")
        if raw.get("bytes") is not None and path.stat().st_size != raw["bytes"]:
            raise HetronError(f"shard file {path} has {path.stat().st_size} bytes but its index says {raw['bytes']}: "
                              "corrupt; re-run `hetron prepare --force`")


def _open_split(split_dir: Path, *, shuffle: bool, seed: int):
    from streaming import StreamingDataset

    check_shard_files(split_dir)
    world = _world_size()
    try:
        return StreamingDataset(
            local=str(split_dir), shuffle=shuffle, shuffle_seed=seed, num_canonical_nodes=1, batch_size=1,
            replication=world if world > 1 else None,
        )
    except Exception as exc:  # streaming raises assorted errors on bad indexes
        raise HetronError(f"cannot open shards in {split_dir}: {exc}") from None


def open_sample_ids(splits: list[str], proportions: list[float] | None, *, shuffle: bool, seed: int):
    """The sample-id stream of one split or a mixture of splits (with these proportions)."""
    from streaming import Stream

    for split in splits:
        check_shard_files(Path(split))
    if proportions is not None and len(splits) > 1:
        total = sum(proportions)
        streams = [Stream(local=s, proportion=p / total) for s, p in zip(splits, proportions)]
    else:
        streams = [Stream(local=s) for s in splits]
    world = _world_size()
    tolerate_unsized_shared_memory()
    with machine_wide_streaming_lock():
        try:
            return id_only_dataset_class()(
                streams=streams, shuffle=shuffle, shuffle_seed=seed, num_canonical_nodes=1, batch_size=1,
                replication=world if world > 1 else None)
        except Exception as exc:  # streaming raises assorted errors on bad indexes
            raise HetronError(f"cannot open the shards in {splits}: {exc}") from None


class EpochReader:
    """A StreamingDataset read sample by sample across epochs from a resumable position.

    Position = (epoch, samples consumed in the epoch). The caller advances `sample_in_epoch` only for
    samples it keeps, so a sample read but not consumed is read again after a resume (`seek`)."""

    def __init__(self, dataset, seed: int, where: Path):
        self.dataset = dataset
        self.seed = seed
        self.where = where
        self.epoch = 0
        self.sample_in_epoch = 0
        self._iterator = None

    def seek(self, epoch: int, sample_in_epoch: int) -> None:
        self.epoch, self.sample_in_epoch = int(epoch), int(sample_in_epoch)
        self._iterator = None

    def next_item(self) -> dict:
        while True:
            if self._iterator is None:
                self.dataset.load_state_dict({
                    "epoch": self.epoch, "sample_in_epoch": self.sample_in_epoch, "num_canonical_nodes": 1,
                    "shuffle_seed": self.seed, "initial_physical_nodes": 1,
                })
                self._iterator = iter(self.dataset)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.sample_in_epoch = 0
            except FileNotFoundError as exc:
                raise HetronError(f"shard file {exc.filename} is missing; re-run `hetron prepare --force`") from None
            except (ValueError, OSError, KeyError) as exc:  # what streaming's readers raise on bad bytes
                raise HetronError(f"cannot read a sample from the shards in {self.where} ({exc}); "
                                  "they are corrupt: re-run `hetron prepare --force`") from None


class GlobalBatchLoader:
    """Yields GlobalBatches whose predictions add up to at most `token_budget`, chosen by length.

    A sample looked at but not taken into a batch is not consumed, so a resumed loader looks at it
    again.
    """

    def __init__(self, split_dir: Path, token_budget: int, *, seed: int, shuffle: bool = True):
        self.split_dir = Path(split_dir)
        self.token_budget = token_budget
        self.seed = seed
        dataset = open_sample_ids([str(self.split_dir)], None, shuffle=shuffle, seed=seed)
        self.source = SampleSource(dataset, load_length_index(self.split_dir), str(self.split_dir))
        self.stream = EpochReader(dataset, seed, self.split_dir)
        self._lookahead: int | None = None

    def _next_sample_id(self) -> int:
        if self._lookahead is not None:
            sample_id, self._lookahead = self._lookahead, None
            return sample_id
        return int(self.stream.next_item()[INDEX_KEY])

    def next_batch(self, *, within_epoch: bool = False) -> GlobalBatch:
        """The next global batch; within_epoch: end it early (possibly empty) rather than take a
        sample of the next epoch."""
        ids, tokens = [], 0
        epoch = self.stream.epoch
        while True:
            sample_id = self._next_sample_id()
            if within_epoch and self.stream.epoch != epoch:
                self._lookahead = sample_id
                break
            n = self.source.length(sample_id)
            if ids and tokens + n > self.token_budget:
                self._lookahead = sample_id
                break
            ids.append(sample_id)
            tokens += n
            self.stream.sample_in_epoch += 1
            if tokens >= self.token_budget:
                break
        return GlobalBatch([(self.source, i) for i in ids])

    def state_dict(self) -> dict:
        return {"epoch": self.stream.epoch, "sample_in_epoch": self.stream.sample_in_epoch, "seed": self.seed,
                "token_budget": self.token_budget}

    def load_state_dict(self, state: dict) -> None:
        self.stream.seek(state["epoch"], state["sample_in_epoch"])
        self._lookahead = None


def eval_batches(split_dir: Path, token_budget: int, count: int) -> list[GlobalBatch]:
    """Up to `count` global batches of the held-out split in file order (the same every time),
    reading the split at most once: a split smaller than one budget gives one partial batch, never
    a batch with a sample twice, and never no batch (an empty split is an error)."""
    loader = GlobalBatchLoader(split_dir, token_budget, seed=0, shuffle=False)
    out: list[GlobalBatch] = []
    while len(out) < count and loader.stream.epoch == 0:
        batch = loader.next_batch(within_epoch=True)
        if batch:
            out.append(batch)
    if not out:
        raise HetronError(f"the held-out split {split_dir} holds no sample; re-run `hetron prepare --force` "
                          "(or set train.eval_every=0)")
    return out
