"""Robust fitting of a law to one or several loss curves jointly.

Objective: mean Huber loss (delta 1e-3) of log(predicted) - log(observed) over all points, with
bounded parameters. Two optimisers:
- "lbfgs": L-BFGS-B with exact gradients (torch autograd) from several generic starts; the best wins.
  `max_iter` caps the iterations: an early stop that regularises the fit.
- "adamw": the multi-power-law authors' procedure: one start fitted to the curves (the law's
  informed start, e.g. the linearised multi-power law), then AdamW on the natural parameters (lr 5e-2
  for scales, 5e-3 for exponents, decoupled weight decay 0.01), keeping the lowest objective seen,
  at most 200 steps, stopping after 20 steps without improvement. `max_iter` caps the steps.
`select_max_iter` picks the cap by validation on the fitting curves alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.optimize
import torch

from pretrain.errors import HetronError
from pretrain.scaling_law.curves import LossCurve
from pretrain.scaling_law.metrics import averaged, curve_metrics
from pretrain.scaling_law.models import LawModel

HUBER_DELTA = 1e-3
CONVERGED = 10_000  # "no early stop"
OPTIMIZERS = ("lbfgs", "adamw")

ADAMW_STEPS = 200
ADAMW_PATIENCE = 20
ADAMW_LR_SCALES = 5e-2      # L0, A, B, C
ADAMW_LR_EXPONENTS = 5e-3   # alpha, beta, gamma
ADAMW_WEIGHT_DECAY = 0.01
EXPONENTS = frozenset({"alpha", "beta", "gamma"})


def default_optimizer(law: str) -> str:
    """The multi-power law fits with its authors' AdamW procedure, the annealing law with L-BFGS-B."""
    return "adamw" if law == "mpl" else "lbfgs"


def default_max_iter(optimizer: str) -> int:
    return ADAMW_STEPS if optimizer == "adamw" else CONVERGED


@dataclass
class FitPath:
    """Parameters after every iteration of one start and the training objective there (for AdamW,
    whose objective goes up and down, the lowest-objective parameters seen so far)."""
    zs: list[np.ndarray]
    objectives: list[float]

    def at(self, iteration: int) -> tuple[np.ndarray, float]:
        i = min(iteration, len(self.zs) - 1)
        return self.zs[i], self.objectives[i]


@dataclass
class FitResult:
    law: str
    params: dict[str, float]
    objective: float
    optimizer: str
    max_iter: int
    iterations: int
    start: int
    seconds: float
    fit_curves: list[str]
    metrics: dict[str, dict] = field(default_factory=dict)   # per fitting curve and "average"
    selection: dict | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("law", "params", "objective", "optimizer", "max_iter", "iterations", "start",
                                               "seconds", "fit_curves", "metrics", "selection")}


def huber(residual: torch.Tensor, delta: float) -> torch.Tensor:
    a = residual.abs()
    return torch.where(a <= delta, 0.5 * residual ** 2, delta * (a - 0.5 * delta))


class Objective:
    """Mean Huber loss of log residuals over all points of `curves`, as a function of z."""

    def __init__(self, model: LawModel, curves: Sequence[LossCurve], delta: float = HUBER_DELTA):
        self.model, self.delta = model, delta
        self.features = model.features(curves)
        self.log_loss = torch.as_tensor(np.log(np.concatenate([c.loss for c in curves])))
        self.num_points = sum(len(c.loss) for c in curves)
        self._cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def __call__(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        key = z.tobytes()
        if key not in self._cache:
            self._cache = {key: self._evaluate(z)}
        value, grad = self._cache[key]
        return value, grad.copy()

    def natural(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective at natural-unit parameters, differentiable."""
        pred = self.model.predict(params, self.features).clamp_min(1e-8)
        total = huber(torch.log(pred) - self.log_loss, self.delta).sum()
        # scaled so that a typical objective is O(1) and L-BFGS-B's tolerances make sense
        return total / (self.num_points * self.delta ** 2)

    def _evaluate(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        value = self.natural(self.model.from_z(zt))
        if not torch.isfinite(value):
            return 1e30, np.zeros_like(z)
        value.backward()
        return float(value.detach()), zt.grad.numpy().copy()


def lowest_loss(curves: Sequence[LossCurve]) -> float:
    return min(float(c.loss.min()) for c in curves)


def start_points(model: LawModel, curves: Sequence[LossCurve],
                 extra: Sequence[dict[str, float]] = ()) -> list[np.ndarray]:
    """The model's generic starts (L0 as a fraction of the lowest loss) and any `extra` starts in
    natural units (e.g. the previous forecast's parameters), clipped into the bounds."""
    min_loss = lowest_loss(curves)
    bounds = model.z_bounds(min_loss)
    naturals = list(extra) + model.generic_starts(min_loss)
    lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
    # strictly inside: L-BFGS-B's projected gradient stalls on a start that sits on a bound
    margin = 1e-9 * (np.asarray(hi) - np.asarray(lo))
    return [np.clip(model.to_z(n), np.asarray(lo) + margin, np.asarray(hi) - margin) for n in naturals]


SCREEN_ITERATIONS = 50   # every start runs this far; then only the best SURVIVORS go on
SURVIVORS = 2


def lbfgs_paths(model: LawModel, curves: Sequence[LossCurve], max_iter: int = CONVERGED,
                on_start: Callable[[int], None] | None = None, extra_starts: Sequence[dict] = (),
                only_extra: bool = False) -> list[FitPath]:
    """One L-BFGS-B path per start, recording every iteration. All starts run SCREEN_ITERATIONS
    iterations, then only the SURVIVORS lowest go on to max_iter: the others sit in flat valleys
    that take hundreds of iterations to cross without ever overtaking the leaders."""
    objective = Objective(model, curves)
    bounds = model.z_bounds(lowest_loss(curves))
    starts = start_points(model, curves, extra_starts)
    if only_extra and extra_starts:
        starts = starts[:len(extra_starts)]

    def advance(path: FitPath, iterations: int) -> None:
        def record(zk: np.ndarray) -> None:
            path.zs.append(zk.copy())
            path.objectives.append(objective(zk)[0])

        scipy.optimize.minimize(objective, path.zs[-1], jac=True, method="L-BFGS-B", bounds=bounds, callback=record,
                                options={"maxiter": iterations, "ftol": 1e-8, "gtol": 1e-8, "maxcor": 20})

    paths = []
    for i, z0 in enumerate(starts):
        path = FitPath([z0.copy()], [objective(z0)[0]])
        advance(path, min(max_iter, SCREEN_ITERATIONS))
        paths.append(path)
        if on_start:
            on_start(i)
    if max_iter > SCREEN_ITERATIONS:
        leaders = sorted(range(len(paths)), key=lambda i: paths[i].objectives[-1])[:SURVIVORS]
        for i in leaders:
            if len(paths[i].zs) == SCREEN_ITERATIONS + 1:   # not converged yet
                advance(paths[i], max_iter - SCREEN_ITERATIONS)
    return paths


def informed_start(model: LawModel, curves: Sequence[LossCurve]) -> dict[str, float]:
    if model.informed_start is not None:
        return model.informed_start(curves, model.natural_bounds(lowest_loss(curves)), HUBER_DELTA)
    return model.generic_starts(lowest_loss(curves))[0]


def adamw_path(model: LawModel, curves: Sequence[LossCurve], start: dict[str, float],
               steps: int = ADAMW_STEPS, patience: int = ADAMW_PATIENCE) -> FitPath:
    """AdamW on the natural parameters from `start`, projected into the bounds after every step. The
    path records, after each step, the lowest-objective parameters seen so far; it ends early once
    `patience` steps in a row bring no improvement."""
    objective = Objective(model, curves)
    box = model.natural_bounds(lowest_loss(curves))
    params = {n: torch.tensor(float(np.clip(start[n], *box[n])), dtype=torch.float64, requires_grad=True)
              for n in model.param_names}
    optimizer = torch.optim.AdamW(
        [{"params": [params[n] for n in model.param_names if n not in EXPONENTS], "lr": ADAMW_LR_SCALES},
         {"params": [params[n] for n in model.param_names if n in EXPONENTS], "lr": ADAMW_LR_EXPONENTS}],
        weight_decay=ADAMW_WEIGHT_DECAY)
    path = FitPath([], [])
    since_best = 0
    for _ in range(steps + 1):
        optimizer.zero_grad()
        value = objective.natural(params)
        current = float(value.detach())
        if not path.zs and not np.isfinite(current):
            natural = {n: float(t.detach()) for n, t in params.items()}
            raise HetronError(f"{model.name}: the objective is not finite at the start {natural}")
        if np.isfinite(current) and (not path.zs or current < path.objectives[-1]):
            path.zs.append(model.to_z({n: float(t.detach()) for n, t in params.items()}))
            path.objectives.append(current)
            since_best = 0
        else:
            path.zs.append(path.zs[-1])
            path.objectives.append(path.objectives[-1])
            since_best += 1
        if since_best >= patience or len(path.zs) == steps + 1:
            break
        value.backward()
        optimizer.step()
        with torch.no_grad():
            for n, t in params.items():
                t.clamp_(*box[n])
    return path


def fit_paths(model: LawModel, curves: Sequence[LossCurve], max_iter: int | None = None, optimizer: str = "lbfgs",
              on_start: Callable[[int], None] | None = None, extra_starts: Sequence[dict] = (),
              only_extra: bool = False) -> list[FitPath]:
    """The optimisation paths of `optimizer` (see the module doc); AdamW runs one path from the
    informed start, or one from each extra start with only_extra."""
    # one thread: these tensors are small, and extra threads only contend for the cores
    torch.set_num_threads(1)
    if optimizer not in OPTIMIZERS:
        raise HetronError(f"unknown optimizer {optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
    max_iter = default_max_iter(optimizer) if max_iter is None else max_iter
    if optimizer == "lbfgs":
        return lbfgs_paths(model, curves, max_iter, on_start, extra_starts, only_extra)
    starts = list(extra_starts) if (only_extra and extra_starts) else [informed_start(model, curves)]
    paths = []
    for i, start in enumerate(starts):
        paths.append(adamw_path(model, curves, start, max_iter))
        if on_start:
            on_start(i)
    return paths


def best_at(paths: Sequence[FitPath], iteration: int) -> tuple[int, np.ndarray, float]:
    """The start with the lowest training objective after `iteration` iterations."""
    candidates = [(p.at(iteration)[1], i) for i, p in enumerate(paths)]
    objective, i = min(candidates)
    return i, paths[i].at(iteration)[0], objective


def predict_curve(model: LawModel, params: dict[str, float], curve: LossCurve) -> np.ndarray:
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    with torch.no_grad():
        return model.predict(p, model.features([curve])).numpy()


def fit_law(model: LawModel, curves: Sequence[LossCurve], max_iter: int | None = None, optimizer: str = "lbfgs",
            on_start: Callable[[int], None] | None = None, extra_starts: Sequence[dict] = (),
            only_extra: bool = False) -> FitResult:
    """Fit `model` to `curves` jointly with `optimizer`; the best start after at most max_iter
    iterations (default: L-BFGS-B to convergence, AdamW's 200 steps)."""
    if not curves:
        raise HetronError("no curves to fit")
    t0 = time.perf_counter()
    max_iter = default_max_iter(optimizer) if max_iter is None else max_iter
    paths = fit_paths(model, curves, max_iter, optimizer, on_start, extra_starts, only_extra)
    start, z, objective = best_at(paths, max_iter)
    params = {k: float(v) for k, v in model.from_z(z).items()}
    per_curve = {c.name: curve_metrics(predict_curve(model, params, c), c.loss) for c in curves}
    metrics = per_curve | {"average": averaged(list(per_curve.values()))}
    return FitResult(model.name, params, objective, optimizer, max_iter, min(max_iter, len(paths[start].zs) - 1), start,
                     time.perf_counter() - t0, [c.name for c in curves], metrics)


STOP_CANDIDATES = {"lbfgs": (10, 20, 30, 50, 75, 100, 150, 200), "adamw": tuple(range(20, ADAMW_STEPS + 1, 20))}
TAIL_FRACTION = 0.3


def validation_folds(curves: Sequence[LossCurve], tail_fraction: float = TAIL_FRACTION, whole: bool = False
                     ) -> list[tuple[str, list[LossCurve], LossCurve]]:
    """(label, training curves, held-out curve): each curve held out whole (when whole=True and there
    are at least two), and each curve's last `tail_fraction` of points held out while its head stays in."""
    folds = []
    if whole and len(curves) >= 2:
        for i, c in enumerate(curves):
            folds.append((f"hold out {c.name}", [o for j, o in enumerate(curves) if j != i], c))
    for i, c in enumerate(curves):
        cut = int(round(len(c.steps) * (1 - tail_fraction)))
        if cut < 5 or len(c.steps) - cut < 3:
            continue
        head = LossCurve(c.name, c.steps[:cut], c.loss[:cut], c.lrs, c.warmup_steps, c.source)
        tail = LossCurve(f"{c.name} tail", c.steps[cut:], c.loss[cut:], c.lrs, c.warmup_steps, c.source)
        folds.append((f"hold out the tail of {c.name}", [head if j == i else o for j, o in enumerate(curves)], tail))
    return folds


def select_max_iter(model: LawModel, curves: Sequence[LossCurve], candidates: Sequence[int] | None = None,
                    on_fold: Callable[[int], None] | None = None, tail_fraction: float = TAIL_FRACTION,
                    whole: bool = False, optimizer: str = "lbfgs") -> dict:
    """Choose the early stop by validation on the fitting curves alone: for every fold of
    `validation_folds` (each curve's tail held out; with whole=True also each curve held out whole),
    fit on the rest,
    score each iteration budget by the held-out points' mean relative error, average over the folds,
    and take the best budget (the smaller one on ties)."""
    candidates = STOP_CANDIDATES[optimizer] if candidates is None else candidates
    folds = validation_folds(curves, tail_fraction, whole)
    if not folds:
        raise HetronError("choosing the early stop needs fitting curves long enough to hold out a tail (17+ points)")
    t0 = time.perf_counter()
    scores = {k: [] for k in candidates}
    for i, (_, train, held_out) in enumerate(folds):
        paths = fit_paths(model, train, max(candidates), optimizer)
        for k in candidates:
            _, z, _ = best_at(paths, k)
            params = {n: float(v) for n, v in model.from_z(z).items()}
            scores[k].append(curve_metrics(predict_curve(model, params, held_out), held_out.loss)["mean_rel_err"])
        if on_fold:
            on_fold(i)
    mean_scores = {k: float(np.mean(v)) for k, v in scores.items()}
    best = min(candidates, key=lambda k: (round(mean_scores[k], 6), k))
    return {"optimizer": optimizer, "max_iter": int(best), "validation_mean_rel_err": mean_scores,
            "per_fold": {label: {k: scores[k][i] for k in candidates} for i, (label, _, _) in enumerate(folds)},
            "seconds": time.perf_counter() - t0}
