"""Solve a `LinearModel`: HiGHS through highspy's array interface (`Highs.passModel`, no per-variable
objects), or CBC through pulp as the fallback. `solve` returns a `SolveResult` that names the solver
that ran and says how it ended; it never raises for a solver's failure to find a solution."""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from parallel.planner.linear_model import LinearModel

try:
    import highspy
except ImportError:  # CBC through pulp is the fallback
    highspy = None

SOLVERS = ("highs", "cbc")


@dataclass(frozen=True)
class SolveResult:
    solver: str  # which solver ran: "highs" or "cbc"
    status: str  # optimal, feasible (stopped by time limit), infeasible, no solution found, ...
    x: np.ndarray | None  # column values, None without a feasible solution
    objective: float | None
    dual_bound: float | None  # no solution of the model is below this (the optimum of an LP)

    @property
    def has_solution(self) -> bool:
        return self.x is not None


def _swallow_highs_banner() -> None:
    """HiGHS prints a two-line banner to fd 1 the first time a model is created in a process,
    whatever output_flag says. Create one at import, with fd 1 pointed at /dev/null, so plans and
    tables are not interleaved with it later (from the solver thread)."""
    if highspy is None:
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


def available(solver: str) -> bool:
    return solver == "cbc" or (solver == "highs" and highspy is not None)


def solve(model: LinearModel, solver: str, time_limit_s: float, *, warm_start: np.ndarray | None = None,
          relax: bool = False, relative_gap: float | None = None) -> SolveResult:
    """relax: drop integrality (the LP relaxation). warm_start: a full column vector handed to the
    solver as its first incumbent (ignored by the solver if infeasible). relative_gap: a MILP stops
    once its incumbent is within this of its dual bound (HiGHS's default 1e-4 when None)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; one of: {', '.join(SOLVERS)}")
    limit = max(0.001, float(time_limit_s))
    if solver == "highs" and highspy is not None:
        return _solve_highs(model, limit, warm_start, relax, relative_gap)
    return _solve_cbc(model, limit, warm_start, relax, relative_gap)


def _solve_highs(model: LinearModel, limit: float, warm_start, relax: bool, relative_gap) -> SolveResult:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", limit)
    h.setOptionValue("threads", 1)
    if relative_gap is not None:
        h.setOptionValue("mip_rel_gap", float(relative_gap))
    integrality = (np.zeros(model.num_cols, dtype=np.int32) if relax else model.integer.astype(np.int32))
    status = h.passModel(model.num_cols, model.num_rows, len(model.value), int(highspy.MatrixFormat.kRowwise),
                         int(highspy.ObjSense.kMinimize), 0.0, model.cost, model.col_lower, model.col_upper,
                         model.row_lower, model.row_upper, model.start[:-1], model.index, model.value, integrality)
    if status == highspy.HighsStatus.kError:
        return SolveResult("highs", "model rejected by HiGHS", None, None, None)
    if warm_start is not None and not relax:
        h.setSolution(model.num_cols, np.arange(model.num_cols, dtype=np.int32), np.asarray(warm_start, dtype=np.float64))
    h.run()
    model_status = h.getModelStatus()
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value, dtype=np.float64) if has_solution else None
    objective = float(info.objective_function_value) if has_solution else None
    if model_status == highspy.HighsModelStatus.kOptimal:
        word = "optimal"
        bound = objective if relax or model.integer.sum() == 0 else float(info.mip_dual_bound)
    elif model_status == highspy.HighsModelStatus.kInfeasible:
        word, bound = "infeasible", None
    elif model_status == highspy.HighsModelStatus.kTimeLimit:
        word = "feasible (stopped by time limit)" if has_solution else "no solution found (time limit)"
        bound = None if relax else float(info.mip_dual_bound)
    else:
        word, bound = h.modelStatusToString(model_status).lower(), None
    if bound is not None and not np.isfinite(bound):
        bound = None
    return SolveResult("highs", word, x, objective, bound)


def pulp_problem(model: LinearModel, relax: bool = False, warm_start=None):
    """The model as a pulp LpProblem (one Python object per variable and row: the slow way to build
    it, kept for CBC), and its variables in column order."""
    import pulp

    prob = pulp.LpProblem("hetron_planner", pulp.LpMinimize)
    cat = [("Continuous" if relax or not model.integer[j] else "Integer") for j in range(model.num_cols)]
    xs = [prob.add_variable(f"x{j}", lowBound=model.col_lower[j] if np.isfinite(model.col_lower[j]) else None,
                          upBound=model.col_upper[j] if np.isfinite(model.col_upper[j]) else None, cat=cat[j])
          for j in range(model.num_cols)]
    prob += pulp.LpAffineExpression([(xs[j], c) for j, c in enumerate(model.cost) if c != 0])
    for r in range(model.num_rows):
        a, b = model.start[r], model.start[r + 1]
        expr = pulp.LpAffineExpression([(xs[j], v) for j, v in zip(model.index[a:b].tolist(), model.value[a:b].tolist())])
        lo, hi = model.row_lower[r], model.row_upper[r]
        if lo == hi:
            prob += expr == lo
        else:
            if np.isfinite(lo):
                prob += expr >= lo
            if np.isfinite(hi):
                prob += expr <= hi
    if warm_start is not None and not relax:
        for var, value in zip(xs, np.asarray(warm_start).tolist()):
            var.setInitialValue(value)
    return prob, xs


def _solve_cbc(model: LinearModel, limit: float, warm_start, relax: bool, relative_gap) -> SolveResult:
    import pulp

    prob, xs = pulp_problem(model, relax, warm_start)
    with warnings.catch_warnings():  # pulp 3.3 deprecates the bundled CBC for 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, threads=1, warmStart=warm_start is not None and not relax,
                                gapRel=relative_gap)
    prob.solve(cmd)
    # pulp reports status "Optimal" when the time limit stopped CBC with a solution: read sol_status
    word = {1: "optimal", 2: "feasible (stopped by time limit)", 0: "no solution found", -1: "infeasible",
            -2: "unbounded", -3: "undefined"}.get(prob.sol_status, str(prob.sol_status))
    if prob.sol_status not in (1, 2):
        return SolveResult("cbc", word, None, None, None)
    x = np.asarray([v.value() or 0.0 for v in xs], dtype=np.float64)
    objective = float(model.cost @ x)
    # "optimal" within a relative gap g: the optimum is at least (1 - g) times the solution's value
    bound = objective * (1 - (relative_gap or 0.0)) if prob.sol_status == 1 and not relax else objective
    return SolveResult("cbc", word, x, objective, bound if prob.sol_status == 1 else None)
