"""Activation recomputation (train.recompute_*, megatron's TransformerConfig): the same loss and
gradients as without it, and the core attention really runs again in the backward."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY
from test_sequence_parallel import harness

from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.model import recompute_args

pytestmark = pytest.mark.slow


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


def test_losses_and_gradients_equal_with_and_without_recomputation(tmp_path, small_shards):
    runs = {}
    # full only (selective wraps the same core attention in the same megatron checkpoint function; each run
    # costs ~15 s of CPU): its recomputation covers every layer
    for name, extra in {"plain": [], "full": ["train.recompute_granularity=full"]}.items():
        code, runs[name] = harness(tmp_path, name, 1, small_shards, *extra)
        assert code == 0, sorted((tmp_path / f"logs-{name}").glob("*"))
    plain = runs["plain"]
    layers = int(next(a for a in TINY if a.startswith("model.num_layers=")).split("=")[1])
    assert plain["attention_calls"] % layers == 0
    for name in ("full",):
        run = runs[name]
        assert run["attention_calls"] == 2 * plain["attention_calls"], name  # recomputed in the backward
        assert run["loss"] == plain["loss"], name
        for param, grad in plain["grads"].items():
            assert torch.equal(run["grads"][param], grad), (name, param)
