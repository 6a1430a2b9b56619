"""The per-step sequence-parallel planner: `plan_step(lengths, num_ranks, cost_model)`."""
from parallel.planner.problem import PlanningProblem, build_problem
from parallel.planner.step import plan_step

__all__ = ["PlanningProblem", "build_problem", "plan_step"]
