"""A lower bound on the whole batch's plan from a model of micro-batch assignment and group sizes,
never below `PlanningProblem.lower_bound_ms` (the work-floor bound).

For a micro-batch count M, sequences of one length form a class j (n_j of them). Variables: span s_k
of micro-batch k (k = 0..M-1, numbered by falling span: s_0 >= s_1 >= ...); x[j,k,d] >= 0, how
many of class j run in micro-batch k on groups of d ranks; g[k,d], how many groups of d ranks
micro-batch k has; and, for the few slowest sequences i (`integral_sequences`), binary z[i,k,d]:
it runs whole in micro-batch k on d ranks. For every plan with M micro-batches:
  sum_{k,d} x[j,k,d] = n_j,  sum_{k,d} z[i,k,d] = 1     every sequence runs once
  sum_d d g[k,d] <= N                                   the groups tile the ranks
  time on size d (sum T(L,d) x + T z) <= g[k,d] s_k     each group ends within the span
  tokens on size d (sum L x + L z) <= g[k,d] d C        each group's memory
  sum_d d * (time on size d) <= N s_k                   rank-time (implied for whole g)
  sum_d T(L_j,d) x[j,k,d] <= n_j s_k,  T z <= s_k       each sequence ends within its span
  z[i,k,d] <= g[k,d]                                    a whole sequence's group exists
  sum_k s_k >= work floor
and x, z = 0 where d cannot hold L. g[k,d] s_k is made linear with g in binary digits b[k,d,t] and
w[k,d,t] = b s_k (w <= s_k, w <= reach b). Only plans better than the incumbent (the greedy plan,
of total U) matter: their spans add up to at most U - M beta, so micro-batch k (the (k+1)-th
longest) spans at most reach_k = (U - M beta) / (k + 1), which rules out every (j, k, d) with
T(L_j, d) above it. The bound is min(U, min over M of the model's optimum + M beta), with M from
the memory minimum while the work floor plus M beta stays below U. With HiGHS the model is a MILP
and its dual bound is used (valid when the time limit stops it too); otherwise its LP relaxation.
Without the groups and whole sequences (the first version), a 93K-token document could run half in
each micro-batch and short documents fill the ranks beside a 64-rank group: the bound was 5.6%
below the greedy at N = 64 where the truth was mostly the bound's looseness.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from parallel.planner import solvers
from parallel.planner.linear_model import ColumnsBuilder, LinearModel, RowsBuilder
from parallel.planner.problem import PlanningProblem

MAX_EXTRA_MICRO_BATCHES = 3  # LPs beyond the memory minimum; larger counts use the work floor
MAX_INTEGRAL = 8  # the slowest sequences placed whole (binary) in the bound's model
INTEGRAL_SHARE = 0.1  # ... if their least time is at least this share of an average micro-batch span
LP_SAFETY = 1e-7  # the LP optimum is exact to the solver's tolerances; the bound gives this back
MILP_GAP = 0.002  # the bound's MILP stops within this of its own optimum (its dual bound stays valid)
MILP_MIN_S = 0.15  # with less time than this for the bound, its LP relaxation is solved instead


@dataclass(frozen=True)
class BatchBound:
    bound_ms: float  # no plan of the batch is faster
    floor_ms: float  # PlanningProblem.lower_bound_ms(), for comparison
    status: str  # how it was obtained
    solver: str  # "highs", "cbc", or "" when no LP ran
    lps: int  # LPs solved
    build_ms: float
    # the micro-batch contents of the model's solutions, best first: a split for the packer to try
    splits: tuple[tuple[float, list[np.ndarray]], ...] = ()  # (the model's objective + M beta, split)


def classes_of(problem: PlanningProblem, exclude: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(a kept sequence of each class, its length, how many are in it, its members): a class is the
    sequences of one length and one allowed size range; `exclude`d sequences are in none."""
    keep = np.ones(problem.size, dtype=bool)
    if exclude is not None:
        keep[exclude] = False
    positions = np.flatnonzero(keep)
    if positions.size == 0:
        return positions, problem.lengths[positions], positions, []
    keys = np.stack([problem.lengths[positions], problem.lo[positions], problem.hi[positions]], axis=1)
    _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    members = np.split(positions[order], np.cumsum(counts)[:-1])
    return positions[first], problem.lengths[positions[first]], counts, members


def integral_sequences(problem: PlanningProblem, incumbent_ms: float, limit: int = MAX_INTEGRAL) -> np.ndarray:
    """The sequences the bound places whole (binary micro-batch x group size): up to `limit` of the
    slowest, those whose least time is at least INTEGRAL_SHARE of an average micro-batch's span in a
    plan as good as the incumbent. A long sequence split across micro-batches is what made the plain
    LP loose (a 93K-token document half on 32 ranks in one micro-batch, half on 64 in the other)."""
    if limit <= 0 or problem.size == 0:
        return np.zeros(0, dtype=np.int64)
    m = problem.min_micro_batches()
    average_span = max(incumbent_ms - m * problem.beta, 0.0) / m
    least = problem.min_time()
    order = np.lexsort((np.arange(problem.size), -least))[:limit]
    return np.sort(order[least[order] >= INTEGRAL_SHARE * average_span]).astype(np.int64)


@dataclass(frozen=True)
class _MicroBatchRows:
    """One micro-batch's rows that every placement column enters."""
    load: np.ndarray  # per size: time on it - what its groups offer <= 0
    rank_time: int
    memory: np.ndarray  # per size: tokens on it / C - d g[d] <= 0
    span: int  # the column s_k
    sizes: np.ndarray
    capacity: float

    def place(self, rows: RowsBuilder, cols, item, d, cover_rows, item_times, item_lengths, item_counts) -> None:
        """Columns of items (classes or whole sequences) on size index d: each item once, its time
        and tokens on its size, and it ends within the span (sum_d T col - count s_k <= 0)."""
        rows.entries(cover_rows[item], cols, 1.0)
        rows.entries(self.load[d], cols, item_times[item, d])
        rows.entries(self.rank_time, cols, self.sizes[d] * item_times[item, d])
        rows.entries(self.memory[d], cols, item_lengths[item] / self.capacity)
        here = np.unique(item)
        ends = rows.add(len(here), -np.inf, 0.0)
        rows.entries(ends[np.searchsorted(here, item)], cols, item_times[item, d])
        rows.entries(ends, self.span, -item_counts[here].astype(np.float64))


@dataclass(frozen=True)
class BatchModel:
    """The bound's model and where each sequence's placement columns are, to read a split back."""
    model: LinearModel
    class_members: list[np.ndarray]  # kept sequences of each class
    integral: np.ndarray  # sequences placed whole
    class_columns: list[tuple[np.ndarray, np.ndarray]]  # per micro-batch: (class of each column, column)
    whole_columns: list[tuple[np.ndarray, np.ndarray]]  # per micro-batch: (position in integral, column)


def build_batch_lp(problem: PlanningProblem, micro_batches: int, work_floor_ms: float,
                   incumbent_ms: float, integral: np.ndarray | None = None) -> BatchModel | None:
    """The model above for M = micro_batches, or None when no plan with M micro-batches can beat the
    incumbent (some sequence has no place). `integral` sequences get binary placements (a MILP);
    the rest stay fractional by class."""
    integral = np.zeros(0, dtype=np.int64) if integral is None else np.asarray(integral, dtype=np.int64)
    first, lengths, counts, members = classes_of(problem, integral)
    class_columns, whole_columns = [], []
    times = problem.times[first]  # classes x sizes
    sizes = np.asarray(problem.sizes, dtype=np.float64)
    cols_idx = np.arange(len(problem.sizes))[None, :]
    allowed = (cols_idx >= problem.lo[first][:, None]) & (cols_idx <= problem.hi[first][:, None])
    whole_times = problem.times[integral]
    whole_allowed = (cols_idx >= problem.lo[integral][:, None]) & (cols_idx <= problem.hi[integral][:, None])
    m = micro_batches
    spans_total = incumbent_ms - m * problem.beta
    n, cap = problem.num_ranks, float(problem.capacity)
    columns, rows = ColumnsBuilder(), RowsBuilder()
    span = columns.add(m, cost=1.0)
    cover = rows.add(len(lengths), counts.astype(np.float64), counts.astype(np.float64))
    whole_cover = rows.add(len(integral), 1.0, 1.0)
    placed = np.zeros(len(lengths), dtype=bool)
    whole_placed = np.zeros(len(integral), dtype=bool)
    most_groups = np.asarray([n // d for d in problem.sizes], dtype=np.float64)
    for k in range(m):
        reach = spans_total / (k + 1)  # no span of a better plan is longer
        # g[d], the groups of d ranks, in binary digits b[d,t] (g[d] = sum_t 2^t b[d,t]), so that the
        # time they offer, g[d] * s_k, is linear: w[d,t] = b[d,t] * s_k (w <= s_k, w <= reach * b)
        digit_size = np.concatenate([np.full(int(g).bit_length(), si) for si, g in enumerate(most_groups)])
        digit_value = np.concatenate([2.0 ** np.arange(int(g).bit_length()) for g in most_groups])
        digits = columns.add(digit_size.size, upper=1.0, integer=True)
        offered = columns.add(digit_size.size, upper=reach)
        groups = rows.add(len(sizes), -np.inf, most_groups)  # g[d] <= N/d
        rows.entries(groups[digit_size], digits, digit_value)
        tiling = rows.add(1, -np.inf, float(n))  # sum_d d g[d] <= N
        rows.entries(tiling[0], digits, sizes[digit_size] * digit_value)
        digit_span = rows.add(digit_size.size, -np.inf, 0.0)  # w - s_k <= 0
        rows.entries(digit_span, offered, 1.0)
        rows.entries(digit_span, span[k], -1.0)
        digit_open = rows.add(digit_size.size, -np.inf, 0.0)  # w - reach b <= 0
        rows.entries(digit_open, offered, 1.0)
        rows.entries(digit_open, digits, -reach)
        rank_time = rows.add(1, -np.inf, 0.0)  # sum_d d T(on d) - N s_k <= 0 (implied when b is whole)
        rows.entries(rank_time[0], span[k], -float(n))
        load = rows.add(len(sizes), -np.inf, 0.0)  # time on size d - sum_t 2^t w[d,t] <= 0
        rows.entries(load[digit_size], offered, -digit_value)
        memory = rows.add(len(sizes), -np.inf, 0.0)  # tokens on size d / C - d g[d] <= 0 (in units of C)
        rows.entries(memory[digit_size], digits, -sizes[digit_size] * digit_value)
        spots = _MicroBatchRows(load, rank_time[0], memory, span[k], sizes, cap)
        j, d = np.nonzero(allowed & (times <= reach * (1 + 1e-12)))
        x = columns.add(j.size, upper=counts[j].astype(np.float64))
        class_columns.append((j, x))
        if j.size:
            placed[j] = True
            spots.place(rows, x, j, d, cover, times, lengths, counts)
        i, d = np.nonzero(whole_allowed & (whole_times <= reach * (1 + 1e-12)))
        z = columns.add(i.size, upper=1.0, integer=True)
        whole_columns.append((i, z))
        if i.size:
            whole_placed[i] = True
            spots.place(rows, z, i, d, whole_cover, whole_times, problem.lengths[integral], np.ones(len(integral)))
            needs = rows.add(i.size, -np.inf, 0.0)  # z - g[d] <= 0: its group exists
            rows.entries(needs, z, 1.0)
            member = digit_size[None, :] == d[:, None]
            rows.entries(np.broadcast_to(needs[:, None], member.shape)[member],
                         np.broadcast_to(digits[None, :], member.shape)[member],
                         -np.broadcast_to(digit_value[None, :], member.shape)[member])
    if not placed.all() or not whole_placed.all():
        return None
    if m > 1:  # s_k - s_{k+1} >= 0
        order = rows.add(m - 1, 0.0, np.inf)
        rows.entries(order, span[:-1], 1.0)
        rows.entries(order, span[1:], -1.0)
    floor = rows.add(1, work_floor_ms, np.inf)
    rows.entries(floor[0], span, 1.0)
    return BatchModel(rows.model(columns), members, integral, class_columns, whole_columns)


def split_of_solution(built: BatchModel, x: np.ndarray) -> list[np.ndarray]:
    """The micro-batches a solution of the model puts each sequence in: whole sequences where their
    binary is 1, each class's members handed out by its (rounded) counts per micro-batch, largest
    remainder first, so every sequence lands in exactly one micro-batch. Empty ones are left out."""
    m = len(built.class_columns)
    counts = np.zeros((len(built.class_members), m))
    for k, (j, cols) in enumerate(built.class_columns):
        np.add.at(counts[:, k], j, x[cols])
    out: list[list[int]] = [[] for _ in range(m)]
    for c, members in enumerate(built.class_members):
        share = np.clip(counts[c], 0.0, None)
        whole = np.floor(share + 1e-9).astype(np.int64)
        short = len(members) - int(whole.sum())  # rounding down left these out: largest remainders take them
        whole[np.lexsort((np.arange(m), -(share - whole)))[:max(short, 0)]] += 1
        start = 0
        for k in range(m):
            out[k] += members[start:start + whole[k]].tolist()
            start += int(whole[k])
    for k, (i, cols) in enumerate(built.whole_columns):
        for pos in i[x[cols] > 0.5].tolist():
            out[k].append(int(built.integral[pos]))
    return [np.asarray(sorted(mb), dtype=np.int64) for mb in out if mb]


def batch_lower_bound(problem: PlanningProblem, incumbent_ms: float, *, solver: str = "highs",
                      deadline: float | None = None, branch: bool = True,
                      max_integral: int = MAX_INTEGRAL) -> BatchBound:
    """deadline: a time.perf_counter() value; models not solved by then leave the bound at what is
    proven so far (today's bound at least). On HiGHS with at least MILP_MIN_S to go, each micro-batch
    count is a small MILP whose dual bound is the bound (valid even where the time limit stops it),
    max_integral of the slowest sequences placed whole (`integral_sequences`); otherwise the LP
    relaxation, and branch: the longest sequence runs on exactly one group size in any plan, so the
    bound is the least, over those sizes, of the bound with it fixed there."""
    floor = problem.lower_bound_ms()
    if problem.size == 0:
        return BatchBound(0.0, 0.0, "empty batch", "", 0, 0.0)
    # a MILP through pulp/CBC is too slow per step, and one cut off within milliseconds bounds nothing
    exact = solver == "highs" and solvers.available("highs") and (
        deadline is None or deadline - time.perf_counter() >= MILP_MIN_S)
    integral = integral_sequences(problem, incumbent_ms, max_integral) if exact else None
    plain = _bound(problem, incumbent_ms, solver, deadline, floor, integral, exact)
    longest = int(np.lexsort((np.arange(problem.size), -problem.times.min(axis=1)))[0])
    if exact or not branch or problem.lo[longest] == problem.hi[longest] or plain.status != "lp":
        return plain
    least, lps, build_ms = np.inf, plain.lps, plain.build_ms
    for s in range(int(problem.lo[longest]), int(problem.hi[longest]) + 1):
        lo, hi = problem.lo.copy(), problem.hi.copy()
        lo[longest] = hi[longest] = s
        fixed = replace(problem, lo=lo, hi=hi)
        part = _bound(fixed, incumbent_ms, solver, deadline, fixed.lower_bound_ms())
        lps, build_ms = lps + part.lps, build_ms + part.build_ms
        if part.status != "lp":  # unfinished branch: keep the unbranched bound
            return BatchBound(plain.bound_ms, floor, f"lp (branching on the longest sequence unfinished: "
                              f"{part.status})", plain.solver, lps, build_ms)
        least = min(least, part.bound_ms)
    return BatchBound(max(plain.bound_ms, least), floor,
                      f"lp, branched on the longest sequence's {int(problem.hi[longest] - problem.lo[longest]) + 1} "
                      "group sizes", plain.solver, lps, build_ms)


def _bound(problem: PlanningProblem, incumbent_ms: float, solver: str, deadline: float | None,
           floor: float, integral: np.ndarray | None = None, exact: bool = False) -> BatchBound:
    """exact: solve each model as a MILP (its dual bound is the bound), else its LP relaxation."""
    work = floor - problem.beta * problem.min_micro_batches()
    first = problem.min_micro_batches()
    best = incumbent_ms  # only plans better than the incumbent are bounded below
    lps, build_s, ran = 0, 0.0, ""
    splits = []
    status = f"milp, {0 if integral is None else integral.size} slowest sequence(s) placed whole" if exact else "lp"
    m = first
    while work + m * problem.beta < incumbent_ms:
        if m > first + MAX_EXTRA_MICRO_BATCHES:
            best = min(best, work + m * problem.beta)  # every larger count costs at least this
            break
        start = time.perf_counter()
        built = build_batch_lp(problem, m, work, incumbent_ms, integral)
        build_s += time.perf_counter() - start
        if built is not None:
            model = built.model
            # keep a margin for HiGHS to notice its limit and stop before the deadline
            left = None if deadline is None else 0.85 * (deadline - time.perf_counter()) - 0.002
            if left is not None and left <= 0.001:
                status = f"{status}; stopped by the budget after {lps} micro-batch count(s)"
                best = min(best, work + m * problem.beta)  # this count and all larger ones, unsolved
                break
            chosen = solver if solvers.available(solver) else "cbc"
            result = solvers.solve(model, chosen, 10.0 if left is None else left, relax=not exact,
                                   relative_gap=MILP_GAP if exact else None)
            ran, lps = result.solver, lps + 1
            if result.x is not None:
                splits.append((float(result.objective) + m * problem.beta, split_of_solution(built, result.x)))
            if result.status == "infeasible":
                pass  # no plan with m micro-batches beats the incumbent
            elif exact and result.dual_bound is not None:
                # the MILP's dual bound holds whether or not the time limit stopped the search
                best = min(best, max(result.dual_bound, work) * (1 - LP_SAFETY) + m * problem.beta)
                if result.status != "optimal":
                    status = f"{status}; {m} micro-batches: {result.status}"
            elif not exact and result.status == "optimal" and result.objective is not None:
                best = min(best, result.objective * (1 - LP_SAFETY) + m * problem.beta)
            else:
                status = f"{status}; {m} micro-batches: {result.status}"
                best = min(best, work + m * problem.beta)
                break
        m += 1
    splits.sort(key=lambda item: item[0])
    return BatchBound(max(floor, best), floor, status, ran, lps, 1000 * build_s, tuple(splits))
