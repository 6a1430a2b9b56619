"""A lower bound on the whole batch's plan from the LP relaxation of micro-batch assignment and
group sizes, never below `PlanningProblem.lower_bound_ms` (today's work-floor bound).

For a micro-batch count M, sequences of one length form a class j (n_j of them). Variables: span s_k
of micro-batch k (k = 0..M-1, numbered by falling span: s_0 >= s_1 >= ...), and x[j,k,d] >= 0, how
many of class j run in micro-batch k on groups of d ranks. For every plan with M micro-batches:
  sum_{k,d} x[j,k,d] = n_j                              every sequence runs once
  sum_{j,d} L_j x[j,k,d] <= N C                         a micro-batch's memory
  sum_{j,d} d T(L_j,d) x[j,k,d] <= N s_k                its rank-time (groups tile the N ranks)
  sum_d T(L_j,d) x[j,k,d] <= n_j s_k                    each sequence ends within its micro-batch's span
  sum_k s_k >= work floor                               today's bound on the spans
and x[j,k,d] = 0 where d cannot hold L_j. Only plans better than the incumbent (the greedy plan, of
total U) matter: their spans add up to at most U - M beta, so micro-batch k (the (k+1)-th longest)
spans at most (U - M beta) / (k + 1), which rules out every (j, k, d) with T(L_j, d) above it. The
bound is min(U, min over M of LP_M + M beta), with M from the memory minimum while the work floor
plus M beta stays below U; every relaxation above is of a valid plan, so no plan is below it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from parallel.planner import solvers
from parallel.planner.linear_model import ColumnsBuilder, LinearModel, RowsBuilder
from parallel.planner.problem import PlanningProblem

MAX_EXTRA_MICRO_BATCHES = 3  # LPs beyond the memory minimum; larger counts use the work floor
LP_SAFETY = 1e-7  # the LP optimum is exact to the solver's tolerances; the bound gives this back


@dataclass(frozen=True)
class BatchBound:
    bound_ms: float  # no plan of the batch is faster
    floor_ms: float  # PlanningProblem.lower_bound_ms(), for comparison
    status: str  # how it was obtained
    solver: str  # "highs", "cbc", or "" when no LP ran
    lps: int  # LPs solved
    build_ms: float


def classes_of(problem: PlanningProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a kept sequence of each class, its length, how many are in it): a class is the sequences
    of one length and one allowed size range."""
    keys = np.stack([problem.lengths, problem.lo, problem.hi], axis=1)
    _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    return first, problem.lengths[first], counts


def build_batch_lp(problem: PlanningProblem, micro_batches: int, work_floor_ms: float,
                   incumbent_ms: float) -> LinearModel | None:
    """The LP above for M = micro_batches, or None when no plan with M micro-batches can beat the
    incumbent (some sequence has no place)."""
    first, lengths, counts = classes_of(problem)
    times = problem.times[first]  # classes x sizes
    sizes = np.asarray(problem.sizes, dtype=np.float64)
    cols_idx = np.arange(len(problem.sizes))[None, :]
    allowed = (cols_idx >= problem.lo[first][:, None]) & (cols_idx <= problem.hi[first][:, None])
    m = micro_batches
    spans_total = incumbent_ms - m * problem.beta
    columns, rows = ColumnsBuilder(), RowsBuilder()
    span = columns.add(m, cost=1.0)
    cover = rows.add(len(lengths), counts.astype(np.float64), counts.astype(np.float64))
    placed = np.zeros(len(lengths), dtype=bool)
    memory = rows.add(m, -np.inf, float(problem.num_ranks * problem.capacity))
    rank_time = rows.add(m, -np.inf, 0.0)
    rows.entries(rank_time, span, -float(problem.num_ranks))
    for k in range(m):
        reach = spans_total / (k + 1)
        ok = allowed & (times <= reach * (1 + 1e-12))
        j, s = np.nonzero(ok)
        if j.size == 0:
            continue
        x = columns.add(j.size, upper=counts[j].astype(np.float64))
        placed[j] = True
        rows.entries(cover[j], x, 1.0)
        rows.entries(memory[k], x, lengths[j].astype(np.float64))
        rows.entries(rank_time[k], x, sizes[s] * times[j, s])
        classes_here = np.unique(j)
        ends = rows.add(len(classes_here), -np.inf, 0.0)  # sum_d T x - n_j s_k <= 0
        row_of = np.searchsorted(classes_here, j)
        rows.entries(ends[row_of], x, times[j, s])
        rows.entries(ends, span[k], -counts[classes_here].astype(np.float64))
    if not placed.all():
        return None
    if m > 1:  # s_k - s_{k+1} >= 0
        order = rows.add(m - 1, 0.0, np.inf)
        rows.entries(order, span[:-1], 1.0)
        rows.entries(order, span[1:], -1.0)
    floor = rows.add(1, work_floor_ms, np.inf)
    rows.entries(floor[0], span, 1.0)
    return rows.model(columns)


def batch_lower_bound(problem: PlanningProblem, incumbent_ms: float, *, solver: str = "highs",
                      deadline: float | None = None, branch: bool = True) -> BatchBound:
    """deadline: a time.perf_counter() value; LPs not solved by then leave the bound at what is
    proven so far (today's bound at least). branch: the longest sequence runs on exactly one group
    size in any plan, so the bound is the least, over those sizes, of the bound with it fixed there
    (each branch with its own work floor); much tighter when that sequence dominates a micro-batch."""
    floor = problem.lower_bound_ms()
    if problem.size == 0:
        return BatchBound(0.0, 0.0, "empty batch", "", 0, 0.0)
    plain = _bound(problem, incumbent_ms, solver, deadline, floor)
    longest = int(np.lexsort((np.arange(problem.size), -problem.times.min(axis=1)))[0])
    if not branch or problem.lo[longest] == problem.hi[longest] or plain.status != "lp":
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
           floor: float) -> BatchBound:
    work = floor - problem.beta * problem.min_micro_batches()
    first = problem.min_micro_batches()
    best = incumbent_ms  # only plans better than the incumbent are bounded below
    lps, build_s, ran = 0, 0.0, ""
    status = "lp"
    m = first
    while work + m * problem.beta < incumbent_ms:
        if m > first + MAX_EXTRA_MICRO_BATCHES:
            best = min(best, work + m * problem.beta)  # every larger count costs at least this
            break
        start = time.perf_counter()
        model = build_batch_lp(problem, m, work, incumbent_ms)
        build_s += time.perf_counter() - start
        if model is not None:
            # keep a margin for HiGHS to notice its limit and stop before the deadline
            left = None if deadline is None else 0.85 * (deadline - time.perf_counter()) - 0.002
            if left is not None and left <= 0.001:
                status = f"lp stopped by the budget after {lps} micro-batch count(s)"
                best = min(best, work + m * problem.beta)  # this count and all larger ones, unsolved
                break
            chosen = solver if solvers.available(solver) else "cbc"
            result = solvers.solve(model, chosen, 10.0 if left is None else left, relax=True)
            ran, lps = result.solver, lps + 1
            if result.status == "optimal" and result.objective is not None:
                best = min(best, result.objective * (1 - LP_SAFETY) + m * problem.beta)
            elif result.status != "infeasible":  # infeasible: no plan with m micro-batches beats the incumbent
                status = f"lp for {m} micro-batches: {result.status}"
                best = min(best, work + m * problem.beta)
                break
        m += 1
    return BatchBound(max(floor, best), floor, status, ran, lps, 1000 * build_s)
