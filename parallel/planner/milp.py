"""FlexSP's MILP for one micro-batch, built as arrays (`linear_model`) and solved by HiGHS through
highspy's array interface, or by CBC through pulp as the fallback (`solvers`).

Lengths are bucketed (bucketing DP, <= max_buckets, each bucket padded to its longest). Candidate
groups p: for each allowed size d, up to floor(N/d) copies (fewer when fewer sequences could use
them). Integer A[k,p] = sequences of bucket k in group p, binary u[p] = group used; minimise M s.t.
  sum_p A[k,p] = n_k;  A[k,p] = 0 if d_p cannot hold b_k;  sum_k b_k*A[k,p] <= d_p*C*u[p] (scaled by 1/C);
  sum_k T(b_k, d_p)*A[k,p] <= M;  A[k,p] <= n_k*u[p];  sum_p d_p*u[p] <= N;  u[p] >= u[p'] for the
  next copy p' of the same size (symmetry). beta is the same for every group and is left out.
The warm start is a given micro-batch (the greedy's), counted into buckets and groups.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from parallel import native
from parallel.planner import solvers
from parallel.planner.fast_path import PackedMicroBatch
from parallel.planner.linear_model import ColumnsBuilder, LinearModel, RowsBuilder
from parallel.planner.problem import PlanningProblem

MAX_BUCKETS = 16


@dataclass(frozen=True)
class MilpResult:
    micro_batch: PackedMicroBatch | None  # None when the solver found no feasible solution
    status: str  # solver's word: optimal, feasible (time limit), infeasible, not solved, ...
    bucketed_ms: float | None  # the MILP's own objective (on padded lengths)
    solver: str = ""  # which solver ran
    build_ms: float = 0.0  # building the arrays
    variables: int = 0


@dataclass(frozen=True)
class MicroBatchModel:
    model: LinearModel
    buckets: list[np.ndarray]  # members of each bucket, by length then position
    tops: np.ndarray  # padded length of each bucket
    group_size: list[int]  # size index of each candidate group
    used_col: list[int]  # u[p]
    take_cols: list[dict[int, int]]  # bucket -> column of A[k,p]


def buckets_of(problem: PlanningProblem, members: np.ndarray, max_buckets: int) -> list[np.ndarray]:
    lengths = problem.lengths[members]
    values, counts = np.unique(lengths, return_counts=True)
    ends, _ = native.bucket_lengths(values.tolist(), counts.tolist(), max_buckets)
    order = members[np.lexsort((members, lengths))]  # by length, then position
    sorted_lengths = problem.lengths[order]
    out, start = [], 0
    for end in ends:
        stop = int(np.searchsorted(sorted_lengths, values[end - 1], side="right"))
        out.append(order[start:stop])
        start = stop
    return out


def build_micro_batch_model(problem: PlanningProblem, members, cost_model,
                            max_buckets: int = MAX_BUCKETS) -> MicroBatchModel:
    members = np.asarray(members, dtype=np.int64)
    buckets = buckets_of(problem, members, max_buckets)
    tops = np.asarray([int(problem.lengths[b].max()) for b in buckets], dtype=np.int64)
    counts = np.asarray([len(b) for b in buckets], dtype=np.float64)
    sizes = problem.sizes
    cap = problem.capacity
    lows = np.searchsorted(np.asarray(sizes, dtype=np.int64) * cap, tops, side="left")
    highs = np.asarray([int(problem.hi[b].min()) for b in buckets])
    columns, rows = ColumnsBuilder(), RowsBuilder()
    span = int(columns.add(1, cost=1.0)[0])
    cover_entries: list[tuple[np.ndarray, np.ndarray]] = []  # (bucket, column) pairs
    rank_cols, rank_vals = [], []
    group_size, used_col, take_cols = [], [], []
    for s, d in enumerate(sizes):
        eligible = np.flatnonzero((lows <= s) & (s <= highs))
        copies = int(min(problem.num_ranks // d, counts[eligible].sum())) if eligible.size else 0
        if copies == 0:
            continue
        e = len(eligible)
        used = columns.add(copies, upper=1.0, integer=True)
        take = columns.add(copies * e, upper=np.tile(counts[eligible], copies), integer=True).reshape(copies, e)
        seq_ms = np.asarray([cost_model.seq_time_ms(int(tops[k]), d) for k in eligible], dtype=np.float64)
        # sum_k (b_k/C) A[k,p] - d u[p] <= 0: in units of C, since coefficients of ~1e4 tokens beside 0/1
        # columns left HiGHS 1.16 "optimal" solutions 1e-6 outside this row, which it then calls a solve error
        memory = rows.add(copies, -np.inf, 0.0)
        rows.entries(memory[:, None], take, (tops[eligible] / float(cap))[None, :])
        rows.entries(memory, used, -float(d))
        timing = rows.add(copies, -np.inf, 0.0)  # sum_k T_k A[k,p] - M <= 0
        rows.entries(timing[:, None], take, seq_ms[None, :])
        rows.entries(timing, span, -1.0)
        link = rows.add(copies * e, -np.inf, 0.0).reshape(copies, e)  # A[k,p] - n_k u[p] <= 0
        rows.entries(link, take, 1.0)
        rows.entries(link, used[:, None], -counts[eligible][None, :])
        if copies > 1:  # u[p+1] - u[p] <= 0
            order = rows.add(copies - 1, -np.inf, 0.0)
            rows.entries(order, used[1:], 1.0)
            rows.entries(order, used[:-1], -1.0)
        cover_entries.append((np.broadcast_to(eligible[None, :], take.shape).ravel(), take.ravel()))
        rank_cols.append(used)
        rank_vals.append(np.full(copies, float(d)))
        for c in range(copies):
            group_size.append(s)
            used_col.append(int(used[c]))
            take_cols.append({int(k): int(take[c, j]) for j, k in enumerate(eligible)})
    cover = rows.add(len(buckets), counts, counts)  # sum_p A[k,p] = n_k
    for bucket_idx, cols in cover_entries:
        rows.entries(cover[bucket_idx], cols, 1.0)
    ranks = rows.add(1, -np.inf, float(problem.num_ranks))  # sum_p d_p u[p] <= N
    if rank_cols:
        rows.entries(ranks[0], np.concatenate(rank_cols), np.concatenate(rank_vals))
    return MicroBatchModel(rows.model(columns), buckets, tops, group_size, used_col, take_cols)


def variable_count(problem: PlanningProblem, members, max_buckets: int = MAX_BUCKETS) -> int:
    """Upper estimate of the MILP's size, without building it."""
    members = np.asarray(members, dtype=np.int64)
    buckets = min(max_buckets, len(np.unique(problem.lengths[members])))
    groups = sum(min(problem.num_ranks // d, len(members)) for d in problem.sizes)
    return groups * (buckets + 1) + 1


def warm_start_vector(built: MicroBatchModel, problem: PlanningProblem, cost_model,
                      packed: PackedMicroBatch) -> np.ndarray | None:
    """The column vector of `packed` (same members) in the bucketed model, or None if it has no
    place there (a group the model does not offer). It may break the padded memory rows; the
    solver then ignores it."""
    bucket_of = {}
    for k, b in enumerate(built.buckets):
        for i in b.tolist():
            bucket_of[i] = k
    x = np.zeros(built.model.num_cols)
    next_copy: dict[int, int] = {}
    span = 0.0
    for size_idx, seqs in packed.groups:
        if not seqs:
            continue
        copies = [p for p, s in enumerate(built.group_size) if s == size_idx]
        c = next_copy.get(size_idx, 0)
        if c >= len(copies):
            return None
        next_copy[size_idx] = c + 1
        p = copies[c]
        x[built.used_col[p]] = 1.0
        d = problem.sizes[size_idx]
        group_ms = 0.0
        for i in seqs:
            col = built.take_cols[p].get(bucket_of.get(i, -1))
            if col is None:
                return None
            x[col] += 1.0
            group_ms += cost_model.seq_time_ms(int(built.tops[bucket_of[i]]), d)
        span = max(span, group_ms)
    x[0] = span
    return x


def decode(built: MicroBatchModel, problem: PlanningProblem, x: np.ndarray, members) -> PackedMicroBatch | None:
    """Hand each bucket's sequences out to the groups in the solver's counts; span on real lengths."""
    remaining = [list(b) for b in built.buckets]
    out_groups = []
    for p, s in enumerate(built.group_size):
        if x[built.used_col[p]] < 0.5:
            continue
        chosen = []
        for k, col in built.take_cols[p].items():
            count = int(np.rint(x[col]))
            chosen += remaining[k][:count]
            remaining[k] = remaining[k][count:]
        out_groups.append((s, tuple(int(i) for i in chosen)))
    if any(remaining):
        return None
    spans = [float(problem.times[list(seqs), s].sum()) for s, seqs in out_groups if seqs]
    return PackedMicroBatch(tuple(int(m) for m in members), tuple(out_groups), max(spans) if spans else 0.0)


def solve_micro_batch(problem: PlanningProblem, members, cost_model, *, time_limit_s: float,
                      solver: str = "highs", max_buckets: int = MAX_BUCKETS,
                      deadline: float | None = None, warm_start: PackedMicroBatch | None = None) -> MilpResult:
    """deadline: a time.perf_counter() value; the solver gets what is left of it once the model is built."""
    started = time.perf_counter()
    members = np.asarray(members, dtype=np.int64)
    built = build_micro_batch_model(problem, members, cost_model, max_buckets)
    warm = warm_start_vector(built, problem, cost_model, warm_start) if warm_start is not None else None
    build_ms = 1000 * (time.perf_counter() - started)
    if deadline is not None:
        # HiGHS stops up to ~20% + 10 ms after its limit (measured): keep that margin to the deadline
        time_limit_s = min(time_limit_s, 0.75 * (deadline - time.perf_counter()) - 0.01)
        if time_limit_s <= 0:
            return MilpResult(None, "not started: building the model used up the budget", None, solver, build_ms,
                              built.model.num_cols)
    ran = solver if solvers.available(solver) else "cbc"
    result = solvers.solve(built.model, ran, time_limit_s, warm_start=warm)
    if not result.has_solution:
        return MilpResult(None, result.status, None, result.solver, build_ms, built.model.num_cols)
    packed = decode(built, problem, result.x, members)
    if packed is None:
        return MilpResult(None, f"{result.status}, but the rounded solution left sequences out", None,
                          result.solver, build_ms, built.model.num_cols)
    return MilpResult(packed, result.status, float(result.x[0]), result.solver, build_ms, built.model.num_cols)
