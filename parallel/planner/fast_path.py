"""The fast path: a good plan at once. Three ways to cut the batch into micro-batches, each packed
with the greedy packer, and the least total time wins:
- anchor fill: micro-batch by micro-batch, the longest sequence left is the anchor; for each group
  size it may use, fill the micro-batch up to the anchor's time on that size, and keep the size with
  the least (this micro-batch + lower bound of the rest);
- FlexSP's contiguous partition DP over sorted lengths, and LPT of rank-time over micro-batches, for
  each micro-batch count from the memory minimum to +3.
The winner's micro-batches are then re-packed with the packer's other group-opening rules (polish).
Everything here is deterministic: ties break on sequence position."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parallel import native
from parallel.planner.problem import PlanningProblem

EXTRA_MICRO_BATCHES = 3  # FlexSP tries the memory minimum up to +3
BISECTION_STEPS = 14  # the packer halves its makespan interval this often: ~1e-4 relative precision
POOL_SIZES = (2, 4, 8)  # groups that stay inside a node: all-to-all there is cheap
POLISH_SKIP_WITHIN = 1.01  # a micro-batch within 1% of its floor is not re-packed


@dataclass(frozen=True)
class PackedMicroBatch:
    members: tuple[int, ...]  # positions in the problem's kept arrays
    groups: tuple[tuple[int, tuple[int, ...]], ...]  # (size index, members) per group, creation order
    span_ms: float  # slowest group, without beta


@dataclass(frozen=True)
class FastPlan:
    micro_batches: tuple[PackedMicroBatch, ...]
    total_ms: float  # sum of (span + beta)
    split: str


def pack(problem: PlanningProblem, members: np.ndarray, min_open: int = 0,
         densest: bool = False) -> PackedMicroBatch | None:
    members = np.asarray(members, dtype=np.int64)
    sizes_idx, assign, span = native.pack_microbatch(
        problem.times[members], problem.lengths[members].tolist(), problem.lo[members].tolist(),
        problem.hi[members].tolist(), list(problem.sizes), problem.num_ranks, problem.capacity, BISECTION_STEPS,
        min_open, densest)
    if span < 0:
        return None
    groups = grouped(members, np.asarray(assign, dtype=np.int64), sizes_idx)
    return PackedMicroBatch(tuple(members.tolist()), groups, float(span))


def pack_split(problem: PlanningProblem, chunks, name: str) -> FastPlan | None:
    """Each chunk packed as one micro-batch, or None if one of them cannot be packed."""
    packed = []
    for chunk in chunks:
        mb = pack(problem, np.asarray(chunk, dtype=np.int64))
        if mb is None:
            return None
        packed.append(mb)
    return FastPlan(tuple(packed), sum(mb.span_ms + problem.beta for mb in packed), name)


def grouped(members: np.ndarray, assign: np.ndarray, sizes_idx) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(size index, members) per group from each member's group number."""
    ordered = members[np.argsort(assign, kind="stable")].tolist()
    ends = np.cumsum(np.bincount(assign, minlength=len(sizes_idx))).tolist()
    starts = [0, *ends[:-1]]
    return tuple((int(s), tuple(ordered[a:b])) for s, a, b in zip(sizes_idx, starts, ends))


def contiguous_split(problem: PlanningProblem, order: np.ndarray, num_chunks: int) -> list[np.ndarray]:
    ends, _ = native.partition_microbatches(problem.lengths[order].tolist(), num_chunks)
    starts = [0] + list(ends[:-1])
    return [order[a:b] for a, b in zip(starts, ends)]


def area_lpt_split(problem: PlanningProblem, area: np.ndarray, num_chunks: int) -> list[np.ndarray] | None:
    """Largest rank-time first, each to the micro-batch with the least rank-time that still has memory."""
    limit = problem.num_ranks * problem.capacity
    load = [0.0] * num_chunks
    tokens = [0] * num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    lengths = problem.lengths.tolist()
    for i in sorted(range(problem.size), key=lambda i: (-area[i], i)):
        best = -1
        for c in range(num_chunks):
            if tokens[c] + lengths[i] <= limit and (best < 0 or load[c] < load[best]):
                best = c
        if best < 0:
            return None
        load[best] += area[i]
        tokens[best] += lengths[i]
        chunks[best].append(i)
    if any(not c for c in chunks):
        return None
    return [np.asarray(sorted(c), dtype=np.int64) for c in chunks]


def rest_floor_ms(problem: PlanningProblem, area: np.ndarray, min_time: np.ndarray, members: np.ndarray) -> float:
    if members.size == 0:
        return 0.0
    tokens = int(problem.lengths[members].sum())
    batches = -(-tokens // (problem.num_ranks * problem.capacity))
    work = max(float(area[members].sum()) / problem.num_ranks, float(min_time[members].max()))
    return work + batches * problem.beta


def fill(problem: PlanningProblem, members: np.ndarray, limit: float) -> tuple[PackedMicroBatch, np.ndarray]:
    """The micro-batch anchor fill builds at `limit` ms, and the members it left out."""
    sizes_idx, assign, span = native.fill_microbatch(
        problem.times[members], problem.lengths[members].tolist(), problem.lo[members].tolist(),
        problem.hi[members].tolist(), list(problem.sizes), problem.num_ranks, problem.capacity, float(limit))
    assign = np.asarray(assign, dtype=np.int64)
    taken = assign >= 0
    groups = grouped(members[taken], assign[taken], sizes_idx)
    return PackedMicroBatch(tuple(members[taken].tolist()), groups, float(span)), members[~taken]


def anchor_fill_plan(problem: PlanningProblem, area: np.ndarray, min_time: np.ndarray) -> FastPlan | None:
    left = np.arange(problem.size, dtype=np.int64)
    packed: list[PackedMicroBatch] = []
    while left.size:
        options: list[tuple[float, int, PackedMicroBatch, np.ndarray]] = []
        if int(problem.lengths[left].sum()) <= problem.num_ranks * problem.capacity:
            whole = pack(problem, left)
            if whole is not None:
                options.append((whole.span_ms + problem.beta, 0, whole, left[:0]))
        anchor = int(left[np.lexsort((left, -problem.lengths[left]))[0]])
        for s in range(int(problem.lo[anchor]), int(problem.hi[anchor]) + 1):
            mb, rest = fill(problem, left, problem.times[anchor, s])
            if not mb.members:
                continue
            taken = np.asarray(mb.members, dtype=np.int64)
            floor_ms = max(float(area[taken].sum()) / problem.num_ranks, float(min_time[taken].max()))
            if mb.span_ms > POLISH_SKIP_WITHIN * floor_ms:
                repacked = pack(problem, taken)
                if repacked is not None and repacked.span_ms < mb.span_ms:
                    mb = repacked
            score = mb.span_ms + problem.beta + rest_floor_ms(problem, area, min_time, rest)
            options.append((score, 1 + s, mb, rest))
        if not options:
            return None
        _, _, mb, left = min(options, key=lambda o: (o[0], o[1]))
        packed.append(mb)
    return FastPlan(tuple(packed), sum(mb.span_ms + problem.beta for mb in packed), "anchor-fill")


def polish(problem: PlanningProblem, plan: FastPlan) -> FastPlan:
    """Re-pack each micro-batch with the packer's other group-opening rules (densest, and new groups
    of at least 2, 4, 8 ranks); keep what is faster."""
    floors = [0] + [problem.sizes.index(d) for d in POOL_SIZES if d in problem.sizes]
    variants = [(floor, densest) for densest in (False, True) for floor in floors][1:]
    area, min_time = problem.min_area(), problem.min_time()
    micro_batches = list(plan.micro_batches)
    for k, mb in enumerate(micro_batches):
        members = list(mb.members)
        floor_ms = max(float(area[members].sum()) / problem.num_ranks, float(min_time[members].max()))
        if mb.span_ms <= POLISH_SKIP_WITHIN * floor_ms:
            continue
        for floor, densest in variants:
            again = pack(problem, np.asarray(mb.members, dtype=np.int64), floor, densest)
            if again is not None and again.span_ms < micro_batches[k].span_ms:
                micro_batches[k] = again
    total = sum(mb.span_ms + problem.beta for mb in micro_batches)
    return FastPlan(tuple(micro_batches), total, plan.split) if total < plan.total_ms else plan


def fast_plan(problem: PlanningProblem) -> FastPlan:
    n = problem.size
    if n == 0:
        return FastPlan((), 0.0, "empty")
    area = problem.min_area()
    work_floor = max(float(area.sum()) / problem.num_ranks, float(problem.min_time().max()))
    order = np.asarray(sorted(range(n), key=lambda i: (int(problem.lengths[i]), i)), dtype=np.int64)
    first = problem.min_micro_batches()
    best = anchor_fill_plan(problem, area, problem.min_time())
    for m in range(min(first, n), n + 1):
        if best is not None and (POLISH_SKIP_WITHIN * (work_floor + m * problem.beta) >= best.total_ms
                                 or m > first + EXTRA_MICRO_BATCHES):
            break
        for name, chunks in (("partition-dp", contiguous_split(problem, order, m)),
                             ("area-lpt", area_lpt_split(problem, area, m))):
            if chunks is None:
                continue
            plan = pack_split(problem, chunks, name)
            if plan is not None and (best is None or plan.total_ms < best.total_ms):
                best = plan
    if best is None:
        # every sequence fits alone on the largest allowed group, so one per micro-batch always works
        packed = [pack(problem, np.asarray([i])) for i in range(n)]
        best = FastPlan(tuple(packed), sum(mb.span_ms + problem.beta for mb in packed), "one-per-micro-batch")
    return polish(problem, best)
