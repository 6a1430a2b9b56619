"""The annealing law and the multi-power law as pure functions of a per-step LR array.

`lrs[s]` is the LR of step s, warmup included. The forward area includes the warmup's area (the
multi-power law's S1 + S_W). The annealing law's S2 counts LR changes after `warmup_steps` only;
the multi-power law's loss drop counts every change from step 1, as its authors' code does.

Annealing law (Tissue et al. 2024):  L(t) = L0 + A * S1(t)^-alpha - C * S2(t)
    S1(t) = sum_{i<=t} eta_i,  S2(t) = sum_{i<=t} m_i,  m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)
Multi-power law (Luo et al. 2025):   L(t) = L0 + A * (S1(t) + S_W)^-alpha - LD(t)   (see loss_drop.py)
Both are O(T) in the schedule length apart from the loss drop, which is O(N * (T/b + b)).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.signal
import torch

from pretrain.scaling_law.loss_drop import build_loss_drop_plan, default_block, loss_drop_sum

DEFAULT_LAMBDA = 0.999


@dataclass(frozen=True)
class AnnealingParams:
    L0: float
    A: float
    alpha: float
    C: float

    NAMES = ("L0", "A", "alpha", "C")


@dataclass(frozen=True)
class MultiPowerParams:
    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float

    NAMES = ("L0", "A", "alpha", "B", "C", "beta", "gamma")


PUBLISHED_MPL_25M = MultiPowerParams(L0=3.040, A=0.525, alpha=0.508, B=363.8, C=2.066, beta=0.583, gamma=0.641)


def params_dict(params) -> dict[str, float]:
    return {f.name: float(getattr(params, f.name)) for f in dataclasses.fields(params)}


def forward_area(lrs: np.ndarray) -> np.ndarray:
    """S1 at every step: the LR area so far, warmup included."""
    return np.cumsum(np.asarray(lrs, dtype=np.float64))


def annealing_area(lrs: np.ndarray, warmup_steps: int, lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    """S2 at every step, in O(T): the momentum recurrence is a first-order IIR filter."""
    lrs = np.asarray(lrs, dtype=np.float64)
    drops = np.zeros_like(lrs)
    drops[warmup_steps + 1:] = lrs[warmup_steps:-1] - lrs[warmup_steps + 1:]
    momentum = scipy.signal.lfilter([1.0], [1.0, -lam], drops)
    return np.cumsum(momentum)


def annealing_law_loss(params: AnnealingParams, lrs: np.ndarray, steps: np.ndarray, warmup_steps: int,
                       lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.int64)
    s1 = forward_area(lrs)[steps]
    s2 = annealing_area(lrs, warmup_steps, lam)[steps]
    return params.L0 + params.A * s1 ** -params.alpha - params.C * s2


def multi_power_loss(params: MultiPowerParams, lrs: np.ndarray, steps: np.ndarray, block: int | None = None,
                     exact: bool = False, chunk: int = 2048) -> np.ndarray:
    """Multi-power-law loss at `steps` (indices into lrs); evaluation steps are taken in chunks so
    that all 72k steps of a long schedule fit in memory."""
    lrs = np.asarray(lrs, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.int64)
    area = forward_area(lrs)[steps]
    block = block or default_block(int(steps.max(initial=0)))
    drop = np.empty(len(steps))
    C, beta, gamma = (torch.tensor(float(v), dtype=torch.float64) for v in (params.C, params.beta, params.gamma))
    with torch.no_grad():
        for lo in range(0, len(steps), chunk):
            plan = build_loss_drop_plan(lrs, steps[lo:lo + chunk], block=block, exact=exact)
            drop[lo:lo + chunk] = loss_drop_sum(plan, C, beta, gamma).numpy()
    return params.L0 + params.A * area ** -params.alpha - params.B * drop


def predict_loss(law: str, params: dict[str, float], lrs: np.ndarray, steps: np.ndarray, warmup_steps: int,
                 lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    """Either law by name ("mpl" | "anneal") from a parameter dict, at `steps` of the schedule `lrs`."""
    if law == "mpl":
        return multi_power_loss(MultiPowerParams(**params), lrs, steps)
    if law == "anneal":
        return annealing_law_loss(AnnealingParams(**params), lrs, steps, warmup_steps, lam)
    raise ValueError(f"unknown law {law!r}")
