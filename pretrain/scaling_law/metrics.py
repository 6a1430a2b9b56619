"""Goodness of a prediction: R^2, mean and worst relative error, per curve, averaged and pooled."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def curve_metrics(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    rel = np.abs(predicted - observed) / np.abs(observed)
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    r2 = 1.0 - float(np.sum((predicted - observed) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"r2": r2, "mean_rel_err": float(rel.mean()), "max_rel_err": float(rel.max()), "points": int(len(rel))}


def averaged(per_curve: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average of each curve's metrics (the published PredE / WorstE / R^2 convention)."""
    keys = ("r2", "mean_rel_err", "max_rel_err")
    return {k: float(np.mean([m[k] for m in per_curve])) for k in keys} | {"curves": len(per_curve)}


def pooled(predicted: Sequence[np.ndarray], observed: Sequence[np.ndarray]) -> dict[str, float]:
    """Metrics over all points of all curves together."""
    return curve_metrics(np.concatenate(list(predicted)), np.concatenate(list(observed)))
