"""What hetron sets on megatron-core's optimizer each step, and the one place that knows which
optimizer implementation keeps Adam's step count where.

megatron-core builds its param groups with `wd_mult` (0 for biases and 1-D parameters: norm gains)
and `lr_mult`, which only its OptimizerParamScheduler applies; hetron's schedules are richer than
that scheduler's, so hetron applies both multipliers itself (apply_lr_and_weight_decay).

Adam's step count lives in different places: torch.optim keeps a `step` tensor in every
parameter's state (and megatron-core's fully reshardable checkpoint format stores none, so it must
be recreated on load), while Transformer Engine's and Apex's fused Adam keep one `step` per param
group, and TE's FusedAdam refuses any per-parameter state key it does not know. Every workaround
that touches per-parameter `step` goes through `keeps_step_per_parameter`, so the fused optimizers
of a GPU run see megatron-core's own code path unchanged.
"""
from __future__ import annotations

import torch


def inner_optimizers(optimizer) -> list:
    """(megatron optimizer, the torch-like optimizer it wraps) for every chained optimizer."""
    pairs = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is not None:
            pairs.append((opt, inner))
    return pairs


def keeps_step_per_parameter(inner) -> bool:
    """True for torch.optim optimizers (a `step` tensor in every parameter's state); False for
    fused optimizers from Transformer Engine or Apex, which count steps per param group."""
    return isinstance(inner, torch.optim.Optimizer) and type(inner).__module__.startswith("torch.")


def apply_lr_and_weight_decay(optimizer, lr: float, weight_decay: float) -> None:
    """Set every param group's LR and weight decay as megatron-core's scheduler would: the
    schedule's value times the group's lr_mult / wd_mult."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


def step_count(optimizer) -> int:
    """Adam's step count (one for all parameters; 0 before the first step)."""
    steps = [0]
    for _, inner in inner_optimizers(optimizer):
        steps += [int(s["step"]) for s in inner.state.values() if "step" in s]
        steps += [int(g["step"]) for g in inner.param_groups if "step" in g]
    return max(steps)


def set_step_count(inner, step: int, params=None) -> None:
    """Put `step` where this optimizer keeps its count: every (given) parameter's state for
    torch.optim, every param group for fused optimizers (which create per-group counts lazily)."""
    if keeps_step_per_parameter(inner):
        for p in params if params is not None else [p for g in inner.param_groups for p in g["params"]]:
            if p in inner.state:
                # one tensor per parameter: torch Adam increments it in place
                inner.state[p]["step"] = torch.tensor(float(step))
        return
    for group in inner.param_groups:
        group["step"] = step
