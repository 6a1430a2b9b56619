"""Every documented enum value of every key reads back as that text, through the CLI's dotted
overrides and through a YAML file (YAML 1.1 would read off/on/yes/no as booleans)."""
from __future__ import annotations

import pytest
import yaml

from pretrain.config import load_config

# key -> (its documented values, overrides that make the config valid around it)
ENUMS = {
    "resume": (["auto", "never"], []),
    "init_optimizer": (["keep", "reset"], []),
    "model.preset": (["tiny", "125m", "1b", "7b"], []),
    "model.normalization": (["RMSNorm", "LayerNorm"], []),
    "model.activation": (["swiglu", "gelu"], []),
    "model.position_embedding": (["rope", "learned"], []),
    "model.spec": (["auto", "local", "te"], []),
    "model.attention": (["auto", "document"], []),  # te: only where Transformer Engine is installed
    "train.precision": (["auto", "bf16", "fp32"], []),
    "train.recompute_granularity": (["none", "full", "selective"], []),
    "train.recompute_method": (["uniform", "block"], ["train.recompute_granularity=full"]),
    "launch.backend": (["auto", "nccl", "gloo"], []),
    "sp.mode": (["off", "static", "adaptive"], []),
    "sp.solver": (["highs", "cbc", "none"], ["sp.mode=adaptive"]),
    "sp.cost_model": (["auto"], ["sp.mode=adaptive"]),
    "reweight.strategy": (["uniform", "linupper", "quadratic", "extremes"], []),
    "reweight.objective": (["tokens", "samples"], ["reweight.strategy=linupper"]),
    "reweight.scope": (["batch", "microbatch"], ["reweight.strategy=linupper"]),
    "lisa.state": (["reset", "offload"], ["lisa.layers=2"]),
    "run.wandb_mode": (["offline", "online"], []),
    "schedule.decay_shape": (["linear", "cosine", "1-sqrt", "exponential", "megatron-exponential"],
                             ["schedule.kind=wsd", "schedule.cooldown_steps=20"]),
}
CASES = [(key, value, extra) for key, (values, extra) in ENUMS.items() for value in values]


def attribute(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def as_yaml_file(tmp_path, items: list[str]):
    tree: dict = {}
    for item in items:
        key, value = item.split("=", 1)
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    # written as a person types it: `mode: off`, unquoted
    text = yaml.safe_dump(tree, sort_keys=False).replace("'", "")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key,value,extra", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_enum_value_reads_back_as_text(tmp_path, key, value, extra):
    assert attribute(load_config(None, [*extra, f"{key}={value}"]), key) == value
    path = as_yaml_file(tmp_path, [*extra, f"{key}={value}"])
    assert f": {value}\n" in path.read_text()
    assert attribute(load_config(str(path), []), key) == value


@pytest.mark.parametrize("text,expected", [("on", True), ("off", False), ("yes", True), ("no", False),
                                           ("true", True), ("False", False)])
def test_boolean_keys_still_take_yes_no_on_off(text, expected):
    assert load_config(None, [f"run.tensorboard={text}"]).run.tensorboard is expected
