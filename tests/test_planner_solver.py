"""The MILP phase of plan_step: a real solve improves or is refused honestly; timeout, failure, busy
and no-solution paths return the fast plan with the reason; the MILP itself gives valid micro-batches."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel.cost_model import CostModel
from parallel.planner import build_problem, milp, plan_step, step
from parallel.planner.fast_path import fast_plan

CM = CostModel.preset("7b")
BATCH = [200, 300, 900, 1500, 2500, 4000, 7000, 9000, 13000, 20000, 30000, 400, 650, 800]
# one micro-batch on which the exact MILP beats the greedy packer (found by search, seed 1)
IMPROVABLE = [7381, 1157, 53, 2053, 5494, 5871, 959, 924, 12309, 1587, 1481, 680, 3316]


@pytest.fixture
def force_solver(monkeypatch):
    """Make plan_step try its solver whatever the gap and the model size."""
    monkeypatch.setattr(step, "BUILD_S_PER_VARIABLE", 0.0)


def fast_only(lengths, ranks):
    return plan_step(lengths, ranks, CM, solver="none")


@pytest.mark.parametrize("solver", ["highs", "cbc"])
def test_real_solver_improves_the_greedy_plan(force_solver, solver):
    plan = plan_step(IMPROVABLE, 8, CM, time_budget_s=30.0, solver=solver, gap_tolerance=-1.0)
    plan.validate(IMPROVABLE, CM)
    assert plan.solver_status.startswith(f"milp ({solver}, optimal)")
    assert plan.time_ms(IMPROVABLE, CM) < fast_only(IMPROVABLE, 8).time_ms(IMPROVABLE, CM) - 1.0


@pytest.mark.parametrize("solver", ["highs", "cbc"])
def test_real_solver_result_is_kept_only_if_better(force_solver, solver):
    plan = plan_step(BATCH, 8, CM, time_budget_s=5.0, solver=solver, gap_tolerance=-1.0)
    plan.validate(BATCH, CM)
    fast = fast_only(BATCH, 8)
    assert plan.solver_status.startswith(("milp", "greedy: solver"))
    assert plan.time_ms(BATCH, CM) <= fast.time_ms(BATCH, CM) + 1e-9
    if plan.solver_status.startswith("milp"):
        assert plan.time_ms(BATCH, CM) < fast.time_ms(BATCH, CM)
    else:
        assert plan.micro_batches == fast.micro_batches


def test_timeout_returns_the_fast_plan_without_waiting(force_solver, monkeypatch):
    release = threading.Event()
    finished = threading.Event()

    def stuck_solver(*args, **kwargs):
        release.wait(timeout=30)
        finished.set()
        return milp.MilpResult(None, "never", None)

    monkeypatch.setattr(milp, "solve_micro_batch", stuck_solver)
    plan = plan_step(BATCH, 8, CM, time_budget_s=0.2, gap_tolerance=-1.0)
    assert not finished.is_set()  # plan_step came back while the solver was still stuck
    assert "hit the" in plan.solver_status and "budget" in plan.solver_status
    assert plan.micro_batches == fast_only(BATCH, 8).micro_batches
    busy = plan_step(BATCH, 8, CM, time_budget_s=0.2, gap_tolerance=-1.0)
    assert "busy" in busy.solver_status and busy.micro_batches == plan.micro_batches
    release.set()
    assert finished.wait(timeout=30)


def test_solver_failure_returns_the_fast_plan(force_solver, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(milp, "solve_micro_batch", broken)
    plan = plan_step(BATCH, 8, CM, time_budget_s=2.0, gap_tolerance=-1.0)
    assert "failed: RuntimeError: solver exploded" in plan.solver_status
    assert plan.micro_batches == fast_only(BATCH, 8).micro_batches
    # the busy flag was released: the next step may use the solver again
    again = plan_step(BATCH, 8, CM, time_budget_s=2.0, gap_tolerance=-1.0)
    assert "busy" not in again.solver_status


def test_solver_without_solution_returns_the_fast_plan(force_solver, monkeypatch):
    monkeypatch.setattr(milp, "solve_micro_batch", lambda *a, **k: milp.MilpResult(None, "infeasible", None))
    plan = plan_step(BATCH, 8, CM, time_budget_s=2.0, gap_tolerance=-1.0)
    assert plan.solver_status == "greedy: solver (highs) infeasible"


def test_small_budget_does_not_start_a_big_milp():
    plan = plan_step(BATCH * 20, 64, CM, time_budget_s=0.03, gap_tolerance=-1.0)
    assert "too little to build" in plan.solver_status or "within" in plan.solver_status


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(100, 40000), min_size=2, max_size=25), st.sampled_from([4, 8, 16]))
def test_milp_micro_batch_is_valid_and_its_padded_objective_bounds_it(lengths, ranks):
    lengths = [min(x, ranks * CM.capacity_tokens) for x in lengths]
    problem = build_problem(lengths, ranks, CM)
    if int(problem.lengths.sum()) > ranks * CM.capacity_tokens:
        return
    members = np.arange(problem.size)
    result = milp.solve_micro_batch(problem, members, CM, time_limit_s=2.0, max_buckets=4)
    if result.micro_batch is None:
        assert result.status in ("infeasible", "no solution found", "not solved")
        return
    mb = result.micro_batch
    assert sorted(i for _, seqs in mb.groups for i in seqs) == list(range(problem.size))
    assert sum(problem.sizes[s] for s, _ in mb.groups) <= ranks
    for s, seqs in mb.groups:
        assert sum(lengths[i] for i in seqs) <= problem.sizes[s] * CM.capacity_tokens
    assert mb.span_ms <= result.bucketed_ms + 1e-6  # padding to bucket tops only adds time


def test_milp_with_enough_time_is_not_worse_than_padding_allows():
    # one bucket per distinct length: no padding, so an optimal MILP is at least as good as the packer
    lengths = [5000, 5000, 12000, 700, 700, 700, 3000, 3000]
    problem = build_problem(lengths, 8, CM)
    result = milp.solve_micro_batch(problem, np.arange(problem.size), CM, time_limit_s=10.0)
    assert result.status == "optimal"
    assert result.micro_batch.span_ms >= problem.work_floor_ms() * (1 - 1e-12)  # the bound holds at the optimum
    greedy = fast_plan(problem)
    if len(greedy.micro_batches) == 1:
        assert result.micro_batch.span_ms <= greedy.micro_batches[0].span_ms + 1e-6
