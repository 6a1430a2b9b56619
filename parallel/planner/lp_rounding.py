"""LP rounding: the batch bound's model (`batch_bound`) is solved anyway, and its solution says which
micro-batch each sequence runs in. Packing those micro-batches with the greedy packer turns the
solution into a plan; where it is faster than the greedy's own split it becomes the plan the split
search and the per-micro-batch MILPs start from. FlexSP's micro-batch counts from the memory minimum
to +3 come with the bound (one model per count)."""
from __future__ import annotations

import time

import numpy as np

from parallel.planner.fast_path import FastPlan, pack_split, polish
from parallel.planner.problem import PlanningProblem


def plan_of_split(problem: PlanningProblem, split: list[np.ndarray]) -> FastPlan | None:
    """The split's micro-batches packed and polished, or None if one of them cannot be packed (the
    model's memory rows count tokens per group size, not per group, so a rounded split may not fit)."""
    plan = pack_split(problem, split, "lp-rounding")
    return None if plan is None else polish(problem, plan)


def round_bound_splits(problem: PlanningProblem, splits, incumbent: FastPlan,
                       deadline: float | None = None) -> FastPlan | None:
    """The fastest plan among the bound's splits (best objective first) if it beats `incumbent`;
    stops trying at the deadline (a time.perf_counter() value)."""
    best = None
    for _, split in splits:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        plan = plan_of_split(problem, split)
        if plan is not None and plan.total_ms < (best or incumbent).total_ms * (1 - 1e-9):
            best = plan
    return best
