"""Adaptive sequence parallelism in the trainer: real gloo ranks, Ulysses all-to-alls, megatron DDP."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, error_lines, run_hetron

from grad_harness import spawn_harness
from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
from parallel.plan_execution import align_groups, allowed_group_sizes

pytestmark = pytest.mark.slow
MODEL = [a for a in TINY if "=" in a]


def harness(tmp_path, name, nproc, shards, *extra, env=None):
    code = spawn_harness(tmp_path, name, nproc, [f"data.shards={shards}", *MODEL, *extra], env)
    return code, (torch.load(tmp_path / f"{name}.pt") if code == 0 else None)


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory, small_shards):
    tmp = tmp_path_factory.mktemp("sp-ref")
    code, result = harness(tmp, "one", 1, small_shards)
    assert code == 0
    return result


@pytest.mark.parametrize("pattern", ["2,1,1", "4", "1,1,1,1"])
def test_mixed_group_plans_match_one_rank(tmp_path, small_shards, single_rank, pattern):
    code, result = harness(tmp_path, "sp", 4, small_shards, "sp.mode=adaptive", "sp.tokens_per_rank=256",
                           env={"HARNESS_PLAN": pattern})
    assert code == 0, sorted((tmp_path / "logs-sp").glob("*"))
    assert result["loss"] == pytest.approx(single_rank["loss"], rel=1e-5)
    for name, ref in single_rank["grads"].items():
        got = result["grads"][name]
        assert (got - ref).norm() <= 1e-5 * ref.norm() + 1e-9, name


def test_reweighting_under_a_mixed_plan_matches_one_rank(tmp_path, small_shards):
    rw = ["reweight.strategy=linupper", "reweight.r=0.3"]
    code, one = harness(tmp_path, "one", 1, small_shards, *rw)
    assert code == 0
    code, sp = harness(tmp_path, "sp", 4, small_shards, *rw, "sp.mode=adaptive", "sp.tokens_per_rank=256",
                       env={"HARNESS_PLAN": "2,1,1"})
    assert code == 0
    torch.testing.assert_close(sp["sample_losses"], one["sample_losses"], rtol=1e-5, atol=1e-6)
    for name, ref in one["grads"].items():
        assert (sp["grads"][name] - ref).norm() <= 1e-5 * ref.norm() + 1e-9, name


@pytest.mark.parametrize("objective,scope", [("tokens", "batch"), ("samples", "microbatch")])
def test_reweighting_with_documents_straddling_shards_matches_one_rank(tmp_path, long_shards, objective, scope):
    # 300 tokens per rank and documents up to 1024: most documents are split across 2-4 ranks at
    # arbitrary offsets, so every rank holds partial sums of the documents it shares.
    rw = ["model.seq_length=1024", "data.global_batch_tokens=6000", "reweight.strategy=linupper", "reweight.r=0.3",
          f"reweight.objective={objective}"]
    sp_args = [*rw, "sp.mode=adaptive", "sp.tokens_per_rank=300", f"reweight.scope={scope}"]
    if scope == "batch":
        code, one = harness(tmp_path, "one", 1, long_shards, *rw)
        assert code == 0, sorted((tmp_path / "logs-one").glob("*"))
        # The same weights as the one-rank run (a weight is a sharp function of the losses, which differ
        # in their last float32 bits across layouts): gradients must then agree to float32 rounding.
        code, sp = harness(tmp_path, "sp", 4, long_shards, *sp_args,
                           env={"HARNESS_PLAN": "4;2,1,1", "HARNESS_WEIGHTS": str(tmp_path / "one.pt")})
        assert code == 0, sorted((tmp_path / "logs-sp").glob("*"))
    else:
        # each planned micro-batch weighs its own documents from partial sums of all its groups; one rank
        # weighing the whole batch with the weights that amounts to takes the same step
        code, sp = harness(tmp_path, "sp", 4, long_shards, *sp_args, env={"HARNESS_PLAN": "4;2,1,1"})
        assert code == 0, sorted((tmp_path / "logs-sp").glob("*"))
        torch.save({"weights": sp["weights"]}, tmp_path / "effective.pt")
        code, one = harness(tmp_path, "one", 1, long_shards, *rw, env={"HARNESS_WEIGHTS": str(tmp_path / "effective.pt")})
        assert code == 0, sorted((tmp_path / "logs-one").glob("*"))
        assert float(sp["weights"].sum()) == pytest.approx(1.0, rel=1e-5)
    assert sum(length > 300 for length in one["lengths"]) >= 3
    torch.testing.assert_close(sp["sample_losses"], one["sample_losses"], rtol=1e-5, atol=1e-6)
    for name, ref in one["grads"].items():
        assert (sp["grads"][name] - ref).norm() <= 1e-5 * ref.norm() + 1e-9, name


def test_plan_that_disagrees_across_ranks_is_an_error_not_a_hang(tmp_path, small_shards):
    code, _ = harness(tmp_path, "skew", 2, small_shards, "sp.mode=adaptive",
                      env={"HARNESS_PLAN": "2", "HARNESS_SKEW_RANK": "1"})
    assert code == 2
    assert "hold another global batch or plan than rank 0" in (tmp_path / "logs-skew" / "rank_1.log").read_text()


def test_document_longer_than_its_group_can_hold_is_named():
    from parallel.cost_model import CostModel
    from pretrain.errors import HetronError

    plan = SequenceParallelPlan(2, (MicroBatchPlan((SPGroup(0, 1, (0,)), SPGroup(1, 1, (1,)))),), 0, 0, "test")
    with pytest.raises(HetronError, match="sequence 0|capacity|300"):
        plan.validate([300, 10], CostModel.preset("7b", capacity_tokens=256))


@pytest.mark.parametrize("tensor", [1, 2])  # SP groups form inside the data-parallel dimension of TP2
def test_adaptive_four_ranks_first_loss_equals_plain_one_rank(tmp_path, small_shards, tensor):
    common = [*TINY, f"data.shards={small_shards}", "train.steps=1", "checkpoint.every=1"]
    one = run_hetron(["train", f"run.dir={tmp_path / 'one'}", *common, "launch.nproc=1"])
    assert one.returncode == 0, one.stderr[-2000:]
    sp = run_hetron(["train", f"run.dir={tmp_path / 'sp'}", *common, "launch.nproc=4", "sp.mode=adaptive",
                     "sp.tokens_per_rank=128", f"parallel.tensor={tensor}"])
    assert sp.returncode == 0, sp.stderr[-2000:]
    first = lambda run: json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    assert first("sp")["loss"] == pytest.approx(first("one")["loss"], rel=1e-5)
    assert first("sp")["sp_max_group"] >= 2  # sequences longer than 128 tokens needed groups
    # the default cost model (auto) is scaled, not measured: its prediction says so
    assert "sp_predicted_ms_uncalibrated" in first("sp") and "sp_predicted_ms" not in first("sp")
    # the planner's own figures: its time, its LP bound and the gap to it, which method won
    record = first("sp")
    assert record["sp_bound_ms"] > 0 and record["sp_gap"] >= -1e-9 and record["sp_method"] in ("greedy", "split-search", "milp")
    assert record["sp_plan_ms"] > 0 and record["sp_solver_late"] in (0, 1) and record["sp_plan_wait_ms"] >= 0


def test_groups_are_laid_out_on_aligned_ranges():
    plan = SequenceParallelPlan(4, (MicroBatchPlan((SPGroup(0, 1, (0,)), SPGroup(1, 2, (1,)), SPGroup(3, 1, (2,)))),),
                                0, 0, "test")
    groups = align_groups(plan).micro_batches[0].groups
    assert [(g.start, g.size, g.sequences) for g in groups] == [(0, 2, (1,)), (2, 1, (0,)), (3, 1, (2,))]
    assert allowed_group_sizes(4, 2, 8) == [1, 2]
    assert allowed_group_sizes(8, 8, 4) == [1, 2, 4]


def test_bad_sp_config_is_one_line(tmp_path):
    proc = run_hetron(["train", f"run.dir={tmp_path}", "sp.mode=sometimes"])
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "sp.mode" in lines[0]
