"""Robust fitting of a law to one or several loss curves jointly.

Objective: mean Huber loss (delta 1e-3) of log(predicted) - log(observed) over all points, with
bounded parameters. Two optimisers:
- "lbfgs": L-BFGS-B with exact gradients (torch autograd) from several generic starts; the best wins.
  `max_iter` caps the iterations: an early stop that regularises the fit.
- "adamw": the multi-power-law authors' procedure: one start fitted to the curves (the law's
  informed start, e.g. the linearised multi-power law), then AdamW on the natural parameters (lr 5e-2
  for scales, 5e-3 for exponents, decoupled weight decay 0.01), keeping the lowest objective seen,
  at most 200 steps, stopping after 20 steps without improvement. `max_iter` caps the steps. The
  step sizes and decay are set in the units of the curves (see `natural_from_unitless`): on curves at the
  authors' scale (losses ~3.3 nats, peak LR 3e-4) they are the authors' values.
- "auto" (the multi-power law's default): `select_fit` chooses the optimiser and its stop by
  validation on the fitting curves alone, then refits on all of them.
`select_max_iter` picks the cap of one optimiser by validation on the fitting curves alone.
"""
from __future__ import annotations

import ctypes
import threading
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
AUTO = "auto"
OPTIMIZERS = ("lbfgs", "adamw")
CHOICES = (AUTO,) + OPTIMIZERS

ADAMW_STEPS = 200
ADAMW_PATIENCE = 20
ADAMW_LR_SCALES = 5e-2      # L0, A, B, C
ADAMW_LR_EXPONENTS = 5e-3   # alpha, beta, gamma
ADAMW_WEIGHT_DECAY = 0.01
EXPONENTS = frozenset({"alpha", "beta", "gamma"})
# the scale of the curves the authors set those step sizes on: mpl-25M's fitting curves (lowest loss
# 3.3044 nats, peak LR 3e-4); curves at another scale get the same steps in their own units
ADAMW_REFERENCE_LOSS = 3.3044
ADAMW_REFERENCE_LR = 3e-4


def default_optimizer(law: str) -> str:
    """The multi-power law chooses its optimiser and stop by validation on the fitting curves
    ("auto"); the annealing law fits with L-BFGS-B to convergence."""
    return AUTO if law == "mpl" else "lbfgs"


def check_optimizer(optimizer: str) -> None:
    if optimizer not in CHOICES:
        raise HetronError(f"unknown optimizer {optimizer!r} (choose from {', '.join(CHOICES)})")


_BLAS_LIMITED = False


def single_blas_thread() -> None:
    """Limit the OpenBLAS libraries numpy and scipy loaded to one thread. These fits do tiny linear
    algebra (L-BFGS-B's updates, polyfit); with idle-spinning BLAS threads on a busy machine the
    informed start took 25 s of CPU instead of 1 s. torch's own threads are set separately."""
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return
    _BLAS_LIMITED = True
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.split()[-1].lower()}
    except OSError:
        return
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                       "openblas_set_num_threads"):
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(1)
                break


def one_compute_thread() -> None:
    """One torch and one BLAS thread for a fit: its tensors are small, and extra threads only contend
    for the cores. Both settings are process-wide, so a fit on a background thread (the trainer's
    live forecast on rank 0) leaves them alone: there they would throttle the training itself."""
    if threading.current_thread() is not threading.main_thread():
        return
    torch.set_num_threads(1)
    single_blas_thread()


def default_max_iter(optimizer: str) -> int:
    return ADAMW_STEPS if optimizer == "adamw" else CONVERGED


def curve_scales(curves: Sequence[LossCurve]) -> tuple[float, float]:
    """(loss unit, LR unit) of `curves` relative to the scale the AdamW step sizes were set at."""
    return (lowest_loss(curves) / ADAMW_REFERENCE_LOSS,
            max(float(c.lrs.max()) for c in curves) / ADAMW_REFERENCE_LR)


def natural_from_unitless(model: LawModel, curves: Sequence[LossCurve]) -> Callable[[dict], dict]:
    """The map from the parameters AdamW steps on to the law's natural ones, for these curves.

    Scaling the losses by s and the LRs by r leaves the multi-power law's predictions unchanged when
    L0 goes with s, A with s*r^alpha (S1 is an LR area), B with s/r (it multiplies LR drops) and C with
    r^(gamma - 1) (C*eta^-gamma*S_k is a pure number). AdamW moves each parameter by about its step
    size whatever the gradient's scale, so it steps on L0/s, A/(s*r^alpha), B*r/s, C/r^(gamma-1) and
    the exponents, with s and r the curves' loss and LR units (`curve_scales`): the same path whatever
    the units, and on curves at the authors' scale (s = r = 1) exactly their natural parameters.
    Parameters of other laws are scaled by s unless they are exponents."""
    s, r = curve_scales(curves)

    def natural(u: dict) -> dict:
        out = {}
        for n, v in u.items():
            if n in EXPONENTS:
                out[n] = v
            elif n == "A" and "alpha" in u:
                out[n] = v * s * r ** u["alpha"]
            elif n == "B":
                out[n] = v * s / r
            elif n == "C" and "gamma" in u:
                out[n] = v * r ** (u["gamma"] - 1.0)
            else:
                out[n] = v * s
        return out

    return natural


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
    """AdamW from `start` on the parameters in the curves' units (`natural_from_unitless`; on the
    authors' scale, the natural parameters), projected into the bounds after every step. The path
    records, after each step, the lowest-objective parameters seen so far; it ends early once
    `patience` steps in a row bring no improvement."""
    objective = Objective(model, curves)
    box = model.natural_bounds(lowest_loss(curves))
    natural = natural_from_unitless(model, curves)
    start = {n: float(np.clip(start[n], *box[n])) for n in model.param_names}
    # unitless = natural / unit; the unit of A and C depends on alpha and gamma, which natural() reads
    unit = {n: 1.0 if n in EXPONENTS else natural({m: (start[m] if m in EXPONENTS else 1.0) for m in model.param_names})[n]
            for n in model.param_names}
    params = {n: torch.tensor(start[n] / unit[n], dtype=torch.float64, requires_grad=True) for n in model.param_names}
    optimizer = torch.optim.AdamW(
        [{"params": [params[n] for n in model.param_names if n not in EXPONENTS], "lr": ADAMW_LR_SCALES},
         {"params": [params[n] for n in model.param_names if n in EXPONENTS], "lr": ADAMW_LR_EXPONENTS}],
        weight_decay=ADAMW_WEIGHT_DECAY)

    path = FitPath([], [])
    since_best = 0
    for _ in range(steps + 1):
        optimizer.zero_grad()
        nat = natural(params)
        value = objective.natural(nat)
        current = float(value.detach())
        if not path.zs and not np.isfinite(current):
            raise HetronError(f"{model.name}: the objective is not finite at the start {start}")
        if np.isfinite(current) and (not path.zs or current < path.objectives[-1]):
            path.zs.append(model.to_z({n: float(t.detach()) for n, t in nat.items()}))
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
        with torch.no_grad():   # project into the bounds, in natural units (exponents first: the units use them)
            for n in sorted(model.param_names, key=lambda m: m not in EXPONENTS):
                if n in EXPONENTS:
                    params[n].clamp_(*box[n])
                    continue
                factor = float(natural({m: (float(params[m]) if m in EXPONENTS else 1.0) for m in model.param_names})[n])
                params[n].clamp_(box[n][0] / factor, box[n][1] / factor)
    return path


def fit_paths(model: LawModel, curves: Sequence[LossCurve], max_iter: int | None = None, optimizer: str = "lbfgs",
              on_start: Callable[[int], None] | None = None, extra_starts: Sequence[dict] = (),
              only_extra: bool = False, from_informed: bool = False) -> list[FitPath]:
    """The optimisation paths of `optimizer` (see the module doc); AdamW runs one path from the
    informed start, or one from each extra start with only_extra. from_informed: L-BFGS-B too runs
    one path, from the informed start (what "auto" compares with AdamW)."""
    one_compute_thread()
    if optimizer not in OPTIMIZERS:
        raise HetronError(f"unknown optimizer {optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
    max_iter = default_max_iter(optimizer) if max_iter is None else max_iter
    if optimizer == "lbfgs" and from_informed and not (only_extra and extra_starts):
        extra_starts, only_extra = [informed_start(model, curves)], True
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
            only_extra: bool = False, from_informed: bool = False) -> FitResult:
    """Fit `model` to `curves` jointly with `optimizer`; the best start after at most max_iter
    iterations (default: L-BFGS-B to convergence, AdamW's 200 steps). optimizer="auto": the
    optimiser and stop `select_fit` chooses on these curves (max_iter, if given, fixes the stop),
    then the fit on all of them; the result's `selection` holds the validation scores."""
    if not curves:
        raise HetronError("no curves to fit")
    check_optimizer(optimizer)
    if optimizer == AUTO:
        t0 = time.perf_counter()
        stops = None if max_iter is None else {o: (max_iter,) for o in OPTIMIZERS}
        selection = select_fit(model, curves, stops)
        result = fit_law(model, curves, selection["max_iter"], selection["optimizer"], on_start, from_informed=True)
        result.selection, result.seconds = selection, time.perf_counter() - t0
        return result
    t0 = time.perf_counter()
    max_iter = default_max_iter(optimizer) if max_iter is None else max_iter
    paths = fit_paths(model, curves, max_iter, optimizer, on_start, extra_starts, only_extra, from_informed)
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


AUTO_STOPS = {"adamw": STOP_CANDIDATES["adamw"], "lbfgs": (10, 20, 30, 50, 75, 100)}


def _fold_scores(model: LawModel, train: Sequence[LossCurve], held_out: LossCurve,
                 stops: dict[str, tuple[int, ...]]) -> dict[str, dict[int, float]]:
    """One fold of `select_fit`: the held-out mean relative error of every (optimiser, stop)."""
    one_compute_thread()
    start = informed_start(model, train)
    out = {}
    for o, ks in stops.items():
        paths = fit_paths(model, train, max(ks), o, extra_starts=[start], only_extra=True)
        out[o] = {}
        for k in ks:
            _, z, _ = best_at(paths, k)
            params = {n: float(v) for n, v in model.from_z(z).items()}
            out[o][k] = curve_metrics(predict_curve(model, params, held_out), held_out.loss)["mean_rel_err"]
    return out


_FOLD_JOB: tuple | None = None   # (model, folds, stops) for forked fold workers


def _fold_worker(i: int) -> dict:
    model, folds, stops = _FOLD_JOB
    _, train, held_out = folds[i]
    return _fold_scores(model, train, held_out, stops)


def _map_folds(model: LawModel, folds: list, stops: dict, workers: int | None):
    """Each fold's scores, in order: in `workers` forked processes (default: up to 2, as the
    machine's cores allow), or in this process with workers=1 or where fork is unavailable."""
    import multiprocessing
    import os

    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    workers = min(workers, len(folds))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        global _FOLD_JOB
        _FOLD_JOB = (model, folds, stops)
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                yield from pool.imap(_fold_worker, range(len(folds)))
        finally:
            _FOLD_JOB = None
        return
    for _, train, held_out in folds:
        yield _fold_scores(model, train, held_out, stops)


def select_fit(model: LawModel, curves: Sequence[LossCurve], stops: dict[str, Sequence[int]] | None = None,
               on_fold: Callable[[int], None] | None = None, tail_fraction: float = TAIL_FRACTION,
               workers: int | None = None) -> dict:
    """Choose the optimiser and its stop ("auto") by validation on the fitting curves alone.

    Folds (`validation_folds` with whole=True): each fitting curve held out whole (when there are two
    or more) and each curve's last `tail_fraction` held out while its head stays in. In each fold the
    law's informed start is fitted on the fold's training curves, then both candidates run from it:
    the AdamW procedure (its steps in `stops["adamw"]`, default 20..200) and L-BFGS-B (default 10..100
    iterations). Each (optimiser, stop) is scored by the held-out points' mean relative error averaged
    over all folds; the lowest wins (to 6 digits; then AdamW, then the smaller stop). The curves a
    user means to predict are never seen. The folds run in `workers` processes (see _map_folds);
    the result does not depend on it."""
    stops = {o: tuple(v) for o, v in (AUTO_STOPS if stops is None else stops).items()}
    for o, v in stops.items():
        if o not in OPTIMIZERS or not v or min(v) < 1:
            raise HetronError(f"select_fit: bad candidate stops {o}: {v}")
    folds = validation_folds(curves, tail_fraction, whole=True)
    if not folds:
        raise HetronError("choosing the optimiser by validation needs two or more fitting curves, or curves long "
                          "enough to hold out a tail (17+ points); fix it with --optimizer adamw or lbfgs")
    one_compute_thread()
    t0 = time.perf_counter()
    scores = {o: {k: [] for k in v} for o, v in stops.items()}
    for i, fold_scores in enumerate(_map_folds(model, folds, stops, workers)):
        for o, by_k in fold_scores.items():
            for k, v in by_k.items():
                scores[o][k].append(v)
        if on_fold:
            on_fold(i)
    whole = [j for j, (label, _, _) in enumerate(folds) if not label.startswith("hold out the tail")]
    tail = [j for j in range(len(folds)) if j not in whole]

    def mean_over(which: list[int]) -> dict:
        return {o: {k: float(np.mean([v[j] for j in which])) for k, v in by_k.items()} for o, by_k in scores.items()} \
            if which else {}

    mean = mean_over(list(range(len(folds))))
    best_opt, best_k = min(((o, k) for o in stops for k in stops[o]),
                           key=lambda ok: (round(mean[ok[0]][ok[1]], 6), ok[0] != "adamw", ok[1]))
    return {"optimizer": best_opt, "max_iter": int(best_k), "start": "informed",
            "validation_mean_rel_err": mean[best_opt][best_k],
            "scores": mean, "whole_curve_folds": mean_over(whole), "tail_folds": mean_over(tail),
            "per_fold": {label: {o: {k: scores[o][k][j] for k in stops[o]} for o in stops}
                         for j, (label, _, _) in enumerate(folds)},
            "folds": len(folds), "seconds": time.perf_counter() - t0}
