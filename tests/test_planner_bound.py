"""The batch LP bound: never above any valid plan (every policy's plans on random long-tail batches,
N = 4..256, and the exhaustive optimum of tiny batches), never below the work-floor bound; and the
MILP runs at N = 64 on real lengths within the budget a step of that batch gives it."""
import itertools
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel import simulate
from parallel.cost_model import CostModel
from parallel.plan import SequenceParallelPlan
from parallel.planner import build_problem, plan_step
from parallel.planner.batch_bound import batch_lower_bound
from parallel.planner.budget import step_budget_s
from parallel.planner.fast_path import fast_plan

CM = CostModel.preset("7b")  # capacity 6000 tokens per rank


@st.composite
def long_tail_batch(draw):
    ranks = draw(st.sampled_from([4, 8, 16, 32, 64, 128, 256]))
    longest = min(ranks * CM.capacity_tokens, 196608)
    short = st.integers(1, 2000)
    medium = st.integers(2000, 12000)
    long = st.integers(12000, max(12000, longest))
    lengths = draw(st.lists(st.one_of(short, short, short, medium, long), min_size=1, max_size=120))
    return ranks, [min(x, longest) for x in lengths]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_tail_batch())
def test_lp_bound_is_below_every_valid_plan_and_above_the_work_floor(batch):
    ranks, lengths = batch
    problem = build_problem(lengths, ranks, CM)
    greedy = fast_plan(problem)
    bound = batch_lower_bound(problem, greedy.total_ms)
    assert bound.bound_ms >= problem.lower_bound_ms()
    plans = [plan_step(lengths, ranks, CM, solver="none"), plan_step(lengths, ranks, CM, time_budget_s=0.3),
             simulate.per_sequence_plan(lengths, ranks, CM), simulate.batch_adaptive_plan(lengths, ranks, CM),
             simulate.static_plan(lengths, ranks, CM, CM.min_sp(max(lengths)))]
    for plan in plans:
        plan.validate(lengths, CM)
        assert bound.bound_ms <= plan.time_ms(lengths, CM) * (1 + 1e-9), plan.solver_status
    planned = plans[1]
    assert planned.bound_ms >= problem.lower_bound_ms()
    assert planned.bound_ms <= planned.time_ms(lengths, CM) * (1 + 1e-9)


def exhaustive_optimum_ms(lengths, ranks):
    """The fastest plan of a tiny batch by enumeration: every split into micro-batches, every way to
    cut each micro-batch's ranks into power-of-two groups, every assignment of its sequences."""
    n = len(lengths)
    sizes = [d for d in (1, 2, 4, 8, 16) if d <= ranks]

    def tilings(left, smallest):
        yield ()
        for d in sizes:
            if smallest <= d <= left:
                for rest in tilings(left - d, d):
                    yield (d, *rest)

    all_tilings = [t for t in tilings(ranks, 1) if t]

    @lru_cache(maxsize=None)
    def micro_batch_ms(members):
        best = float("inf")
        for groups in all_tilings:
            for assignment in itertools.product(range(len(groups)), repeat=len(members)):
                loads, tokens = [0.0] * len(groups), [0] * len(groups)
                for i, g in zip(members, assignment):
                    loads[g] += CM.seq_time_ms(lengths[i], groups[g])
                    tokens[g] += lengths[i]
                if all(t <= d * CM.capacity_tokens for t, d in zip(tokens, groups)):
                    best = min(best, max(loads) + CM.beta)
        return best

    @lru_cache(maxsize=None)
    def best_split(left):
        if not left:
            return 0.0
        first, rest = left[0], left[1:]
        best = float("inf")
        for k in range(len(rest) + 1):
            for others in itertools.combinations(rest, k):
                mb = (first, *others)
                remaining = tuple(i for i in rest if i not in others)
                best = min(best, micro_batch_ms(mb) + best_split(remaining))
        return best

    return best_split(tuple(range(n)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(200, 23000), min_size=1, max_size=4), st.sampled_from([2, 4]))
def test_lp_bound_is_below_the_exhaustive_optimum(lengths, ranks):
    lengths = [min(x, ranks * CM.capacity_tokens) for x in lengths]
    problem = build_problem(lengths, ranks, CM)
    optimum = exhaustive_optimum_ms(lengths, ranks)
    bound = batch_lower_bound(problem, fast_plan(problem).total_ms)
    assert problem.lower_bound_ms() <= bound.bound_ms <= optimum * (1 + 1e-9)
    assert fast_plan(problem).total_ms >= optimum * (1 - 1e-9)


def test_the_bound_is_tighter_than_the_work_floor_on_real_batches(wikipedia_batches):
    tighter = 0
    for lengths in wikipedia_batches:
        problem = build_problem(lengths, 64, CM)
        bound = batch_lower_bound(problem, fast_plan(problem).total_ms)
        assert bound.bound_ms >= problem.lower_bound_ms() and bound.lps >= 1 and bound.solver == "highs"
        tighter += bound.bound_ms > problem.lower_bound_ms() * (1 + 1e-6)
    assert tighter >= 2, "the LP should improve on the work floor on most real batches"


def test_milp_runs_on_real_lengths_within_the_step_budget(wikipedia_batches):
    """Budget as the trainer gives it: budget_fraction of the step, here the batch's own predicted
    step time (seconds at 7B on 64 GPUs); the MILP must start on every batch with a micro-batch
    more than 1% above its floor, and what it returns must be valid and no slower than the greedy."""
    ran, statuses = 0, []
    for lengths in wikipedia_batches:
        greedy = plan_step(lengths, 64, CM, solver="none")
        budget = step_budget_s(greedy.predicted_ms / 1000)
        assert 0.5 < budget <= 5.0
        plan = plan_step(lengths, 64, CM, time_budget_s=budget)
        plan.validate(lengths, CM)
        assert plan.time_ms(lengths, CM) <= greedy.time_ms(lengths, CM) * (1 + 1e-12)
        statuses.append(plan.solver_status)
        ran += plan.milp_ran >= 1
    # counted, not timed: on a machine loaded past its cores a budget can still run out (then the
    # status says the solver was late), but not on every batch
    assert ran >= 1 and sum("milp ran on" in s for s in statuses) >= 1, statuses


def test_broadcast_plan_is_the_same_plan(wikipedia_batches):
    """What rank 0 broadcasts (to_json) decodes to the identical plan, the planner's figures included."""
    plan = plan_step(wikipedia_batches[0], 64, CM, time_budget_s=0.2)
    again = SequenceParallelPlan.from_json(plan.to_json())
    assert again == plan and again.bound_ms == plan.bound_ms and again.method == plan.method


def test_step_budget_follows_the_step():
    assert step_budget_s(None) == 0.05  # nothing measured yet: the floor
    assert step_budget_s(0.01) == 0.05
    assert step_budget_s(2.0) == 1.0
    assert step_budget_s(60.0) == 5.0
    assert step_budget_s(4.0, fraction=0.25, min_s=0.1, max_s=0.5) == 0.5


def real_batches(shared_data, count: int, ranks: int = 64) -> list[list[int]]:
    """FlexSP's preprocessing of the first batches of wikipedia.txt, as `hetron plan-bench` does."""
    raw = [int(x) for x in (shared_data / "seqlens" / "wikipedia.txt").read_text().split()[:600 * count + 600]]
    padded = [-(-x // (2 * ranks)) * 2 * ranks for x in raw]
    kept = [x for x in padded if x <= 196608 - 2 * ranks]
    return [kept[b * 512:(b + 1) * 512] for b in range(count)]


@pytest.fixture
def wikipedia_batches(shared_data):
    return real_batches(shared_data, 3)


def test_whole_long_documents_and_group_counts_tighten_the_bound(wikipedia_batches):
    """Batch 1 holds a 93K-token document (32 or 64 ranks at 7B). The LP relaxation may run half of it
    in each micro-batch and fill a 64-rank micro-batch's ranks with short documents beside it; the
    MILP places it whole and counts groups, and so bounds the batch within 1% of the greedy plan."""
    lengths = wikipedia_batches[1]
    assert max(lengths) > 90000
    problem = build_problem(lengths, 64, CM)
    greedy = fast_plan(problem)
    relaxed = batch_lower_bound(problem, greedy.total_ms, solver="cbc")  # the same model's LP relaxation
    exact = batch_lower_bound(problem, greedy.total_ms)
    assert exact.status.startswith("milp") and relaxed.status.startswith("lp"), (exact.status, relaxed.status)
    assert problem.lower_bound_ms() <= relaxed.bound_ms < 0.95 * exact.bound_ms
    assert 0.99 * greedy.total_ms < exact.bound_ms <= greedy.total_ms


def test_a_short_budget_solves_the_relaxation_and_a_long_one_the_milp(wikipedia_batches):
    """Under MILP_MIN_S a MILP cut off within milliseconds bounds nothing: the LP relaxation runs."""
    import time

    from parallel.planner.batch_bound import MILP_MIN_S

    problem = build_problem(wikipedia_batches[1], 64, CM)
    greedy = fast_plan(problem)
    short = batch_lower_bound(problem, greedy.total_ms, deadline=time.perf_counter() + MILP_MIN_S / 3)
    long = batch_lower_bound(problem, greedy.total_ms, deadline=time.perf_counter() + 30.0)
    assert short.status.startswith("lp") and long.status.startswith("milp"), (short.status, long.status)
    assert problem.lower_bound_ms() <= short.bound_ms <= long.bound_ms <= greedy.total_ms


def test_the_bound_models_solution_rounds_to_a_faster_split(shared_data):
    """Batch 8 at N = 64: the greedy needs 3 micro-batches (a 67K-token document beside 560K tokens
    of others); the split read from the bound's solution packs into 2 and is >= 5% faster. The split
    holds every sequence once and the plan is valid."""
    from parallel.planner.lp_rounding import round_bound_splits
    from parallel.planner.step import to_micro_batch_plan

    lengths = real_batches(shared_data, 9)[8]
    problem = build_problem(lengths, 64, CM)
    greedy = fast_plan(problem)
    bound = batch_lower_bound(problem, greedy.total_ms)
    assert bound.splits
    for _, split in bound.splits:
        members = sorted(int(i) for mb in split for i in mb)
        assert members == list(range(problem.size))
    rounded = round_bound_splits(problem, bound.splits, greedy)
    assert rounded is not None and rounded.total_ms < 0.95 * greedy.total_ms
    assert len(rounded.micro_batches) < len(greedy.micro_batches)
    assert bound.bound_ms <= rounded.total_ms
    plan = SequenceParallelPlan(64, tuple(to_micro_batch_plan(problem, mb) for mb in rounded.micro_batches),
                                rounded.total_ms, 0.0, "lp-rounding")
    plan.validate(lengths, CM)
    assert plan.time_ms(lengths, CM) == pytest.approx(rounded.total_ms)


def test_plan_metrics_carry_the_planners_figures(wikipedia_batches):
    from parallel.plan_execution import plan_statistics

    lengths = wikipedia_batches[1]
    plan = plan_step(lengths, 64, CM, time_budget_s=0.2)
    stats = plan_statistics(plan)
    assert stats["sp_plan_ms"] == plan.solve_ms and stats["sp_bound_ms"] == plan.bound_ms
    assert stats["sp_gap"] == pytest.approx(plan.predicted_ms / plan.bound_ms - 1) and stats["sp_gap"] >= 0
    assert stats["sp_method"] in ("greedy", "lp-rounding", "split-search", "milp") and stats["sp_solver_late"] in (0, 1)
    static = simulate.static_plan(lengths, 64, CM, 64)
    assert "sp_bound_ms" not in plan_statistics(static)  # other policies carry no bound


@pytest.mark.parametrize("overrides,message", [
    (["sp.budget_fraction=2"], "sp.budget_fraction=2.0 must be in (0, 1]"),
    (["sp.budget_min_s=3", "sp.budget_max_s=1"], "sp.budget_min_s=3.0 and sp.budget_max_s=1.0"),
    (["sp.time_budget_s=-1"], "sp.time_budget_s=-1.0 must be >= 0"),
])
def test_bad_budget_keys_are_named(overrides, message):
    from pretrain.config import load_config
    from pretrain.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        load_config(overrides=["sp.mode=adaptive", *overrides])
