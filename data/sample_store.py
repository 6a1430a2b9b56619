"""Samples known by their lengths before they are read.

Every split folder holds a length index, `lengths.npy`: the predicted tokens (n - 1) of each sample
in the split's sample order, written by `hetron prepare` beside the MDS shards. A global batch is
formed, planned and packed from lengths alone; each rank then reads only the samples its
micro-batches hold (GlobalBatch), so a rank's reads do not grow with the data-parallel size.
Shards prepared without an index get one built once, by reading every sample.

The sample order is mosaicml-streaming's (shuffle, proportions of streams, replication): iterating
the dataset below yields sample ids without reading the samples.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pretrain.errors import HetronError

LENGTH_INDEX = "lengths.npy"
INDEX_KEY = "__sample_index__"
_REPREPARE = "re-run `hetron prepare --force`"


def write_length_index(split_dir: Path, lengths) -> None:
    """Written under a temporary name and renamed, so a reader never sees half an index."""
    path = Path(split_dir) / LENGTH_INDEX
    tmp = path.with_name(f".{LENGTH_INDEX}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, np.asarray(lengths, dtype=np.int32), allow_pickle=False)
    os.replace(tmp, path)


def split_sample_count(split_dir: Path) -> int:
    index = Path(split_dir) / "index.json"
    try:
        return sum(int(shard["samples"]) for shard in json.loads(index.read_text())["shards"])
    except FileNotFoundError:
        raise HetronError(f"shard index {index} is missing; {_REPREPARE}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise HetronError(f"shard index {index} is corrupt; {_REPREPARE}") from None


def load_length_index(split_dir: Path) -> np.ndarray:
    split_dir = Path(split_dir)
    path = split_dir / LENGTH_INDEX
    expected = split_sample_count(split_dir)
    if not path.is_file():
        return _build_length_index(split_dir, expected)
    try:
        lengths = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise HetronError(f"length index {path} is corrupt; {_REPREPARE}") from None
    if lengths.ndim != 1 or len(lengths) != expected:
        raise HetronError(f"length index {path} has {lengths.size} entries but the shards hold {expected} samples: "
                          f"it is stale; {_REPREPARE}")
    return lengths.astype(np.int64)


def _build_length_index(split_dir: Path, expected: int) -> np.ndarray:
    from data.loader import open_split

    dataset = open_split(split_dir, shuffle=False, seed=0)
    source = SampleSource(dataset, None, str(split_dir))
    lengths = np.asarray([len(source.read(i)) - 1 for i in range(expected)], dtype=np.int64)
    try:
        write_length_index(split_dir, lengths)
    except OSError:
        pass  # read-only shards: this run keeps the index in memory
    return lengths


@functools.lru_cache(maxsize=None)
def id_only_dataset_class():
    from streaming import StreamingDataset

    class IdOnlyStreamingDataset(StreamingDataset):
        """Iterating yields {INDEX_KEY: sample id} without reading the sample; read() reads it."""

        def get_item(self, sample_id: int, retry: int = 7):
            return {INDEX_KEY: int(sample_id)}

        def read(self, sample_id: int, retry: int = 7):
            return super().get_item(sample_id, retry)

    return IdOnlyStreamingDataset


class SampleSource:
    """One dataset's samples by global id: their lengths known up front, their tokens read on
    demand and checked against the length index."""

    def __init__(self, dataset, lengths: np.ndarray | None, where: str):
        self.dataset = dataset
        self.lengths = lengths
        self.where = where

    def length(self, sample_id: int) -> int:
        return int(self.lengths[sample_id])

    def read(self, sample_id: int) -> np.ndarray:
        try:
            item = self.dataset.read(sample_id) if hasattr(self.dataset, "read") else self.dataset.get_item(sample_id)
        except FileNotFoundError as exc:
            raise HetronError(f"shard file {exc.filename} is missing; {_REPREPARE}") from None
        except (ValueError, OSError, KeyError, IndexError) as exc:  # what streaming's readers raise on bad bytes
            raise HetronError(f"cannot read sample {sample_id} from the shards in {self.where} ({exc}); "
                              f"they are corrupt: {_REPREPARE}") from None
        tokens = item.get("tokens")
        if tokens is None or len(tokens) < 2:
            raise HetronError(f"{self.where}: sample {sample_id} has fewer than 2 tokens; the shards are corrupt")
        if self.lengths is not None and len(tokens) - 1 != self.lengths[sample_id]:
            raise HetronError(f"{self.where}: sample {sample_id} holds {len(tokens) - 1} predictions but the length "
                              f"index says {int(self.lengths[sample_id])}: the index is stale; {_REPREPARE}")
        return np.asarray(tokens)


class GlobalBatch(Sequence):
    """A global batch by its samples' lengths; batch[i] reads sample i (once) from its source.

    `lengths` are predictions (tokens - 1), what planning and packing need; read_* count what this
    rank actually read."""

    def __init__(self, refs: list[tuple[SampleSource, int]]):
        self.refs = list(refs)
        self.lengths = [source.length(sample_id) for source, sample_id in self.refs]
        self._read: dict[int, np.ndarray] = {}
        self.read_tokens = 0
        self.read_bytes = 0

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if i not in self._read:
            source, sample_id = self.refs[i]
            stored = source.read(sample_id)
            self.read_tokens += len(stored)
            self.read_bytes += stored.nbytes
            self._read[i] = stored.astype(np.int64, copy=False)
        return self._read[i]

    @property
    def read_samples(self) -> int:
        return len(self._read)

    @property
    def tokens(self) -> int:
        """Stored tokens of the whole batch: what every rank read before the length index."""
        return sum(self.lengths) + len(self.lengths)


def sample_lengths(samples) -> list[int]:
    """Predictions per sample of a GlobalBatch (without reading it) or of a list of token arrays."""
    lengths = getattr(samples, "lengths", None)
    return list(lengths) if lengths is not None else [len(s) - 1 for s in samples]
