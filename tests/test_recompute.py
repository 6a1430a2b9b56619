"""Micro-batch and memory knobs: activation recomputation (train.recompute_*, megatron's
TransformerConfig) gives the same loss and gradients and really runs the core attention again in the
backward; train.micro_batch_tokens packs more tokens per micro-batch for the same loss."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY
from test_sequence_parallel import harness

from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.model import recompute_args

pytestmark = pytest.mark.slow
LAYERS = int(next(a for a in TINY if a.startswith("model.num_layers=")).split("=")[1])
SEQ = int(next(a for a in TINY if a.startswith("model.seq_length=")).split("=")[1])


@pytest.fixture(scope="module")
def plain(tmp_path_factory, small_shards):
    tmp = tmp_path_factory.mktemp("plain")
    code, result = harness(tmp, "plain", 1, small_shards)
    assert code == 0, sorted((tmp / "logs-plain").glob("*"))
    return result


def test_recompute_keys_as_megatron_takes_them():
    train = lambda *o: load_config(None, list(o)).train  # noqa: E731
    assert recompute_args(train(), 12) == {}
    assert recompute_args(train("train.recompute_granularity=selective"), 12) == {"recompute_granularity": "selective"}
    assert recompute_args(train("train.recompute_granularity=full"), 12) == {
        "recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    assert recompute_args(train("train.recompute_granularity=full", "train.recompute_method=block"), 6) == {
        "recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 6}
    with pytest.raises(ConfigError, match="train.recompute_num_layers=3 needs train.recompute_granularity=full"):
        load_config(None, ["train.recompute_num_layers=3"])


def test_full_recomputation_gives_the_same_loss_and_gradients(tmp_path, small_shards, plain):
    # (selective wraps the same core attention in the same megatron checkpoint function; each run costs
    # ~15 s of CPU, so full only)
    code, full = harness(tmp_path, "full", 1, small_shards, "train.recompute_granularity=full")
    assert code == 0, sorted((tmp_path / "logs-full").glob("*"))
    assert plain["attention_calls"] % LAYERS == 0
    assert full["attention_calls"] == 2 * plain["attention_calls"]  # every layer recomputed in the backward
    assert full["loss"] == plain["loss"]
    for param, grad in plain["grads"].items():
        assert torch.equal(full["grads"][param], grad), param


def test_micro_batch_tokens_packs_more_per_micro_batch(tmp_path, small_shards, plain):
    code, packed = harness(tmp_path, "packed", 1, small_shards, f"train.micro_batch_tokens={2 * SEQ}")
    assert code == 0, sorted((tmp_path / "logs-packed").glob("*"))
    # one core-attention call per layer and micro-batch: fewer micro-batches, the same documents
    assert packed["attention_calls"] < plain["attention_calls"]
    assert packed["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    for param, grad in plain["grads"].items():
        assert torch.allclose(packed["grads"][param], grad, rtol=1e-4, atol=1e-7), param


def test_analytic_parameter_count_is_megatrons(plain, small_shards):
    """The count --dry-run and the run's summary print (pretrain.architecture) is the built GPTModel's."""
    from data.prepare import Manifest
    from pretrain.architecture import count_parameters, resolve_model

    cfg = load_config(None, [a for a in TINY if "=" in a])
    vocab = Manifest.load(small_shards).vocab_size
    built = sum(grad.numel() for grad in plain["grads"].values())  # one gradient per parameter
    assert count_parameters(resolve_model(cfg.model, cfg.parallel), vocab) == built
