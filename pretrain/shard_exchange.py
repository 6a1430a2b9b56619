"""Which slices of which parameters' optimizer state each data-parallel rank sends to which, when the
distributed optimizer's shards move (pure core; the shell is pretrain.optimizer_shards).

Megatron's distributed optimizer gives each data-parallel rank one contiguous range of its gradient
buffer; a parameter's state is then split at arbitrary points between ranks. When LISA rebuilds the
buffer over another set of parameters every range moves. Each rank knows, for every parameter, the
flat element range [lo, hi) it holds now and the one it must hold after; the plan below sends each
element straight from the rank holding it to the rank needing it, so no rank ever materialises a
full parameter and nothing is sent twice.

Two layouts are accepted: every rank holding everything it wants (the plain optimizer, where each
rank keeps a full copy: all copies are local), or disjoint holdings (the distributed optimizer).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Interval = tuple[int, int]
EMPTY: Interval = (0, 0)


@dataclass(frozen=True)
class Segment:
    """Elements [lo, hi) of parameter `name`'s flattened state."""

    name: str
    lo: int
    hi: int

    @property
    def numel(self) -> int:
        return self.hi - self.lo


def overlap(a: Interval, b: Interval) -> Interval:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else EMPTY


def _contains(outer: Interval, inner: Interval) -> bool:
    return inner[0] >= inner[1] or (outer[0] <= inner[0] and inner[1] <= outer[1])


def _check_disjoint(held: Sequence[Mapping[str, Interval]], want: Sequence[Mapping[str, Interval]],
                    names: Sequence[str]) -> None:
    for name in names:
        pieces = sorted(h[name] for h in held if h.get(name, EMPTY)[0] < h.get(name, EMPTY)[1])
        for (_, hi), (lo, _) in itertools.pairwise(pieces):
            if lo < hi:
                raise ValueError(f"optimizer state of {name} is held twice (ranges overlap at {lo}..{hi})")
        for rank, w in enumerate(want):
            lo, hi = w.get(name, EMPTY)
            have = sum(max(0, min(p[1], hi) - max(p[0], lo)) for p in pieces)
            if lo < hi and have != hi - lo:
                raise ValueError(f"rank {rank} needs {name}[{lo}:{hi}] but the ranks hold only {have} of its "
                                 f"{hi - lo} elements")


@dataclass(frozen=True)
class ExchangePlan:
    """For one rank: sends[d] are the segments it sends to rank d, recvs[s] those it receives from
    rank s, both in the same order on both ends (parameter order, then position); sends[me] ==
    recvs[me] are local copies. `collective`: the ranks must run the all-to-all (the same on every
    rank; False when every rank holds what it needs)."""

    me: int
    collective: bool
    sends: tuple[tuple[Segment, ...], ...]
    recvs: tuple[tuple[Segment, ...], ...]

    @property
    def numel_sent(self) -> int:
        return sum(seg.numel for d, segs in enumerate(self.sends) if d != self.me for seg in segs)

    @property
    def numel_received(self) -> int:
        return sum(seg.numel for s, segs in enumerate(self.recvs) if s != self.me for seg in segs)

    @property
    def local_only(self) -> bool:
        return self.numel_sent == 0 and self.numel_received == 0


def plan_exchange(held: Sequence[Mapping[str, Interval]], want: Sequence[Mapping[str, Interval]],
                  names: Sequence[str], me: int) -> ExchangePlan:
    """The plan of rank `me` among len(held) ranks, given every rank's held and wanted range of every
    parameter in `names` (a parameter a rank does not mention is EMPTY for it)."""
    ranks = range(len(held))
    if len(want) != len(held) or not 0 <= me < len(held):
        raise ValueError(f"plan for rank {me} of {len(held)} ranks with {len(want)} wanted layouts")
    self_sufficient = all(_contains(held[r].get(n, EMPTY), want[r].get(n, EMPTY)) for r in ranks for n in names)
    if self_sufficient:
        local = tuple(Segment(n, *want[me][n]) for n in names if want[me].get(n, EMPTY)[0] < want[me].get(n, EMPTY)[1])
        sends = tuple(local if r == me else () for r in ranks)
        return ExchangePlan(me, False, sends, sends)
    _check_disjoint(held, want, names)

    def segments(src: int, dst: int) -> tuple[Segment, ...]:
        out = []
        for name in names:
            lo, hi = overlap(held[src].get(name, EMPTY), want[dst].get(name, EMPTY))
            if lo < hi:
                out.append(Segment(name, lo, hi))
        return tuple(out)

    return ExchangePlan(me, len(held) > 1, tuple(segments(me, d) for d in ranks), tuple(segments(s, me) for s in ranks))


def equal_chunk(numel: int, rank: int, size: int) -> Interval:
    """Rank `rank`'s share of `numel` elements split into `size` contiguous chunks (the last ones
    may be shorter or empty)."""
    chunk = -(-numel // size)
    lo = min(numel, rank * chunk)
    return lo, min(numel, lo + chunk)
