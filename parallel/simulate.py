"""Iteration time of any plan under the cost model, the lower bound, and the baseline policies
(all under the same cost model and memory cap):

- static: one SP degree for every batch (sized for the longest allowed sequence), best-fit-decreasing
  packing of sequences into groups by memory, groups dealt into micro-batches;
- batch-adaptive: one degree per batch (FlexSP-BatchAda), the best over degrees, packed by our packer;
- per-sequence: each sequence on ceil_pow2(L / C) ranks (Megatron dynamic-CP-like), groups packed by
  our packer (longest first, LPT); a stronger baseline than plain LPT;
- milp: FlexSP's own procedure with a long time limit: contiguous micro-batches by the partition DP,
  one MILP per micro-batch, warm-started from the best homogeneous plan of that micro-batch (which is
  also kept if the MILP ends worse).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from parallel.cost_model import CostModel
from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
from parallel.planner import milp
from parallel.planner.fast_path import contiguous_split, fast_plan, pack
from parallel.planner.problem import build_problem, group_sizes
from parallel.planner.step import plan_step, to_micro_batch_plan
from pretrain.errors import HetronError


def iteration_time_ms(plan: SequenceParallelPlan, lengths: Sequence[int], cost_model: CostModel) -> float:
    return plan.time_ms(lengths, cost_model)


def lower_bound_ms(lengths: Sequence[int], num_ranks: int, cost_model: CostModel) -> float:
    return build_problem(lengths, num_ranks, cost_model).lower_bound_ms()


def static_plan(lengths: Sequence[int], num_ranks: int, cost_model: CostModel, degree: int) -> SequenceParallelPlan:
    start = time.perf_counter()
    degree = min(degree, num_ranks)
    limit = degree * cost_model.capacity_tokens
    too_long = [i for i, length in enumerate(lengths) if length > limit]
    if too_long:
        i = too_long[0]
        raise HetronError(f"static SP at degree {degree}: sequence {i} of length {lengths[i]} exceeds {limit} tokens")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (free[b], b))
        else:
            bins.append([])
            free.append(limit)
            b = len(bins) - 1
        bins[b].append(i)
        free[b] -= lengths[i]
    times = [cost_model.group_time_ms((lengths[i] for i in seqs), degree) for seqs in bins]
    order = sorted(range(len(bins)), key=lambda b: (-times[b], b))
    per_mb = num_ranks // degree
    micro_batches = []
    for first in range(0, len(order), per_mb):
        groups = [SPGroup(k * degree, degree, tuple(sorted(bins[b]))) for k, b in enumerate(order[first:first + per_mb])]
        start_rank = len(groups) * degree
        while start_rank < num_ranks:
            groups.append(SPGroup(start_rank, degree, ()))
            start_rank += degree
        micro_batches.append(MicroBatchPlan(tuple(groups)))
    plan = SequenceParallelPlan(num_ranks, tuple(micro_batches), 0.0, 0.0, f"static d={degree}")
    predicted = plan.time_ms(lengths, cost_model)
    return SequenceParallelPlan(num_ranks, plan.micro_batches, predicted, 1000 * (time.perf_counter() - start),
                                plan.solver_status)


def batch_adaptive_plan(lengths: Sequence[int], num_ranks: int, cost_model: CostModel) -> SequenceParallelPlan:
    start = time.perf_counter()
    need = max(cost_model.min_sp(length) for length in lengths)
    best = None
    for d in group_sizes(num_ranks, None):
        if d < need:
            continue
        plan = plan_step(lengths, num_ranks, cost_model, solver="none", allowed_sizes=[d])
        if best is None or plan.predicted_ms < best.predicted_ms:
            best = plan
    if best is None:
        raise HetronError(f"batch-adaptive: a sequence needs {need} ranks, more than {num_ranks}")
    return SequenceParallelPlan(num_ranks, best.micro_batches, best.predicted_ms,
                                1000 * (time.perf_counter() - start), f"batch-adaptive {best.micro_batches[0].groups[0].size}")


def per_sequence_plan(lengths: Sequence[int], num_ranks: int, cost_model: CostModel) -> SequenceParallelPlan:
    start = time.perf_counter()
    problem = build_problem(lengths, num_ranks, cost_model, fixed_degree=True)
    plan = fast_plan(problem)
    return SequenceParallelPlan(num_ranks, tuple(to_micro_batch_plan(problem, mb) for mb in plan.micro_batches),
                                plan.total_ms, 1000 * (time.perf_counter() - start), "per-sequence ceil_pow2")


def homogeneous_pack(problem, members: np.ndarray):
    """Best single-degree packing of one micro-batch (FlexSP's warm start), or None."""
    best = None
    for s in range(int(problem.lo[members].max()), len(problem.sizes)):
        restricted = problem.__class__(**{**problem.__dict__, "lo": np.full_like(problem.lo, s),
                                          "hi": np.full_like(problem.hi, s)})
        mb = pack(restricted, members)
        if mb is not None and (best is None or mb.span_ms < best.span_ms):
            best = mb
    return best


def milp_plan(lengths: Sequence[int], num_ranks: int, cost_model: CostModel, *, time_limit_s: float = 10.0,
              extra_micro_batches: int = 1, solver: str = "highs") -> SequenceParallelPlan:
    start = time.perf_counter()
    problem = build_problem(lengths, num_ranks, cost_model)
    order = np.asarray(sorted(range(problem.size), key=lambda i: (int(problem.lengths[i]), i)), dtype=np.int64)
    first = problem.min_micro_batches()
    best, best_total, statuses = None, float("inf"), []
    for m in range(first, min(first + extra_micro_batches, problem.size) + 1):
        packed, status = [], []
        for chunk in contiguous_split(problem, order, m):
            warm = homogeneous_pack(problem, chunk)
            result = milp.solve_micro_batch(problem, chunk, cost_model, time_limit_s=time_limit_s, solver=solver,
                                            warm_start=warm)
            status.append(result.status)
            options = [mb for mb in (warm, result.micro_batch) if mb is not None]
            if not options:
                break
            packed.append(min(options, key=lambda mb: mb.span_ms))
        else:
            total = sum(mb.span_ms + problem.beta for mb in packed)
            if total < best_total:
                best, best_total, statuses = packed, total, status
    if best is None:
        raise HetronError("milp baseline: no feasible plan (memory) for any micro-batch count tried")
    return SequenceParallelPlan(num_ranks, tuple(to_micro_batch_plan(problem, mb) for mb in best), best_total,
                                1000 * (time.perf_counter() - start), "milp: " + ", ".join(statuses))
