"""Which hetron schedules megatron-core's OptimizerParamScheduler can express, and with which arguments.

megatron-core 0.16.1's scheduler has a linear warmup from init_lr, then `lr_decay_style` constant,
linear, cosine, inverse-square-root or WSD (stable, then a cooldown of `wsd_decay_steps` in
`lr_wsd_decay_style` linear, cosine, exponential or minus_sqrt). hetron's names for the shared
shapes differ in two places: megatron's `minus_sqrt` is hetron's "1-sqrt", and megatron's WSD
`exponential`, min + (max - min) * (2 * 0.5^f - 1), is hetron's "megatron-exponential" (hetron's
"exponential" is the geometric max * (min / max)^f, which megatron does not have).

`megatron_scheduler_args(spec)` returns the keyword arguments of OptimizerParamScheduler (LR part)
for a spec that has an exact megatron equivalent, and None otherwise (infinite, piecewise, the
geometric exponential, decay shapes megatron applies only inside WSD).
tests/test_schedules.py checks every equivalent here step by step against megatron-core itself.
"""
from __future__ import annotations

from pretrain.schedules.spec import ScheduleSpec

# hetron decay_shape -> megatron lr_wsd_decay_style
WSD_DECAY_STYLES = {"linear": "linear", "cosine": "cosine", "1-sqrt": "minus_sqrt",
                    "megatron-exponential": "exponential"}
# hetron decay_shape of kind cosine / rewarm -> megatron lr_decay_style
DECAY_STYLES = {"linear": "linear", "cosine": "cosine"}


def megatron_scheduler_args(spec: ScheduleSpec) -> dict | None:
    """OptimizerParamScheduler's LR arguments (init_lr, max_lr, min_lr, lr_warmup_steps,
    lr_decay_steps, lr_decay_style[, wsd_decay_steps, lr_wsd_decay_style]) giving the same LR as
    `spec.lr(n)` after n scheduler steps, or None when megatron-core has no such schedule."""
    common = dict(init_lr=spec.warmup_init_lr, max_lr=spec.peak_lr, lr_warmup_steps=spec.warmup_steps,
                  lr_decay_steps=spec.total_steps)
    if spec.warmup_steps >= spec.total_steps:  # megatron asserts warmup < decay steps
        return None
    if spec.kind == "constant":
        return dict(common, min_lr=0.0, lr_decay_style="constant")
    if spec.kind in ("cosine", "rewarm") and spec.shape in DECAY_STYLES:
        return dict(common, min_lr=spec.min_lr, lr_decay_style=DECAY_STYLES[spec.shape])
    if spec.kind == "wsd" and spec.shape in WSD_DECAY_STYLES and spec.cooldown_steps > 0:
        return dict(common, min_lr=spec.min_lr, lr_decay_style="WSD", wsd_decay_steps=spec.cooldown_steps,
                    lr_wsd_decay_style=WSD_DECAY_STYLES[spec.shape])
    return None
