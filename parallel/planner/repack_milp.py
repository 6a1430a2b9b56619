"""The per-step MILP: re-pack part of a greedy micro-batch exactly (real lengths, no bucket padding),
warm-started from the greedy's own assignment.

A micro-batch's span is its busiest group's time. Take the groups within CRITICAL of the span (the
MAX_BUSY busiest of them) and as many of the least loaded groups (at least LIGHT_GROUPS), free their
sequences, and solve, with the
groups' sizes kept, binary x[i,g] = sequence i runs on chosen group g:
  minimise M  s.t.  sum_g x[i,g] = 1;  sum_i T(L_i, d_g) x[i,g] <= M;  sum_i L_i x[i,g] <= d_g C;
  x[i,g] = 0 where d_g cannot hold L_i.
The greedy assignment is feasible, so the solver starts from it and can only improve; the new span is
the larger of M and the untouched groups' times. Repeated while it improves and time is left.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from parallel.planner import solvers
from parallel.planner.fast_path import PackedMicroBatch
from parallel.planner.linear_model import ColumnsBuilder, LinearModel, RowsBuilder
from parallel.planner.problem import PlanningProblem

CRITICAL = 0.995  # groups at >= this fraction of the span are re-packed
LIGHT_GROUPS = 2  # at least this many of the least loaded groups join them
MAX_BUSY = 8  # at most this many busy groups per round (the model grows with groups x sequences)
MAX_ROUNDS = 8


@dataclass(frozen=True)
class RepackResult:
    micro_batch: PackedMicroBatch  # the input when nothing better was found
    improved: bool
    status: str  # the last solve's word, or why none ran
    solver: str
    rounds: int  # MILPs solved
    build_ms: float


def group_times(problem: PlanningProblem, packed: PackedMicroBatch) -> np.ndarray:
    return np.asarray([float(problem.times[list(members), s].sum()) if members else 0.0
                       for s, members in packed.groups])


def neighbourhood(times: np.ndarray) -> list[int]:
    """The groups to re-pack: the busiest ones and as many of the least loaded."""
    span = float(times.max())
    by_load = np.lexsort((np.arange(len(times)), -times))
    busy = [int(g) for g in by_load[:MAX_BUSY] if times[g] >= CRITICAL * span]
    light = [int(g) for g in np.lexsort((np.arange(len(times)), times)) if int(g) not in busy]
    return busy + light[:max(LIGHT_GROUPS, len(busy))]


def build_repack_model(problem: PlanningProblem, packed: PackedMicroBatch, chosen: list[int]):
    """(model, sequences freed, their x columns [sequence, group], warm start)."""
    sizes_idx = np.asarray([packed.groups[g][0] for g in chosen], dtype=np.int64)
    seqs = np.asarray([i for g in chosen for i in packed.groups[g][1]], dtype=np.int64)
    home = np.repeat(np.arange(len(chosen)), [len(packed.groups[g][1]) for g in chosen])
    allowed = (problem.lo[seqs][:, None] <= sizes_idx[None, :]) & (sizes_idx[None, :] <= problem.hi[seqs][:, None])
    columns, rows = ColumnsBuilder(), RowsBuilder()
    span = int(columns.add(1, cost=1.0)[0])
    x = columns.add(seqs.size * len(chosen), upper=allowed.ravel().astype(np.float64), integer=True)
    x = x.reshape(seqs.size, len(chosen))
    cover = rows.add(seqs.size, 1.0, 1.0)
    rows.entries(cover[:, None], x, 1.0)
    times = problem.times[seqs][:, sizes_idx]
    timing = rows.add(len(chosen), -np.inf, 0.0)
    rows.entries(timing[None, :], x, times)
    rows.entries(timing, span, -1.0)
    # in units of the capacity C, as in milp.py (HiGHS's 1e-6 row tolerance then means the same everywhere)
    memory = rows.add(len(chosen), -np.inf, np.asarray([problem.sizes[s] for s in sizes_idx], dtype=np.float64))
    rows.entries(memory[None, :], x, (problem.lengths[seqs] / float(problem.capacity))[:, None])
    model: LinearModel = rows.model(columns)
    warm = np.zeros(model.num_cols)
    warm[x[np.arange(seqs.size), home]] = 1.0
    loads = np.bincount(home, weights=times[np.arange(seqs.size), home], minlength=len(chosen))
    warm[span] = float(loads.max()) if seqs.size else 0.0
    return model, seqs, x, warm


def repack(problem: PlanningProblem, packed: PackedMicroBatch, *, solver: str = "highs",
           deadline: float | None = None, time_limit_s: float = 10.0) -> RepackResult:
    """deadline: a time.perf_counter() value; no solve is started or left running past it (up to
    HiGHS's own lateness, for which a margin is kept)."""
    ran = solver if solvers.available(solver) else "cbc"
    best, improved, status, rounds, build_s = packed, False, "not started", 0, 0.0
    for _ in range(MAX_ROUNDS):
        times = group_times(problem, best)
        chosen = neighbourhood(times)
        start = time.perf_counter()
        model, seqs, x, warm = build_repack_model(problem, best, chosen)
        build_s += time.perf_counter() - start
        limit = time_limit_s
        if deadline is not None:
            # HiGHS stops up to ~20% + 10 ms after its limit (measured): keep that margin to the deadline
            limit = min(limit, 0.75 * (deadline - time.perf_counter()) - 0.01)
            if limit <= 0.001:
                status = status if rounds else "not started: budget used up"
                break
        result = solvers.solve(model, ran, limit, warm_start=warm)
        rounds, status = rounds + 1, result.status
        if not result.has_solution:
            break
        assign = np.argmax(np.asarray(result.x)[x], axis=1)
        groups = list(best.groups)
        for a, g in enumerate(chosen):
            groups[g] = (groups[g][0], tuple(int(i) for i in seqs[assign == a]))
        candidate = PackedMicroBatch(best.members, tuple(groups), 0.0)
        span = float(group_times(problem, candidate).max())
        if span >= best.span_ms * (1 - 1e-9):  # float noise is not an improvement
            break
        best, improved = PackedMicroBatch(best.members, tuple(groups), span), True
        if result.status != "optimal":
            break  # the time limit stopped it: no time for another round
    return RepackResult(best, improved, status, ran, rounds, 1000 * build_s)
