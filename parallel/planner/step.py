"""plan_step: the per-step planner. The fast path gives a plan at once; if time is left in the hard
budget and the plan is not already within `gap_tolerance` of its bound, the MILP re-solves the
micro-batch with the largest gap in a worker thread, and its result is kept only if it is better.
The caller never waits past the budget: a slow, failed or busy solver leaves the fast plan in place
and the reason in `solver_status` (and the log)."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from parallel.cost_model import CostModel
from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
from parallel.planner import milp
from parallel.planner.fast_path import FastPlan, PackedMicroBatch, fast_plan
from parallel.planner.problem import PlanningProblem, build_problem

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_S = 0.05
MIN_SOLVER_TIME_S = 0.01  # below this HiGHS cannot even load the model; don't start it
# pulp spends ~0.1 ms per variable building the model before HiGHS starts (measured on a 2-core
# machine: 2,000 variables, 180 ms); a solve that cannot even be built in time is not started.
BUILD_S_PER_VARIABLE = 1e-4
_solver_pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hetron-milp")
_solver_busy = threading.Lock()


def to_micro_batch_plan(problem: PlanningProblem, packed: PackedMicroBatch) -> MicroBatchPlan:
    """Idle ranks become empty groups; all groups are laid out largest first from rank 0, so with N a
    power of two each starts at a multiple of its size and groups <= 8 stay inside a node."""
    contents = [(problem.sizes[size_idx], tuple(sorted(int(problem.index[m]) for m in members)))
                for size_idx, members in packed.groups]
    spare = problem.num_ranks - sum(size for size, _ in contents)
    while spare:
        size = 1 << (spare.bit_length() - 1)
        contents.append((size, ()))
        spare -= size
    groups, start = [], 0
    for g in sorted(range(len(contents)), key=lambda g: (-contents[g][0], g)):
        size, sequences = contents[g]
        groups.append(SPGroup(start, size, sequences))
        start += size
    return MicroBatchPlan(tuple(groups))


def micro_batch_floor_ms(problem: PlanningProblem, packed: PackedMicroBatch) -> float:
    return problem.work_floor_ms(np.asarray(packed.members, dtype=np.int64))


def _run_solver(problem, members, cost_model, deadline, solver):
    try:
        return milp.solve_micro_batch(problem, members, cost_model, time_limit_s=deadline - time.perf_counter(),
                                      solver=solver, deadline=deadline)
    finally:
        _solver_busy.release()


def improve_with_solver(problem: PlanningProblem, plan: FastPlan, cost_model: CostModel, *, deadline: float,
                        solver: str, gap_tolerance: float) -> tuple[FastPlan, str]:
    if not plan.micro_batches:
        return plan, "empty batch"
    gaps = [mb.span_ms - micro_batch_floor_ms(problem, mb) for mb in plan.micro_batches]
    worst = max(range(len(gaps)), key=lambda k: (gaps[k], -k))
    if gaps[worst] <= gap_tolerance * plan.total_ms:
        return plan, f"greedy: every micro-batch within {100 * gap_tolerance:g}% of its floor, solver not needed"
    left = deadline - time.perf_counter()
    members = plan.micro_batches[worst].members
    variables = milp.variable_count(problem, members)
    if left < MIN_SOLVER_TIME_S + variables * BUILD_S_PER_VARIABLE:
        return plan, (f"greedy: {1000 * max(left, 0):.0f} ms left in the budget, too little to build a "
                      f"{variables}-variable MILP")
    if not _solver_busy.acquire(blocking=False):
        return plan, "greedy: solver still busy with an earlier step"
    try:
        future = _solver_pool.submit(_run_solver, problem, members, cost_model, deadline, solver)
    except RuntimeError as exc:  # pool shut down at interpreter exit
        _solver_busy.release()
        return plan, f"greedy: solver could not start ({exc})"
    try:
        result = future.result(timeout=max(0.0, deadline - time.perf_counter()))
    except cf.TimeoutError:
        return plan, f"greedy: solver ({solver}) hit the {1000 * left:.0f} ms budget"
    except Exception as exc:  # noqa: BLE001 - any solver failure leaves the fast plan
        return plan, f"greedy: solver ({solver}) failed: {type(exc).__name__}: {exc}"
    if result.micro_batch is None:
        return plan, f"greedy: solver ({solver}) {result.status}"
    old = plan.micro_batches[worst]
    if result.micro_batch.span_ms >= old.span_ms * (1 - 1e-9):  # float noise is not an improvement
        return plan, f"greedy: solver ({solver}, {result.status}) found no better plan"
    micro_batches = list(plan.micro_batches)
    micro_batches[worst] = result.micro_batch
    total = sum(mb.span_ms + problem.beta for mb in micro_batches)
    status = (f"milp ({solver}, {result.status}): micro-batch {worst} {old.span_ms:.1f} -> "
              f"{result.micro_batch.span_ms:.1f} ms")
    return FastPlan(tuple(micro_batches), total, plan.split), status


def plan_step(lengths: Sequence[int], num_ranks: int, cost_model: CostModel, *,
              time_budget_s: float = DEFAULT_TIME_BUDGET_S, solver: str = "highs",
              drop_oversized: bool = False, allowed_sizes: Sequence[int] | None = None,
              gap_tolerance: float = 0.01) -> SequenceParallelPlan:
    """Plan one global batch on num_ranks data-parallel ranks. solver: "highs", "cbc" or "none"
    (fast path only: then the plan depends on the input alone, never on timing). With a solver the
    plan is the same on every rank unless the solver finished on some ranks and not on others
    within the budget; `solver_status` says what happened, so a runtime that must agree should
    plan on one rank and broadcast."""
    if solver not in ("highs", "cbc", "none"):
        raise ValueError(f"unknown solver {solver!r}; one of: highs, cbc, none")
    start = time.perf_counter()
    deadline = start + time_budget_s
    problem = build_problem(lengths, num_ranks, cost_model, allowed_sizes=allowed_sizes,
                            drop_oversized=drop_oversized)
    plan = fast_plan(problem)
    status = f"greedy ({plan.split})"
    if solver != "none":
        plan, status = improve_with_solver(problem, plan, cost_model, deadline=deadline, solver=solver,
                                           gap_tolerance=gap_tolerance)
        if not status.startswith("milp"):
            log.info("plan_step: %s", status)
    if problem.dropped:
        status += f"; dropped {len(problem.dropped)} oversized sequence(s)"
        log.warning("plan_step: dropped %d sequence(s) longer than %d ranks can hold: %s", len(problem.dropped),
                    problem.sizes[-1], list(problem.dropped)[:10])
    return SequenceParallelPlan(
        num_ranks=num_ranks,
        micro_batches=tuple(to_micro_batch_plan(problem, mb) for mb in plan.micro_batches),
        predicted_ms=plan.total_ms,
        solve_ms=1000 * (time.perf_counter() - start),
        solver_status=status,
        dropped=problem.dropped,
    )
