"""One batch's planning problem as arrays the kernels take: kept lengths, allowed group sizes, the
time of every sequence on every size, and the size range each sequence may use."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parallel.cost_model import CostModel, is_power_of_two
from pretrain.errors import HetronError


@dataclass(frozen=True)
class PlanningProblem:
    lengths: np.ndarray  # int64, kept sequences only
    index: np.ndarray  # position of each kept sequence in the caller's batch
    dropped: tuple[int, ...]
    sizes: tuple[int, ...]  # allowed group sizes, ascending powers of two <= num_ranks
    times: np.ndarray  # float64 (kept x sizes): T(L, d) in ms
    lo: np.ndarray  # int64: smallest size index that holds the sequence in memory
    hi: np.ndarray  # int64: largest size index it may use
    num_ranks: int
    capacity: int
    beta: float

    @property
    def size(self) -> int:
        return len(self.lengths)

    def min_area(self) -> np.ndarray:
        """Least rank-milliseconds each sequence can take (d * T(L, d) over its allowed sizes)."""
        sizes = np.asarray(self.sizes, dtype=np.float64)
        area = self.times * sizes[None, :]
        cols = np.arange(len(self.sizes))[None, :]
        allowed = (cols >= self.lo[:, None]) & (cols <= self.hi[:, None])
        return np.where(allowed, area, np.inf).min(axis=1)

    def min_time(self) -> np.ndarray:
        cols = np.arange(len(self.sizes))[None, :]
        allowed = (cols >= self.lo[:, None]) & (cols <= self.hi[:, None])
        return np.where(allowed, self.times, np.inf).min(axis=1)

    def min_micro_batches(self) -> int:
        return max(1, math.ceil(int(self.lengths.sum()) / (self.num_ranks * self.capacity)))

    def work_floor_ms(self, members: np.ndarray | None = None) -> float:
        """A lower bound on the sum of the micro-batch spans (beta excluded) of any plan of `members`.

        If the spans add up to S, every sequence runs on a group where it takes <= S, so it occupies
        at least area_i(S) = min{d * T(L_i, d) : T(L_i, d) <= S} rank-ms; micro-batch k offers at most
        N * M_k rank-ms, N * S in all. So S >= the least S with sum_i area_i(S) <= N * S (area_i
        falls as S grows: bisection). This is never below max(sum of least areas / N, longest time)."""
        times = self.times if members is None else self.times[members]
        if times.shape[0] == 0:
            return 0.0
        lo = self.lo if members is None else self.lo[members]
        hi = self.hi if members is None else self.hi[members]
        cols = np.arange(len(self.sizes))[None, :]
        allowed = (cols >= lo[:, None]) & (cols <= hi[:, None])
        times = np.where(allowed, times, np.inf)
        area = times * np.asarray(self.sizes, dtype=np.float64)[None, :]

        def fits(span: float) -> bool:
            return float(np.where(times <= span, area, np.inf).min(axis=1).sum()) <= self.num_ranks * span

        low = max(float(area.min(axis=1).sum()) / self.num_ranks, float(times.min(axis=1).max()))
        if fits(low):
            return low
        high = low
        while not fits(high):
            high *= 2.0
        for _ in range(60):
            mid = (low + high) / 2.0
            if fits(mid):
                high = mid
            else:
                low = mid
        return low  # infeasible side: a valid bound up to bisection precision

    def lower_bound_ms(self) -> float:
        """No plan is faster: the work floor above, plus beta for each micro-batch that memory forces."""
        if self.size == 0:
            return 0.0
        return self.work_floor_ms() + self.beta * self.min_micro_batches()


def group_sizes(num_ranks: int, allowed_sizes: Sequence[int] | None) -> tuple[int, ...]:
    if num_ranks < 1:
        raise HetronError(f"planner: num_ranks must be >= 1, got {num_ranks}")
    if allowed_sizes is None:
        return tuple(1 << k for k in range(num_ranks.bit_length()) if 1 << k <= num_ranks)
    sizes = sorted({int(d) for d in allowed_sizes})
    bad = [d for d in sizes if not is_power_of_two(d) or d > num_ranks]
    if bad or not sizes:
        raise HetronError(f"planner: allowed_sizes must be powers of two <= {num_ranks}, got {list(allowed_sizes)}")
    return tuple(sizes)


def build_problem(lengths: Sequence[int], num_ranks: int, cost_model: CostModel, *,
                  allowed_sizes: Sequence[int] | None = None, drop_oversized: bool = False,
                  fixed_degree: bool = False) -> PlanningProblem:
    """fixed_degree: each sequence may only use its smallest memory-feasible size (the per-sequence
    baseline)."""
    sizes = group_sizes(num_ranks, allowed_sizes)
    raw = np.asarray(list(lengths), dtype=np.int64)
    if raw.size and raw.min() <= 0:
        first = int(np.argmax(raw <= 0))
        raise HetronError(f"planner: sequence {first} has length {int(raw[first])}; lengths must be > 0")
    size_arr = np.asarray(sizes, dtype=np.int64)
    # smallest allowed size whose memory holds the sequence; len(sizes) means none does
    lo = np.searchsorted(size_arr * cost_model.capacity_tokens, raw, side="left")
    oversized = np.flatnonzero(lo >= len(sizes))
    if oversized.size and not drop_oversized:
        i = int(oversized[0])
        raise HetronError(
            f"planner: sequence {i} of length {int(raw[i])} does not fit even on {sizes[-1]} ranks "
            f"(capacity {cost_model.capacity_tokens} tokens per rank, at most "
            f"{sizes[-1] * cost_model.capacity_tokens} tokens); pass drop_oversized=True to drop it")
    keep = np.flatnonzero(lo < len(sizes))
    kept = raw[keep]
    lengths_f = kept.astype(np.float64)[:, None]
    d = size_arr.astype(np.float64)[None, :]
    comm = np.asarray([cost_model.comm_ms_per_token(s) for s in sizes], dtype=np.float64)[None, :]
    times = (cost_model.a1 * lengths_f * lengths_f + cost_model.a2 * lengths_f) / d + lengths_f * comm
    lo_kept = lo[keep].astype(np.int64)
    hi = lo_kept.copy() if fixed_degree else np.full(len(keep), len(sizes) - 1, dtype=np.int64)
    return PlanningProblem(lengths=kept, index=keep.astype(np.int64),
                           dropped=tuple(int(i) for i in oversized), sizes=sizes,
                           times=np.ascontiguousarray(times), lo=lo_kept, hi=hi, num_ranks=num_ranks,
                           capacity=cost_model.capacity_tokens, beta=cost_model.beta)
