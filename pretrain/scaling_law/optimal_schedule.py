"""Schedule choice (issue 9 item 4): given fitted multi-power-law parameters, a step budget and a
peak LR, the monotone non-increasing (after warmup) schedule with the lowest predicted final loss.

The schedule after warmup is piecewise linear through K knots whose LRs are
    eta_j = min_lr + (peak_lr - min_lr) * prod_{i<=j} sigmoid(theta_i),
monotone and within [min_lr, peak_lr] for any theta; the final loss (one evaluation step, so the
loss drop is an O(T) sum, differentiable in the LRs) is minimised over theta by L-BFGS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pretrain.scaling_law.laws import MultiPowerParams, multi_power_loss
from pretrain.schedules.spec import ScheduleSpec


def final_loss_torch(p: MultiPowerParams, lrs: torch.Tensor) -> torch.Tensor:
    """Multi-power-law loss at the last step of `lrs`, differentiable in the LRs."""
    cum = torch.cumsum(lrs, 0)
    k = torch.arange(1, len(lrs))
    d = lrs[k - 1] - lrs[k]
    x = lrs[k].clamp_min(1e-30) ** -p.gamma * (cum[-1] - cum[k - 1])
    drop = torch.sum(d * (1.0 - (p.C * x + 1.0) ** -p.beta))
    return p.L0 + p.A * cum[-1] ** -p.alpha - p.B * drop


@dataclass(frozen=True)
class ScheduleChoice:
    lrs: np.ndarray
    predicted_final_loss: float
    baselines: dict[str, float]        # predicted final loss of cosine and WSD of the same budget
    baseline_specs: dict[str, ScheduleSpec]


def optimize_schedule(params: MultiPowerParams, total_steps: int, peak_lr: float, warmup_steps: int,
                      min_lr: float = 0.0, knots: int = 64, iterations: int = 300) -> ScheduleChoice:
    torch.set_num_threads(1)
    W, T = warmup_steps, total_steps
    warm = torch.as_tensor(ScheduleSpec(kind="constant", peak_lr=peak_lr, warmup_steps=W,
                                        total_steps=T).lrs()[:W])
    knot_steps = np.linspace(W, T - 1, knots)
    # linear interpolation weights from knots to every post-warmup step
    pos = np.interp(np.arange(W, T), knot_steps, np.arange(knots))
    lo = np.floor(pos).astype(int).clip(0, knots - 1)
    hi = (lo + 1).clip(0, knots - 1)
    frac = torch.as_tensor(pos - lo)
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    def schedule(th: torch.Tensor) -> torch.Tensor:
        knot_lr = min_lr + (peak_lr - min_lr) * torch.cumprod(torch.sigmoid(th), 0)
        after = knot_lr[lo_t] * (1 - frac) + knot_lr[hi_t] * frac
        return torch.cat([warm, after])

    def theta_for(knot_lr: np.ndarray) -> np.ndarray:
        """theta whose schedule passes through knot_lr (monotone non-increasing)."""
        ratio = np.clip((knot_lr - min_lr) / (peak_lr - min_lr), 1e-6, 1 - 1e-9)
        step_ratio = np.clip(ratio / np.concatenate([[1.0], ratio[:-1]]), 1e-6, 1 - 1e-9)
        return np.log(step_ratio / (1 - step_ratio))

    floor = min_lr if min_lr > 0 else 0.1 * peak_lr
    specs = {
        "cosine": ScheduleSpec(kind="cosine", peak_lr=peak_lr, min_lr=floor, warmup_steps=W, total_steps=T),
        "wsd (20% 1-sqrt cooldown)": ScheduleSpec(kind="wsd", peak_lr=peak_lr, min_lr=min_lr, warmup_steps=W,
                                                  total_steps=T, cooldown_steps=int(0.2 * T), decay_shape="1-sqrt"),
    }
    baselines = {name: float(multi_power_loss(params, s.lrs(), np.asarray([T - 1]), exact=True)[0])
                 for name, s in specs.items()}
    # the loss surface over schedules is not convex: start near constant and from each baseline
    starts = [np.full(knots, 6.0)] + [theta_for(s.lrs_at(np.round(knot_steps).astype(int))) for s in specs.values()]
    best, final = None, np.inf
    for start in starts:
        theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = final_loss_torch(params, schedule(theta))
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            lrs = schedule(theta).numpy()
        loss = float(multi_power_loss(params, lrs, np.asarray([T - 1]), exact=True)[0])
        if loss < final:
            best, final = lrs, loss
    return ScheduleChoice(best, final, baselines, specs)
