"""plan_step: property tests on random long-tail batches, and the infeasible / drop / allowed-size paths."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel.cost_model import CostModel, is_power_of_two
from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
from parallel.planner import build_problem, plan_step
from pretrain.errors import HetronError

CM = CostModel.preset("7b")  # capacity 6000 tokens per rank


@st.composite
def long_tail_batch(draw):
    ranks = draw(st.sampled_from([1, 2, 4, 8, 12, 16, 32]))
    longest = (1 << (ranks.bit_length() - 1)) * CM.capacity_tokens
    short = st.integers(1, 2000)
    medium = st.integers(2000, 12000)
    long = st.integers(12000, max(12000, longest))
    lengths = draw(st.lists(st.one_of(short, short, short, medium, long), min_size=1, max_size=80))
    return ranks, [min(x, longest) for x in lengths]


def check_plan(plan: SequenceParallelPlan, lengths, ranks):
    plan.validate(lengths, CM)  # every sequence once, contiguous tiling, capacity
    assert plan.num_ranks == ranks
    planned = sorted(i for mb in plan.micro_batches for g in mb.groups for i in g.sequences)
    assert planned == sorted(set(range(len(lengths))) - set(plan.dropped))
    for mb in plan.micro_batches:
        assert sum(g.size for g in mb.groups) == ranks
        for g in mb.groups:
            assert is_power_of_two(g.size)
            assert g.start % g.size == 0 or ranks & (ranks - 1)  # aligned when N is a power of two
            assert sum(lengths[i] for i in g.sequences) <= g.size * CM.capacity_tokens


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_tail_batch())
def test_plans_are_valid_and_match_the_simulator(batch):
    ranks, lengths = batch
    plan = plan_step(lengths, ranks, CM, solver="none")
    check_plan(plan, lengths, ranks)
    assert plan.predicted_ms == pytest.approx(plan.time_ms(lengths, CM), rel=1e-9)
    assert plan.time_ms(lengths, CM) >= build_problem(lengths, ranks, CM).lower_bound_ms() * (1 - 1e-12)


@settings(max_examples=40, deadline=None)
@given(long_tail_batch())
def test_same_input_same_plan(batch):
    ranks, lengths = batch
    first = plan_step(lengths, ranks, CM, solver="none")
    again = plan_step(list(lengths), ranks, CM, solver="none")
    assert first.micro_batches == again.micro_batches and first.predicted_ms == again.predicted_ms


@settings(max_examples=40, deadline=None)
@given(long_tail_batch(), st.sampled_from([[2], [4, 8], [1, 4], [2, 8, 16]]))
def test_allowed_sizes_are_respected(batch, allowed):
    ranks, lengths = batch
    allowed = [d for d in allowed if d <= ranks] or [1]
    biggest = max(allowed) * CM.capacity_tokens
    if max(lengths) > biggest:
        with pytest.raises(HetronError, match="does not fit"):
            plan_step(lengths, ranks, CM, solver="none", allowed_sizes=allowed)
        return
    plan = plan_step(lengths, ranks, CM, solver="none", allowed_sizes=allowed)
    check_plan(plan, lengths, ranks)
    assert {g.size for mb in plan.micro_batches for g in mb.groups if g.sequences} <= set(allowed)


def test_infeasible_sequence_is_named():
    lengths = [100, 5000, 8 * 6000 + 1, 300]
    with pytest.raises(HetronError, match=r"sequence 2 of length 48001 does not fit even on 8 ranks"):
        plan_step(lengths, 8, CM)


def test_drop_oversized_drops_and_counts():
    lengths = [100, 60000, 5000, 70000, 300]
    plan = plan_step(lengths, 8, CM, drop_oversized=True, solver="none")
    assert plan.dropped == (1, 3)
    assert "dropped 2" in plan.solver_status
    check_plan(plan, lengths, 8)
    assert SequenceParallelPlan.from_json(plan.to_json()).dropped == (1, 3)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(HetronError, match="allowed_sizes"):
        plan_step([100], 8, CM, allowed_sizes=[3])
    with pytest.raises(HetronError, match="allowed_sizes"):
        plan_step([100], 8, CM, allowed_sizes=[16])
    with pytest.raises(HetronError, match="length 0"):
        plan_step([100, 0], 8, CM)
    with pytest.raises(ValueError, match="unknown solver"):
        plan_step([100], 8, CM, solver="gurobi")


def test_empty_batch_gives_empty_plan():
    plan = plan_step([], 8, CM)
    assert plan.micro_batches == () and plan.predicted_ms == 0.0


def test_json_round_trip_and_shape():
    lengths = [3000, 40000, 200, 200, 7000, 15000]
    plan = plan_step(lengths, 16, CM, solver="none")
    raw = json.loads(plan.to_json())
    assert set(raw["micro_batches"][0][0]) == {"start", "size", "sequences"}
    assert SequenceParallelPlan.from_json(plan.to_json()) == plan
    with pytest.raises(HetronError, match="not valid JSON"):
        SequenceParallelPlan.from_json("{")
    with pytest.raises(HetronError, match="malformed"):
        SequenceParallelPlan.from_json('{"num_ranks": 4}')


def _plan(*micro_batches):
    return SequenceParallelPlan(4, tuple(MicroBatchPlan(tuple(SPGroup(*g) for g in mb)) for mb in micro_batches),
                                0.0, 0.0, "test")


@pytest.mark.parametrize("plan,message", [
    (_plan([(0, 2, (0,)), (2, 2, (1,))]), "sequences \\[2\\] are in no group"),
    (_plan([(0, 2, (0, 1)), (2, 2, (1, 2))]), "sequence 1 appears in micro-batches 0 and 0"),
    (_plan([(0, 3, (0, 1, 2)), (3, 1, ())]), "not a power of two"),
    (_plan([(0, 2, (0, 1, 2))]), "cover 2 ranks, not 4"),
    (_plan([(0, 2, (0,)), (3, 1, (1, 2))]), "tile ranks contiguously"),
    (_plan([(0, 1, (0, 1, 2)), (1, 1, ()), (2, 2, ())]), "exceed the capacity"),
    (_plan([(0, 4, (0, 1, 2, 7))]), "outside the batch"),
])
def test_validate_rejects_broken_plans(plan, message):
    with pytest.raises(HetronError, match=message):
        plan.validate([3000, 3000, 1000], CM)


def test_real_wikipedia_batch_beats_static_and_is_near_the_bound(shared_data):
    from parallel import simulate
    ranks = 64
    raw = [int(x) for x in (shared_data / "seqlens" / "wikipedia.txt").read_text().split()[:1200]]
    padded = [-(-x // (2 * ranks)) * 2 * ranks for x in raw]
    lengths = [x for x in padded if x <= 196608 - 2 * ranks][:512]
    plan = plan_step(lengths, ranks, CM)
    check_plan(plan, lengths, ranks)
    ours = plan.time_ms(lengths, CM)
    static = simulate.static_plan(lengths, ranks, CM, 64).time_ms(lengths, CM)
    assert ours < static / 1.5
    assert ours <= 1.10 * simulate.lower_bound_ms(lengths, ranks, CM)


@settings(max_examples=30, deadline=None)
@given(long_tail_batch())
def test_work_floor_is_at_least_the_simple_bounds(batch):
    ranks, lengths = batch
    problem = build_problem(lengths, ranks, CM)
    simple = max(problem.min_area().sum() / ranks, problem.min_time().max())
    assert problem.work_floor_ms() >= simple * (1 - 1e-12)


def test_missing_build_falls_back_to_python_with_a_warning(tmp_path):
    import subprocess
    import sys
    script = """
import importlib.abc, logging, sys
class NoNative(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "parallel._native":
            raise ImportError("simulated missing build")
sys.meta_path.insert(0, NoNative())
logging.basicConfig(level=logging.WARNING)
from parallel import native
from parallel.cost_model import CostModel
from parallel.planner import plan_step
assert native.BACKEND == "python", native.BACKEND
plan = plan_step([100, 7000, 300, 20000], 8, CostModel.preset("7b"), solver="none")
plan.validate([100, 7000, 300, 20000], CostModel.preset("7b"))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
    assert "not built" in out.stderr and "pure-Python twins" in out.stderr
