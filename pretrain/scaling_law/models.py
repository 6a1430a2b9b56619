"""Each law as a fittable model: its parameters in an optimiser-friendly space (positive scales as
logs), bounds, starting points, and a torch prediction from per-curve features computed once."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pretrain.scaling_law.curves import LossCurve
from pretrain.scaling_law.laws import (
    DEFAULT_LAMBDA,
    AnnealingParams,
    MultiPowerParams,
    annealing_area,
    forward_area,
)
from pretrain.scaling_law.linearised_start import mpl_linearised_start
from pretrain.scaling_law.loss_drop import build_loss_drop_plan, loss_drop_sum, merge_plans


@dataclass(frozen=True)
class LawModel:
    name: str
    param_names: tuple[str, ...]
    log_params: frozenset[str]           # optimised as log(value)
    bounds: dict[str, tuple[float, float]]   # in natural units
    starts: tuple[dict[str, float], ...]     # natural units; L0 as a fraction of the lowest loss
    features: Callable[[Sequence[LossCurve]], Any]   # of all curves, predictions concatenated
    predict: Callable[[dict[str, torch.Tensor], Any], torch.Tensor]
    make_params: Callable[..., Any]
    # curves, natural_bounds, Huber delta -> a start fitted to the curves (natural units); None: the first generic start
    informed_start: Callable[[Sequence[LossCurve], dict, float], dict[str, float]] | None = None

    def to_z(self, natural: dict[str, float]) -> np.ndarray:
        return np.array([math.log(natural[n]) if n in self.log_params else natural[n] for n in self.param_names])

    def from_z(self, z) -> dict:
        lib = torch if isinstance(z, torch.Tensor) else np
        return {n: (lib.exp(z[i]) if n in self.log_params else z[i]) for i, n in enumerate(self.param_names)}

    def natural_bounds(self, min_loss: float) -> dict[str, tuple[float, float]]:
        """The bounds for curves whose lowest loss is `min_loss`: the floor L0 cannot exceed it."""
        return {n: (lo, min(hi, min_loss)) if n == "L0" else (lo, hi) for n, (lo, hi) in self.bounds.items()}

    def z_bounds(self, min_loss: float) -> list[tuple[float, float]]:
        box = self.natural_bounds(min_loss)
        return [(math.log(box[n][0]), math.log(box[n][1])) if n in self.log_params else box[n]
                for n in self.param_names]

    def generic_starts(self, min_loss: float) -> list[dict[str, float]]:
        """`starts` in natural units for curves whose lowest loss is `min_loss`."""
        return [dict(start, L0=start["L0"] * min_loss) for start in self.starts]


def _anneal_features(curves: Sequence[LossCurve], lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    s1 = np.concatenate([forward_area(c.lrs)[c.steps] for c in curves])
    s2 = np.concatenate([annealing_area(c.lrs, c.warmup_steps, lam)[c.steps] for c in curves])
    return torch.as_tensor(s1), torch.as_tensor(s2)


def _anneal_predict(p: dict[str, torch.Tensor], feats) -> torch.Tensor:
    s1, s2 = feats
    return p["L0"] + p["A"] * torch.pow(s1, -p["alpha"]) - p["C"] * s2


def annealing_model(lam: float = DEFAULT_LAMBDA) -> LawModel:
    return LawModel(
        name="anneal",
        param_names=AnnealingParams.NAMES,
        log_params=frozenset({"A", "C"}),
        bounds={"L0": (0.0, 100.0), "A": (1e-4, 1e3), "alpha": (0.01, 3.0), "C": (1e-6, 1e4)},
        starts=tuple({"L0": f, "A": a, "alpha": al, "C": c}
                     for f, a, al, c in [(0.9, 0.5, 0.5, 1.0), (0.8, 1.0, 0.3, 0.3), (0.95, 0.3, 0.8, 3.0),
                                         (0.7, 2.0, 0.2, 0.1)]),
        features=lambda curves: _anneal_features(curves, lam),
        predict=_anneal_predict,
        make_params=AnnealingParams,
    )


def _mpl_features(curves: Sequence[LossCurve], block: int | None = None):
    area = torch.as_tensor(np.concatenate([forward_area(c.lrs)[c.steps] for c in curves]))
    plans = [build_loss_drop_plan(c.lrs, c.steps, block=block) for c in curves]
    return area, merge_plans(plans)


def _mpl_predict(p: dict[str, torch.Tensor], feats) -> torch.Tensor:
    area, plan = feats
    drop = loss_drop_sum(plan, p["C"], p["beta"], p["gamma"])
    return p["L0"] + p["A"] * torch.pow(area, -p["alpha"]) - p["B"] * drop


def multi_power_model() -> LawModel:
    return LawModel(
        name="mpl",
        param_names=MultiPowerParams.NAMES,
        log_params=frozenset({"A", "B", "C"}),
        bounds={"L0": (0.0, 100.0), "A": (1e-4, 1e3), "alpha": (0.01, 3.0), "B": (1e-2, 1e5),
                "C": (1e-4, 1e4), "beta": (0.01, 3.0), "gamma": (0.0, 1.5)},
        starts=tuple({"L0": f, "A": a, "alpha": al, "B": b, "C": c, "beta": be, "gamma": g}
                     for f, a, al, b, c, be, g in [
                         (0.9, 0.5, 0.5, 1000.0, 1.0, 0.5, 0.5),
                         (0.8, 1.0, 0.3, 100.0, 10.0, 1.0, 0.3),
                         (0.95, 0.3, 0.8, 300.0, 0.3, 0.3, 0.8),
                         (0.85, 2.0, 0.2, 3000.0, 3.0, 0.8, 0.6),
                     ]),
        features=_mpl_features,
        predict=_mpl_predict,
        make_params=MultiPowerParams,
        informed_start=mpl_linearised_start,
    )


def law_model(name: str, lam: float = DEFAULT_LAMBDA) -> LawModel:
    if name in ("mpl", "multi-power"):
        return multi_power_model()
    if name in ("anneal", "annealing"):
        return annealing_model(lam)
    raise ValueError(f"unknown law {name!r}")
