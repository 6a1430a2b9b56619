"""Typed config: YAML + dotted overrides, validated with messages naming the key."""
from __future__ import annotations

import pytest

from pretrain.config import load_config
from pretrain.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.steps=40", "run.dir=/tmp/r", "schedule.peak_lr=3e-4", "launch.nproc=1",
                             "model.preset=125m", "seed=7", "checkpoint.every=10"])
    assert cfg.train.steps == 40 and cfg.run.dir == "/tmp/r" and cfg.seed == 7
    assert cfg.schedule.peak_lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.schedule.total_steps == 40 and cfg.schedule.warmup_steps == 4
    assert cfg.checkpoint_dir.as_posix() == "/tmp/r/checkpoints"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 12\nmodel:\n  num_layers: 4\nschedule:\n  kind: wsd\n  cooldown_steps: 3\n")
    cfg = load_config(str(path), ["train.steps=20"])
    assert cfg.train.steps == 20 and cfg.model.num_layers == 4 and cfg.schedule.kind == "wsd"


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown config key 'train.nope'"),
    ("train.steps=1.5", "train.steps=1.5 must be an integer"),
    ("run.tensorboard=maybe", "run.tensorboard='maybe' must be true or false"),
    ("train.steps=0", "train.steps=0 must be positive"),
    ("model.hidden_size=130", "model.hidden_size=130 is not divisible by model.num_attention_heads=4"),
    ("parallel.tensor=3", "not divisible by parallel.tensor=3"),
    ("schedule.total_steps=10", "schedule.total_steps=10 is shorter than train.steps=150"),
    ("resume=/no/such/ckpt", "resume='/no/such/ckpt'"),
    ("train", "is not key=value"),
    ("run.profile_steps=0", "run.profile_steps=0: steps count from 1 to train.steps=150"),
    ("run.profile_steps=3,x", "run.profile_steps[1]='x' must be an integer"),
    ("train.recompute_granularity=some", "train.recompute_granularity='some' is not one of none, full, selective"),
    ("model.spec=fast", "model.spec='fast' is not one of auto, local, te"),
    ("model.attention=flash", "model.attention='flash' is not one of auto, document, te"),
    ("model.attention=te", "model.attention=te needs Transformer Engine, which is not installed here"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["model.spec=local"], "model.attention=te needs Transformer Engine layers: set model.spec=te"),
    (["sp.mode=adaptive"], "model.attention=te runs without hetron's sequence parallelism"),
    (["model.rope_scaling={rope_type: llama3, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, "
      "original_max_position_embeddings: 8192}"], "has no Hugging Face rope_scaling"),
])
def test_te_attention_needs_what_it_runs_with(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.attention=te", *overrides])


def test_invalid_yaml_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(str(path))


def test_list_keys_take_comma_separated_values(tmp_path):
    assert load_config(None, ["run.profile_steps=10,11"]).run.profile_steps == [10, 11]
    assert load_config(None, ["run.profile_steps=7"]).run.profile_steps == [7]
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  profile_steps: [4, 5]\n")
    assert load_config(str(path)).run.profile_steps == [4, 5]
