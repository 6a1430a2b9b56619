"""plan_step: the per-step planner. The greedy fast path gives a plan at once. Then, in a worker
thread and within the hard budget, a model of the whole batch (micro-batch assignment x group sizes,
a small MILP on HiGHS, its LP relaxation otherwise) gives a lower bound on every plan
(`batch_bound`) and, rounded, a micro-batch split that is packed and kept where it is faster
(`lp_rounding`); a local search moves long sequences between micro-batches (`split_search`),
and a MILP re-solves the micro-batches furthest from their floors exactly
(small ones: FlexSP's MILP with a bucket per sequence; large ones: a re-pack of their busiest groups,
`repack_milp`), warm-started from the greedy's packing; a MILP result is kept only where it is faster. The caller
never waits past the budget: what the worker has finished by then is used, a late solver is named
in `solver_status` and flagged (`SequenceParallelPlan.late`), and the greedy plan stands for the rest."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from parallel.cost_model import CostModel
from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
from parallel.planner import milp, repack_milp, solvers
from parallel.planner.batch_bound import batch_lower_bound
from parallel.planner.fast_path import FastPlan, PackedMicroBatch, fast_plan
from parallel.planner.lp_rounding import round_bound_splits
from parallel.planner.problem import PlanningProblem, build_problem
from parallel.planner.split_search import search_splits

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_S = 0.05
MIN_SOLVER_TIME_S = 0.005  # a MILP with less than this left is not started
LP_SHARE = 0.6  # of the budget, at most, for the batch's LP bound
SEARCH_SHARE = 0.5  # of what the bound left, for the split search; the MILPs get the rest
EXACT_MAX_MEMBERS = 48  # micro-batches this small get the exact MILP (group sizes free), larger a re-pack
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


@dataclass
class SolverProgress:
    """What the worker has finished so far; the caller reads it at the deadline."""
    bound_ms: float | None = None
    bound_status: str = ""
    solvers_used: set = field(default_factory=set)
    improved: dict = field(default_factory=dict)  # micro-batch index (of `base`) -> PackedMicroBatch
    base: FastPlan | None = None  # the split the MILPs work on: the greedy's, LP rounding's or the split search's
    base_method: str = "greedy"  # who made `base`: "lp-rounding" or "split-search"
    milp_ran: int = 0
    milp_statuses: list = field(default_factory=list)
    stage: str = "starting"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> tuple[float | None, str, dict, int, list, set, str, FastPlan | None, str]:
        with self.lock:
            return (self.bound_ms, self.bound_status, dict(self.improved), self.milp_ran, list(self.milp_statuses),
                    set(self.solvers_used), self.stage, self.base, self.base_method)


def solve_in_shadow(problem: PlanningProblem, plan: FastPlan, cost_model: CostModel, deadline: float, solver: str,
                    gap_tolerance: float, progress: SolverProgress) -> None:
    """The worker: the batch bound and its rounded splits (`batch_bound`, `lp_rounding`), then the
    split search (`split_search`), then the MILP on each micro-batch that is more than gap_tolerance
    above its floor, largest gap first, until the deadline."""
    progress.stage = "batch bound"
    # the bound may use up to LP_SHARE of the budget; the MILP gets the rest
    lp_deadline = time.perf_counter() + LP_SHARE * (deadline - time.perf_counter())
    bound = batch_lower_bound(problem, plan.total_ms, solver=solver, deadline=lp_deadline)
    with progress.lock:
        progress.bound_ms, progress.bound_status = bound.bound_ms, bound.status
        if bound.solver:
            progress.solvers_used.add(bound.solver)
    progress.stage = "lp rounding"
    rounded = round_bound_splits(problem, bound.splits, plan, deadline)
    if rounded is not None:
        plan = rounded
        with progress.lock:
            progress.base, progress.base_method = plan, "lp-rounding"
    progress.stage = "split search"
    searched = search_splits(problem, plan, time.perf_counter() + SEARCH_SHARE * (deadline - time.perf_counter()))
    if searched is not None:
        plan = searched
        with progress.lock:
            progress.base, progress.base_method = plan, "split-search"
    gaps = [mb.span_ms - micro_batch_floor_ms(problem, mb) for mb in plan.micro_batches]
    order = [k for k in sorted(range(len(gaps)), key=lambda k: (-gaps[k], k))
             if gaps[k] > gap_tolerance * plan.micro_batches[k].span_ms]
    progress.stage = "done"  # unless a MILP is left out for want of time (below)
    for n, k in enumerate(order):
        left = deadline - time.perf_counter()
        if left < MIN_SOLVER_TIME_S:
            with progress.lock:
                progress.milp_statuses.append("not started: budget used up")
            break
        progress.stage = f"milp on micro-batch {k}"
        # an equal share of what is left for each micro-batch still to do (time saved carries over)
        share = time.perf_counter() + left / (len(order) - n)
        old = plan.micro_batches[k]
        ran, status, used, better = improve_micro_batch(problem, old, cost_model, solver, share)
        with progress.lock:
            progress.milp_ran += int(ran)
            progress.milp_statuses.append(status)
            if ran:
                progress.solvers_used.add(used)
            if better is not None:
                progress.improved[k] = better
        progress.stage = "done"


def improve_micro_batch(problem: PlanningProblem, old: PackedMicroBatch, cost_model: CostModel, solver: str,
                        deadline: float) -> tuple[bool, str, str, PackedMicroBatch | None]:
    """(a MILP ran, its status, the solver, the faster micro-batch or None). A micro-batch of at most
    EXACT_MAX_MEMBERS sequences gets FlexSP's MILP with one bucket per sequence (exact, group sizes
    chosen anew); a larger one the re-pack of its busiest groups (`repack_milp`). Both start from
    the greedy's packing."""
    if len(old.members) <= EXACT_MAX_MEMBERS:
        result = milp.solve_micro_batch(problem, old.members, cost_model, time_limit_s=deadline - time.perf_counter(),
                                        solver=solver, max_buckets=len(old.members), deadline=deadline,
                                        warm_start=old)
        better = result.micro_batch
        ran = not result.status.startswith("not started")
        if better is None or better.span_ms >= old.span_ms * (1 - 1e-9):  # float noise is no improvement
            better = None
        return ran, result.status, result.solver, better
    result = repack_milp.repack(problem, old, solver=solver, deadline=deadline)
    return result.rounds > 0, result.status, result.solver, result.micro_batch if result.improved else None


def wait_for_solver(timeout_s: float) -> bool:
    """Block until the solver worker of an earlier plan_step has finished (True) or timeout_s passed.
    The trainer never calls this (a step does not wait on a plan); a benchmark that plans batches
    back to back uses it to stand in for the step that runs between two plans."""
    if not _solver_busy.acquire(timeout=timeout_s):
        return False
    _solver_busy.release()
    return True


def _run_worker(*args):
    try:
        solve_in_shadow(*args)
    finally:
        _solver_busy.release()


@dataclass(frozen=True)
class SolverOutcome:
    plan: FastPlan
    bound_ms: float
    method: str  # "greedy", "lp-rounding", "split-search" or "milp": who made the plan's last improvement
    status: str
    late: bool
    milp_ran: int
    milp_improved: int


def improve_with_solver(problem: PlanningProblem, plan: FastPlan, cost_model: CostModel, *, deadline: float,
                        solver: str, gap_tolerance: float) -> SolverOutcome:
    floor = problem.lower_bound_ms()
    if not plan.micro_batches:
        return SolverOutcome(plan, 0.0, "greedy", "empty batch", False, 0, 0)
    if not _solver_busy.acquire(blocking=False):
        return SolverOutcome(plan, floor, "greedy", "greedy: solver still busy with an earlier step", True, 0, 0)
    progress = SolverProgress()
    try:
        future = _solver_pool.submit(_run_worker, problem, plan, cost_model, deadline, solver, gap_tolerance,
                                     progress)
    except RuntimeError as exc:  # pool shut down at interpreter exit
        _solver_busy.release()
        return SolverOutcome(plan, floor, "greedy", f"greedy: solver could not start ({exc})", False, 0, 0)
    late, failure, greedy_ms = False, "", plan.total_ms
    try:
        future.result(timeout=max(0.0, deadline - time.perf_counter()))
    except cf.TimeoutError:
        late = True
    except Exception as exc:  # noqa: BLE001 - any solver failure leaves the greedy plan
        failure = f"{type(exc).__name__}: {exc}"
    bound, bound_status, improved, ran, statuses, used, stage, base, base_method = progress.snapshot()
    if base is not None:
        plan = base
    skipped = [s for s in statuses if s.startswith("not started")]
    statuses = [s for s in statuses if not s.startswith("not started")]
    names = "+".join(sorted(used)) or solver
    micro_batches = list(plan.micro_batches)
    for k, mb in improved.items():
        micro_batches[k] = mb
    total = sum(mb.span_ms + problem.beta for mb in micro_batches)
    method = "milp" if improved else base_method if base is not None else "greedy"
    parts = []
    if bound is None:
        parts.append("no batch bound (the work floor stands)")
    else:
        parts.append(f"batch bound {bound:.1f} ms ({bound_status})")
    if base is not None:
        parts.append(f"micro-batches re-split (last by {base_method}): {greedy_ms:.1f} -> {plan.total_ms:.1f} ms")
    if ran:
        worded = ", ".join(f"{n} {s}" for s, n in Counter(statuses).items())
        parts.append(f"milp ran on {ran} micro-batch(es) [{worded}], improved {len(improved)}")
    if skipped:
        parts.append("milp not started on the next micro-batch: budget used up")
    elif not ran and not late and not failure:
        parts.append(f"milp not needed (every micro-batch within {100 * gap_tolerance:g}% of its floor)")
    if late:
        parts.append(f"solver late: budget ended during {stage}")
    if failure:
        parts.append(f"solver failed: {failure}")
    status = f"{method} ({names}): " + "; ".join(parts)
    kept = FastPlan(tuple(micro_batches), total, plan.split) if improved else plan
    return SolverOutcome(kept, max(floor, bound if bound is not None else floor), method, status, late, ran,
                         len(improved))


def plan_step(lengths: Sequence[int], num_ranks: int, cost_model: CostModel, *,
              time_budget_s: float = DEFAULT_TIME_BUDGET_S, solver: str = "highs",
              drop_oversized: bool = False, allowed_sizes: Sequence[int] | None = None,
              gap_tolerance: float = 0.01) -> SequenceParallelPlan:
    """Plan one global batch on num_ranks data-parallel ranks. solver: "highs" (CBC through pulp if
    highspy is missing), "cbc", or "none" (fast path only, bound = the work floor: then the plan
    depends on the input alone, never on timing). With a solver the plan depends on how far the
    solver got within the budget, so a runtime that must agree plans on one rank and broadcasts."""
    if solver not in ("highs", "cbc", "none"):
        raise ValueError(f"unknown solver {solver!r}; one of: highs, cbc, none")
    start = time.perf_counter()
    deadline = start + time_budget_s
    problem = build_problem(lengths, num_ranks, cost_model, allowed_sizes=allowed_sizes,
                            drop_oversized=drop_oversized)
    plan = fast_plan(problem)
    if solver == "none":
        outcome = SolverOutcome(plan, problem.lower_bound_ms(), "greedy", f"greedy ({plan.split})", False, 0, 0)
    else:
        if solver == "highs" and not solvers.available("highs"):
            log.warning("plan_step: highspy is not installed; the planner's LP/MILP runs on CBC through pulp")
        outcome = improve_with_solver(problem, plan, cost_model, deadline=deadline, solver=solver,
                                      gap_tolerance=gap_tolerance)
        if outcome.late:
            log.info("plan_step: %s", outcome.status)
    status = outcome.status
    if problem.dropped:
        status += f"; dropped {len(problem.dropped)} oversized sequence(s)"
        log.warning("plan_step: dropped %d sequence(s) longer than %d ranks can hold: %s", len(problem.dropped),
                    problem.sizes[-1], list(problem.dropped)[:10])
    return SequenceParallelPlan(
        num_ranks=num_ranks,
        micro_batches=tuple(to_micro_batch_plan(problem, mb) for mb in outcome.plan.micro_batches),
        predicted_ms=outcome.plan.total_ms,
        solve_ms=1000 * (time.perf_counter() - start),
        solver_status=status,
        dropped=problem.dropped,
        bound_ms=outcome.bound_ms,
        method=outcome.method,
        late=outcome.late,
        milp_ran=outcome.milp_ran,
        milp_improved=outcome.milp_improved,
    )
