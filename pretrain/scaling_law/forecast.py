"""Live forecast: the trainer calls `forecast_final_loss` every N steps (option forecast.every=N)
with the curve so far and the configured schedule's full per-step LRs; it fits the law and returns
the predicted loss at the schedule's last step."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pretrain.scaling_law.curves import MIN_POINTS, curve_from_arrays
from pretrain.scaling_law.fit import fit_law
from pretrain.scaling_law.laws import DEFAULT_LAMBDA, predict_loss
from pretrain.scaling_law.models import law_model

MAX_POINTS = 200
FORECAST_MAX_ITER = 300


@dataclass(frozen=True)
class Forecast:
    step: int                 # last observed step
    final_step: int
    final_loss: float         # predicted loss at final_step
    params: dict[str, float]  # pass back as `previous` next time: a warm start
    law: str
    fit_mean_rel_err: float
    seconds: float


def subsample(steps: np.ndarray, losses: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points evenly spaced points, always keeping the newest."""
    if len(steps) <= max_points:
        return steps, losses
    idx = np.unique(np.linspace(0, len(steps) - 1, max_points).round().astype(int))
    return steps[idx], losses[idx]


def forecast_final_loss(steps, losses, lrs, warmup_steps: int, law: str = "mpl",
                        previous: dict[str, float] | None = None, skip_warmup: bool = True,
                        lam: float = DEFAULT_LAMBDA, optimizer: str = "lbfgs") -> Forecast | None:
    """Fit `law` to (steps, losses) observed so far under the per-step schedule `lrs` (the whole
    configured run, len(lrs) = total steps) and predict the loss at the last step.

    Returns None while there are too few points to fit (fewer than 5 after the warmup). Non-finite
    losses are dropped. With L-BFGS-B (the default: on partial mpl-25M curves it forecasts better than
    the AdamW procedure, see benchmarks/bench_forecast.py) only the previous forecast's parameters and
    one generic start are tried, so a call takes a second or two; AdamW starts from its informed start."""
    steps = np.asarray(steps, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(losses) & (losses > 0) & (steps < len(lrs))
    if skip_warmup:
        keep &= steps >= warmup_steps
    steps, losses = subsample(steps[keep], losses[keep], MAX_POINTS)
    if len(steps) < MIN_POINTS:
        return None
    t0 = time.perf_counter()
    curve = curve_from_arrays("so-far", steps, losses, lrs, warmup_steps)
    model = law_model(law, lam)
    if optimizer == "adamw":
        result = fit_law(model, [curve], optimizer="adamw")
    else:
        extra = [previous] if previous else model.generic_starts(float(losses.min()))[:1]
        result = fit_law(model, [curve], max_iter=FORECAST_MAX_ITER, extra_starts=extra, only_extra=True)
    final_step = len(lrs) - 1
    final_loss = float(predict_loss(model.name, result.params, lrs, np.asarray([final_step]), warmup_steps, lam)[0])
    return Forecast(int(steps[-1]), final_step, final_loss, result.params, model.name,
                    result.metrics["average"]["mean_rel_err"], time.perf_counter() - t0)
