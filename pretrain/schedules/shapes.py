"""Pure LR-schedule functions of the step, vectorised over numpy arrays of steps.

Each takes integer steps (an ndarray) and the schedule's numbers, and returns the LR of every step.
Steps at or beyond the end of a schedule keep its final LR.
"""
from __future__ import annotations

import numpy as np

DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential", "megatron-exponential")
INFINITE_COOLDOWN_SHAPES = ("inv-sqrt", "cosine")


def decay(frac: np.ndarray, start_lr: float, end_lr: float, shape: str) -> np.ndarray:
    """LR along a decay from start_lr (frac=0) to end_lr (frac=1); frac is clipped to [0, 1].

    Two different curves are called "exponential" in this field; both are here, under two names:
    "exponential" is the geometric start * (end / start)^f (the multi-power-law paper's WSD cooldown,
    which the scaling-law curves use); "megatron-exponential" is megatron-core's WSD "exponential",
    end + (start - end) * (2 * 0.5^f - 1). They agree at f = 0 and f = 1 only."""
    frac = np.clip(frac, 0.0, 1.0)
    if shape == "linear":
        return start_lr + (end_lr - start_lr) * frac
    if shape == "cosine":
        return end_lr + 0.5 * (start_lr - end_lr) * (1.0 + np.cos(np.pi * frac))
    if shape == "1-sqrt":
        return end_lr + (start_lr - end_lr) * (1.0 - np.sqrt(frac))
    if shape == "exponential":
        # geometric interpolation: start^(1-f) * end^f
        return start_lr * (end_lr / start_lr) ** frac
    if shape == "megatron-exponential":
        # megatron-core OptimizerParamScheduler, lr_wsd_decay_style="exponential"
        return end_lr + (start_lr - end_lr) * (2.0 * 0.5 ** frac - 1.0)
    raise ValueError(f"unknown decay shape {shape!r}")


def warmup(steps: np.ndarray, warmup_steps: int, init_lr: float, peak_lr: float) -> np.ndarray:
    """Linear warmup: init_lr at step 0, reaching peak_lr at step warmup_steps."""
    if warmup_steps <= 0:
        return np.full(steps.shape, float(peak_lr))
    return init_lr + (peak_lr - init_lr) * np.clip(steps / warmup_steps, 0.0, 1.0)


def with_warmup(steps: np.ndarray, warmup_steps: int, init_lr: float, peak_lr: float, after: np.ndarray) -> np.ndarray:
    return np.where(steps < warmup_steps, warmup(steps, warmup_steps, init_lr, peak_lr), after)


def warmup_decay_lrs(steps: np.ndarray, *, peak_lr: float, min_lr: float, warmup_steps: int,
                     total_steps: int, init_lr: float = 0.0, shape: str = "cosine") -> np.ndarray:
    """Linear warmup, then a decay of the given shape from peak_lr to min_lr at total_steps."""
    span = max(total_steps - warmup_steps, 1)
    after = decay((steps - warmup_steps) / span, peak_lr, min_lr, shape)
    return with_warmup(steps, warmup_steps, init_lr, peak_lr, after)


def wsd_lrs(steps: np.ndarray, *, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
            cooldown_steps: int, shape: str, init_lr: float = 0.0) -> np.ndarray:
    """Warmup, stable at peak_lr, then a cooldown of cooldown_steps ending at min_lr at total_steps."""
    cooldown_start = total_steps - cooldown_steps
    if cooldown_steps > 0:
        after = decay((steps - cooldown_start) / cooldown_steps, peak_lr, min_lr, shape)
    else:
        after = np.full(steps.shape, float(peak_lr))
    return with_warmup(steps, warmup_steps, init_lr, peak_lr, after)


def infinite_lrs(steps: np.ndarray, *, peak_lr: float, constant_lr: float, min_lr: float, warmup_steps: int,
                 cooldown_steps: int, anneal_steps: int, total_steps: int, shape: str, timescale: float,
                 init_lr: float = 0.0) -> np.ndarray:
    """Infinite schedule: warmup, cooldown to constant_lr, constant phase, and an exponential anneal
    to min_lr over the last anneal_steps steps of the run (0: no anneal)."""
    t = (steps - warmup_steps).astype(np.float64)
    frac = np.clip(t / cooldown_steps, 0.0, 1.0) if cooldown_steps > 0 else np.ones(steps.shape)
    if shape == "inv-sqrt":
        def g(x):
            return 1.0 / np.sqrt(1.0 + timescale * x) - 1.0
        after = peak_lr + (constant_lr - peak_lr) * g(frac) / g(1.0)
    elif shape == "cosine":
        after = constant_lr + 0.5 * (peak_lr - constant_lr) * (1.0 + np.cos(np.pi * frac))
    else:
        raise ValueError(f"unknown infinite cooldown shape {shape!r}")
    if anneal_steps > 0:
        anneal_start = total_steps - anneal_steps
        n = np.clip((steps - anneal_start) / anneal_steps, 0.0, 1.0)
        annealed = constant_lr * (min_lr / constant_lr) ** n
        after = np.where(steps >= anneal_start, annealed, after)
    return with_warmup(steps, warmup_steps, init_lr, peak_lr, after)


def piecewise_lrs(steps: np.ndarray, *, points: np.ndarray, interpolate: str, peak_lr: float,
                  warmup_steps: int, init_lr: float = 0.0) -> np.ndarray:
    """Warmup, then the LR through (step, lr) points: linear between them, or held from each point
    ("previous"); before the first point its LR, after the last point the last LR."""
    xs, ys = points[:, 0], points[:, 1]
    if interpolate == "linear":
        after = np.interp(steps, xs, ys)
    else:
        idx = np.searchsorted(xs, steps, side="right") - 1
        after = ys[np.clip(idx, 0, len(ys) - 1)]
    return with_warmup(steps, warmup_steps, init_lr, peak_lr, after)
