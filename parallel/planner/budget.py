"""The planner's time budget per step. Planning runs one step ahead, in the shadow of the step being
trained, so a long step buys a better plan: the budget is a fraction of the last measured step,
within a floor and a cap. Before any step has been measured the floor is used."""
from __future__ import annotations

DEFAULT_FRACTION = 0.5
DEFAULT_MIN_S = 0.05
DEFAULT_MAX_S = 5.0


def step_budget_s(last_step_s: float | None, *, fraction: float = DEFAULT_FRACTION, min_s: float = DEFAULT_MIN_S,
                  max_s: float = DEFAULT_MAX_S) -> float:
    if last_step_s is None or not last_step_s > 0:
        return min_s
    return min(max_s, max(min_s, fraction * last_step_s))
