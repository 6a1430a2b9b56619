"""Samples seen in earlier stages, and which of them each replay slot takes (pure).

A seen set maps a train split folder to the local indices of the samples consumed from it. Replay
is stateless given two counters saved with the loader: slot k of a stage (its k-th sample) is a
replay slot iff floor((k+1) f) > floor(k f), so every stretch of n samples holds n*f +-1 replayed
ones; the r-th replayed sample is entry r of a seeded permutation of the pool (a new permutation
every pass), so a resumed loader draws exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import math

import numpy as np

SeenSet = dict[str, np.ndarray]


def merge_seen(*sets: SeenSet) -> SeenSet:
    out: dict[str, list[np.ndarray]] = {}
    for seen in sets:
        for split, indices in seen.items():
            out.setdefault(split, []).append(np.asarray(indices, dtype=np.int64))
    return {split: np.unique(np.concatenate(parts)) for split, parts in sorted(out.items())}


def is_replay_slot(k: int, fraction: float) -> bool:
    return fraction > 0 and math.floor((k + 1) * fraction) > math.floor(k * fraction)


class ReplayPool:
    """The seen samples of earlier stages in a fixed order, and the seeded draw of the r-th replay."""

    def __init__(self, seen: SeenSet, seed: int):
        seen = merge_seen(seen)
        self.splits = list(seen)
        self.split_of = np.concatenate([np.full(len(v), i, np.int64) for i, v in enumerate(seen.values())] or
                                       [np.zeros(0, np.int64)])
        self.index_of = np.concatenate(list(seen.values()) or [np.zeros(0, np.int64)])
        self.seed = seed
        self._cycle, self._order = -1, None

    def __len__(self) -> int:
        return len(self.index_of)

    def pick(self, r: int) -> tuple[str, int]:
        """(train split folder, local sample index) of the r-th replayed sample."""
        cycle, pos = divmod(r, len(self))
        if cycle != self._cycle:
            self._cycle, self._order = cycle, np.random.default_rng([self.seed, cycle]).permutation(len(self))
        j = self._order[pos]
        return self.splits[int(self.split_of[j])], int(self.index_of[j])
