"""Loss-based sample reweighting: weights against a NumPy reference, and exact gradients under DP."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.errors import HetronError
from pretrain.config import ReweightConfig
from grad_harness import run_harness
from pretrain.micro_batch_weights import effective_weights
from pretrain.reweighting import LossReweighting, sample_weights, token_coefficients, weight_statistics


def numpy_reference(losses, strategy, r, delta=1.0):
    l = np.asarray(losses, dtype=np.float64)
    h = delta * (2 * l - l.max() - l.min()) / max(l.max() - l.min(), 1e-6)
    f = {"linupper": np.minimum(h + delta, delta), "quadratic": 1 - h**2 / delta**2,
         "extremes": np.abs(h), "uniform": np.zeros_like(h)}[strategy]
    e = np.exp((f - f.max()) / r)
    return e / e.sum()


@pytest.mark.parametrize("strategy", ["uniform", "linupper", "quadratic", "extremes"])
@pytest.mark.parametrize("r", [0.1, 0.4, 3.0])
def test_matches_numpy_reference(strategy, r):
    rng = np.random.default_rng(hash((strategy, r)) % 2**32)
    losses = rng.gamma(2.0, 1.5, size=37)
    got = sample_weights(torch.tensor(losses), strategy, r).numpy()
    np.testing.assert_allclose(got, numpy_reference(losses, strategy, r), rtol=1e-12)
    assert got.sum() == pytest.approx(1.0)


def test_shapes_of_the_strategies():
    losses = torch.tensor([1.0, 2.0, 3.0])
    lin = sample_weights(losses, "linupper", 0.4)
    assert lin[0] < lin[1] == pytest.approx(lin[2])  # favours high losses, flat at the top
    quad = sample_weights(losses, "quadratic", 0.4)
    assert quad[1] > quad[0] == pytest.approx(quad[2])  # favours the middle
    ext = sample_weights(losses, "extremes", 0.4)
    assert ext[1] < ext[0] == pytest.approx(ext[2])


def test_infinite_r_and_equal_losses_give_uniform():
    losses = torch.tensor([0.5, 4.0, 2.0, 9.0])
    torch.testing.assert_close(sample_weights(losses, "linupper", math.inf), torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(sample_weights(torch.full((5,), 2.0), "quadratic", 0.1), torch.full((5,), 0.2, dtype=torch.float64))


def test_nan_loss_is_a_clear_error():
    with pytest.raises(HetronError, match="sample 2 .* nan"):
        sample_weights(torch.tensor([1.0, 2.0, float("nan")]), "linupper", 0.4)


def test_burn_in_then_warmup_then_r():
    algo = LossReweighting(ReweightConfig(strategy="linupper", r=0.4, burn_in_steps=3, r_warmup=2, r_warmup_value=50))
    assert [algo.r_at(s) for s in range(7)] == [math.inf] * 3 + [50, 50, 0.4, 0.4]


def test_statistics():
    w = torch.tensor([0.1, 0.2, 0.7])
    stats = weight_statistics(w, torch.tensor([1.0, 2.0, 3.0]))
    assert stats["weight_ess"] == pytest.approx(1 / (0.01 + 0.04 + 0.49))
    assert stats["loss_of_max_weight"] == 3.0 and stats["loss_of_min_weight"] == 1.0


@pytest.mark.slow
def test_two_rank_dp_gradients_equal_one_rank(tmp_path, small_shards):
    from conftest import TINY

    from launch.local import spawn_ranks

    args = [f"data.shards={small_shards}", *[a for a in TINY if "=" in a], "reweight.strategy=linupper", "reweight.r=0.3",
            "data.global_batch_tokens=1500"]
    for n in (1, 2):
        code = spawn_ranks("tests.grad_harness", [str(tmp_path / f"w{n}.pt"), f"run.dir={tmp_path / str(n)}", *args],
                           n, tmp_path / f"logs{n}")
        assert code == 0, (tmp_path / f"logs{n}").glob("*")
    one, two = (torch.load(tmp_path / f"w{n}.pt") for n in (1, 2))
    torch.testing.assert_close(one["weights"], two["weights"], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(one["weights"], torch.full_like(one["weights"], 1 / len(one["weights"])))
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory, small_shards) -> Path:
    """One checkpoint both layouts start from: megatron seeds each pipeline stage's init apart."""
    from conftest import TINY, run_hetron

    start = tmp_path_factory.mktemp("start")
    proc = run_hetron(["train", f"run.dir={start}", f"data.shards={small_shards}", *TINY, "train.steps=1",
                       "checkpoint.every=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return start


def assert_same_gradients(got: dict, want: dict) -> None:
    assert sorted(got["grads"]) == sorted(want["grads"])
    for name, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_pipeline_and_data_parallel_gradients_equal_one_rank(tmp_path, small_shards, start_weights):
    """PP2 x DP2: the forward-only pass leaves the losses on the last stage's two data-parallel ranks;
    the weights are made from all of them and the weighted backward runs through both stages."""
    from conftest import TINY

    common = [f"data.shards={small_shards}", *[a for a in TINY if "=" in a], "reweight.strategy=linupper",
              "reweight.r=0.3", "data.global_batch_tokens=1500", f"init_from={start_weights}", "init_optimizer=reset"]
    one = run_harness(tmp_path, "one", 1, common)
    piped = run_harness(tmp_path, "pp2dp2", 4, [*common, "parallel.pipeline=2"])
    torch.testing.assert_close(piped["weights"], one["weights"], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(one["weights"], torch.full_like(one["weights"], 1 / len(one["weights"])))
    assert_same_gradients(piped, one)
    assert piped["loss"] == pytest.approx(one["loss"], rel=1e-5)


@pytest.mark.slow
def test_micro_batch_scope_weighs_each_micro_batch_across_data_parallel_ranks(tmp_path, small_shards, start_weights):
    """reweight.scope=microbatch at PP2 x DP2, two micro-batches per rank of two samples each: micro-batch
    k is the k-th packed bin of both data-parallel ranks; its weights come from its four samples alone,
    and the step equals one rank weighing the whole batch with the weights this makes effective."""
    from conftest import TINY

    from data.packing import assign_bins_to_ranks, pack_into_bins

    common = [f"data.shards={small_shards}", *[a for a in TINY if "=" in a], "reweight.strategy=linupper",
              "reweight.r=0.3", "data.global_batch_tokens=2048",
              "train.micro_batch_tokens=512", f"init_from={start_weights}", "init_optimizer=reset"]
    scoped = run_harness(tmp_path, "mb", 4, [*common, "parallel.pipeline=2", "reweight.scope=microbatch"])
    lengths, losses, weights = scoped["lengths"], scoped["sample_losses"].double(), scoped["weights"].double()
    bins = pack_into_bins(lengths, 512)
    ranks = assign_bins_to_ranks([sum(lengths[i] for i in b) for b in bins], 2)
    assert len(ranks[0]) == 2
    for k in range(2):
        members = sorted(i for dealt in ranks if dealt[k] >= 0 for i in bins[dealt[k]])
        assert len(members) == 4
        w = sample_weights(losses[members], "linupper", 0.3)
        # micro-batch k's share of the step (objective tokens): its N_k of the N samples
        torch.testing.assert_close(weights[members], len(members) / len(lengths) * w, rtol=1e-5, atol=1e-9)
    assert weights.sum() == pytest.approx(1.0, rel=1e-6)
    torch.save({"weights": scoped["weights"]}, tmp_path / "effective.pt")
    reference = run_harness(tmp_path, "one", 1, common, env={"HARNESS_WEIGHTS": str(tmp_path / "effective.pt")})
    assert_same_gradients(scoped, reference)


@pytest.mark.parametrize("objective", ["tokens", "samples"])
def test_effective_weights_invert_the_token_coefficients(objective):
    """reweight.scope=microbatch reports the weights over the global batch that its per-micro-batch
    coefficients amount to: weighing the whole batch with them gives back the same coefficients."""
    gen = torch.Generator().manual_seed(3)
    counts = torch.randint(20, 900, (12,), generator=gen).double()
    coefficients = torch.zeros(12, dtype=torch.float64)
    for members in ([0, 3, 4, 9], [1, 2, 5], [6, 7, 8, 10, 11]):  # three micro-batches
        w = torch.softmax(torch.randn(len(members), generator=gen, dtype=torch.float64), 0)
        coefficients[members] = token_coefficients(w, counts[members], objective)
    weights = effective_weights(coefficients, counts, objective)
    assert float(weights.sum()) == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(token_coefficients(weights, counts, objective), coefficients, rtol=1e-12, atol=0)


def authors_objective(weights, token_losses, objective):
    """NumPy reference: the method's authors' length-aware objective sum_i w_i (n_i / mean n) l_i,
    or sum_i w_i l_i."""
    n = np.array([len(t) for t in token_losses], dtype=np.float64)
    means = np.array([t.mean() for t in token_losses])
    return float((weights * n / n.mean() * means).sum() if objective == "tokens" else (weights * means).sum())


@pytest.mark.parametrize("objective", ["tokens", "samples"])
def test_token_coefficients_over_sharded_partial_sums_give_the_objective(objective):
    rng = np.random.default_rng(7)
    token_losses = [rng.gamma(2.0, 1.5, size=k) for k in rng.integers(3, 900, size=11)]
    weights = numpy_reference([t.mean() for t in token_losses], "linupper", 0.4)
    counts = torch.tensor([len(t) for t in token_losses])
    c = token_coefficients(torch.tensor(weights), counts, objective).numpy()
    # every sample's tokens cut at random offsets onto 3 ranks: each rank scales its partial sum
    total = 0.0
    for i, t in enumerate(token_losses):
        cuts = np.sort(rng.integers(0, len(t) + 1, size=2))
        total += sum(c[i] * part.sum() for part in np.split(t, cuts))
    got = total / float(counts.sum())  # megatron's division by the global token count
    assert got == pytest.approx(authors_objective(weights, token_losses, objective), rel=1e-12)


def test_uniform_weights_with_the_token_objective_are_the_plain_per_token_mean():
    counts = torch.tensor([5, 300, 41])
    torch.testing.assert_close(token_coefficients(torch.full((3,), 1 / 3), counts, "tokens"),
                               torch.ones(3, dtype=torch.float64))
    algo = LossReweighting(ReweightConfig(strategy="linupper", burn_in_steps=2))
    assert [algo.weighs_step(None, s) for s in range(3)] == [False, False, True]
    samples = LossReweighting(ReweightConfig(strategy="linupper", burn_in_steps=2, objective="samples"))
    assert samples.weighs_step(None, 0)  # uniform per-sample means differ from the per-token mean


def test_bad_objective_is_a_config_error():
    from pretrain.errors import ConfigError

    with pytest.raises(ConfigError, match="reweight.objective='mean'"):
        ReweightConfig(strategy="linupper", objective="mean").validate()


@pytest.mark.slow
def test_burn_in_steps_are_exactly_the_plain_step(tmp_path, small_shards):
    from conftest import TINY, run_hetron

    common = [*TINY, f"data.shards={small_shards}", "train.steps=4", "checkpoint.every=100", "run.log_every=1"]
    plain = run_hetron(["train", f"run.dir={tmp_path / 'plain'}", *common])
    assert plain.returncode == 0, plain.stderr[-2000:]
    rw = run_hetron(["train", f"run.dir={tmp_path / 'rw'}", *common, "reweight.strategy=linupper",
                     "reweight.burn_in_steps=3", "reweight.r=0.3"])
    assert rw.returncode == 0, rw.stderr[-2000:]
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    plain_rows, rw_rows = read("plain"), read("rw")
    for a, b in zip(plain_rows[:3], rw_rows[:3]):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])  # bitwise: the same step
        assert "weight_ess" not in b
    # step 4 is weighted: same parameters going in (same loss), another update
    assert rw_rows[3]["loss"] == plain_rows[3]["loss"] and rw_rows[3]["grad_norm"] != plain_rows[3]["grad_norm"]
    assert rw_rows[3]["weight_max"] > 1.5 * rw_rows[3]["weight_min"]
