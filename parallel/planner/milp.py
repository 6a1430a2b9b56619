"""FlexSP's MILP for one micro-batch, solved through pulp (HiGHS by default, CBC as fallback).

Lengths are bucketed (bucketing DP, <= max_buckets, each bucket padded to its longest). Candidate
groups p: for each allowed size d, up to floor(N/d) copies (fewer when fewer sequences could use
them). Integer A[k,p] = sequences of bucket k in group p, binary u[p] = group used; minimise M s.t.
  sum_p A[k,p] = n_k;  A[k,p] = 0 if d_p cannot hold b_k;  sum_k b_k*A[k,p] <= d_p*C*u[p];
  sum_k T(b_k, d_p)*A[k,p] <= M;  A[k,p] <= n_k*u[p];  sum_p d_p*u[p] <= N;  u[p] >= u[p'] for the
  next copy p' of the same size (symmetry). beta is the same for every group and is left out.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pulp

from parallel import native
from parallel.planner.fast_path import PackedMicroBatch
from parallel.planner.problem import PlanningProblem

MAX_BUCKETS = 16


def _swallow_highs_banner() -> None:
    """HiGHS prints a two-line banner to fd 1 the first time a model is created in a process,
    whatever output_flag says. Create one at import, with fd 1 pointed at /dev/null, so plans and
    tables are not interleaved with it later (from the solver thread)."""
    try:
        import highspy
    except ImportError:  # pulp falls back to CBC
        return
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no fd 1 to silence (closed or replaced stdout)
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_swallow_highs_banner()


@dataclass(frozen=True)
class MilpResult:
    micro_batch: PackedMicroBatch | None  # None when the solver found no feasible solution
    status: str  # solver's word: optimal, feasible (time limit), infeasible, not solved, ...
    bucketed_ms: float | None  # the MILP's own objective (on padded lengths)


def make_solver(solver: str, time_limit_s: float):
    limit = max(0.001, float(time_limit_s))
    if solver == "highs":
        return pulp.HiGHS(msg=False, timeLimit=limit, threads=1)
    if solver == "cbc":
        with warnings.catch_warnings():  # pulp 3.3 deprecates the bundled CBC for 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, threads=1)
    raise ValueError(f"unknown MILP solver {solver!r}; one of: highs, cbc, none")


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


def variable_count(problem: PlanningProblem, members, max_buckets: int = MAX_BUCKETS) -> int:
    """Upper estimate of the MILP's size, without building it."""
    members = np.asarray(members, dtype=np.int64)
    buckets = min(max_buckets, len(np.unique(problem.lengths[members])))
    groups = sum(min(problem.num_ranks // d, len(members)) for d in problem.sizes)
    return groups * (buckets + 1) + 1


def solve_micro_batch(problem: PlanningProblem, members, cost_model, *, time_limit_s: float,
                      solver: str = "highs", max_buckets: int = MAX_BUCKETS,
                      deadline: float | None = None) -> MilpResult:
    """deadline: a time.perf_counter() value; the solver gets what is left of it once the model is built."""
    members = np.asarray(members, dtype=np.int64)
    buckets = buckets_of(problem, members, max_buckets)
    tops = [int(problem.lengths[b].max()) for b in buckets]
    counts = [len(b) for b in buckets]
    sizes = problem.sizes
    cap = problem.capacity
    # size index range each bucket may use (its longest sequence decides memory)
    lows = [int(np.searchsorted(np.asarray(sizes) * cap, top, side="left")) for top in tops]
    highs = [int(problem.hi[b].min()) for b in buckets]

    prob = pulp.LpProblem("sp_micro_batch", pulp.LpMinimize)
    span = prob.add_variable("span", lowBound=0)
    prob += span
    groups: list[tuple[int, dict[int, pulp.LpVariable], pulp.LpVariable]] = []
    for s, d in enumerate(sizes):
        eligible = [k for k in range(len(buckets)) if lows[k] <= s <= highs[k]]
        copies = min(problem.num_ranks // d, sum(counts[k] for k in eligible))
        previous = None
        for c in range(copies):
            used = prob.add_variable(f"u_{d}_{c}", cat="Binary")
            take = {k: prob.add_variable(f"a_{k}_{d}_{c}", lowBound=0, upBound=counts[k], cat="Integer")
                    for k in eligible}
            prob += pulp.lpSum(tops[k] * take[k] for k in eligible) <= d * cap * used
            prob += pulp.lpSum(cost_model.seq_time_ms(tops[k], d) * take[k] for k in eligible) <= span
            for k in eligible:
                prob += take[k] <= counts[k] * used
            if previous is not None:
                prob += previous >= used
            previous = used
            groups.append((s, take, used))
    for k in range(len(buckets)):
        prob += pulp.lpSum(take[k] for _, take, _ in groups if k in take) == counts[k]
    prob += pulp.lpSum(sizes[s] * used for s, _, used in groups) <= problem.num_ranks

    if deadline is not None:
        # keep a margin for HiGHS to stop and pulp to read the solution back before the deadline
        time_limit_s = min(time_limit_s, 0.85 * (deadline - time.perf_counter()) - 0.005)
        if time_limit_s <= 0:
            return MilpResult(None, "not started: building the model used up the budget", None)
    prob.solve(make_solver(solver, time_limit_s))
    status = {1: "optimal", 2: "feasible (stopped by time limit)", 0: "no solution found",
              -1: "infeasible", -2: "unbounded", -3: "undefined"}.get(prob.sol_status, str(prob.sol_status))
    if prob.sol_status not in (1, 2):
        return MilpResult(None, status, None)

    # hand each bucket's sequences out to the groups in the solver's counts
    remaining = [list(b) for b in buckets]
    out_groups = []
    for s, take, used in groups:
        if (used.value() or 0) < 0.5:
            continue
        chosen = []
        for k, var in take.items():
            count = round(var.value() or 0)
            chosen += remaining[k][:count]
            remaining[k] = remaining[k][count:]
        out_groups.append((s, tuple(int(i) for i in chosen)))
    if any(remaining_k for remaining_k in remaining):
        return MilpResult(None, f"{status}, but the rounded solution left sequences out", None)
    spans = [sum(float(problem.times[i, s]) for i in seqs) for s, seqs in out_groups if seqs]
    packed = PackedMicroBatch(tuple(int(m) for m in members), tuple(out_groups), max(spans) if spans else 0.0)
    return MilpResult(packed, status, float(span.value() or 0.0))
