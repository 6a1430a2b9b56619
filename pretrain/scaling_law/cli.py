"""`hetron fit-law`: fit the annealing / multi-power law to loss curves and predict others.

    hetron fit-law --law mpl --fit a.csv b.csv --predict c.csv --json out.json --plot out.png
    hetron fit-law predict --params out.json --schedule kind=cosine,... --at 1000,5000
    hetron fit-law optimize --params out.json --steps 24000 --peak-lr 3e-4 --warmup 2160
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Sequence

import numpy as np

from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError
from pretrain.scaling_law.curves import LossCurve, load_curve
from pretrain.scaling_law.metrics import averaged, curve_metrics, pooled

# torch (behind the laws) is imported only once the inputs have been read: bad input fails fast
LAWS = ("mpl", "anneal")
DEFAULT_LAMBDA = 0.999   # = laws.DEFAULT_LAMBDA


def fit_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="hetron fit-law", description="Fit a scaling law to loss curves; "
                                "see also `hetron fit-law predict -h` and `hetron fit-law optimize -h`.")
    p.add_argument("--law", default="mpl", choices=LAWS + ("both",), help="multi-power law, annealing law, or both")
    p.add_argument("--fit", nargs="+", required=True, metavar="CURVE",
                   help="curves to fit jointly: CSV (step,lr,loss), run folder (metrics.jsonl) or TensorBoard "
                        "events; PATH@SPEC attaches the exact schedule (YAML file or key=value,...)")
    p.add_argument("--predict", nargs="*", default=[], metavar="CURVE", help="curves to predict (not fitted)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warmup steps of curves without a schedule spec (their LR is reconstructed from the log)")
    p.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA, help="annealing-law momentum")
    p.add_argument("--optimizer", default=None, choices=("auto", "lbfgs", "adamw"),
                   help="auto: choose between adamw and lbfgs (both from the informed start) and their stop by "
                        "validation on the --fit curves alone (each held out whole, and each one's last 30%%); "
                        "adamw: the multi-power-law authors' procedure (informed start, AdamW, at most 200 steps, "
                        "patience 20); lbfgs: L-BFGS-B from several generic starts to convergence "
                        "(default: auto for mpl, lbfgs for anneal)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--max-iter", type=int, default=None,
                      help="early stop: L-BFGS-B iterations or AdamW steps (default: converge / 200; with auto, "
                           "fixes the stop and leaves only the optimiser to choose)")
    stop.add_argument("--select-stop", action="store_true",
                      help="with --optimizer adamw|lbfgs: choose its early stop by validation on the --fit curves "
                           "(each one's last 30%% held out in turn); auto always chooses its stop")
    p.add_argument("--json", default=None, help="write parameters and metrics here")
    p.add_argument("--plot", default=None, help="PNG of data, fit and prediction (one per law: NAME-LAW.png with --law both)")
    return p


def load_all(args: Sequence[str], warmup: int | None) -> list[LossCurve]:
    curves = [load_curve(a, warmup) for a in args]
    names = [c.name for c in curves]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        # same file name in different folders: tell them apart by the folder
        curves = [LossCurve(f"{os.path.basename(os.path.dirname(os.path.abspath(c.source)))}/{c.name}"
                            if c.name in dupes else c.name, c.steps, c.loss, c.lrs, c.warmup_steps, c.source)
                  for c in curves]
    return curves


def run_fit(law: str, fit_curves: list[LossCurve], predict_curves: list[LossCurve], args) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pretrain.scaling_law.fit import (
        AUTO,
        OPTIMIZERS,
        default_optimizer,
        fit_law,
        predict_curve,
        select_fit,
        select_max_iter,
        validation_folds,
    )
    from pretrain.scaling_law.models import law_model

    model = law_model(law, args.lam)
    optimizer = args.optimizer or default_optimizer(law)
    console = Console(stderr=True)
    selection = None
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        if optimizer == AUTO:
            task = progress.add_task(f"{law}: choosing the optimiser and stop (validation folds)",
                                     total=len(validation_folds(fit_curves, whole=True)))
            stops = None if args.max_iter is None else {o: (args.max_iter,) for o in OPTIMIZERS}
            selection = select_fit(model, fit_curves, stops, on_fold=lambda i: progress.advance(task))
        elif args.select_stop:
            task = progress.add_task(f"{law}: choosing the early stop (validation folds)",
                                     total=len(validation_folds(fit_curves)))
            selection = select_max_iter(model, fit_curves, optimizer=optimizer,
                                        on_fold=lambda i: progress.advance(task))
        max_iter = selection["max_iter"] if selection else args.max_iter
        chosen = selection["optimizer"] if selection else optimizer
        from_informed = optimizer == AUTO
        starts = len(model.starts) if chosen == "lbfgs" and not from_informed else 1
        task = progress.add_task(f"{law}: fitting {len(fit_curves)} curve(s) ({chosen})", total=starts)
        result = fit_law(model, fit_curves, max_iter, chosen, on_start=lambda i: progress.advance(task),
                         from_informed=from_informed)
    result.selection = selection
    result.seconds = time.perf_counter() - t0   # selection included
    predictions = {c.name: predict_curve(model, result.params, c) for c in fit_curves + predict_curves}
    per_curve = {c.name: curve_metrics(predictions[c.name], c.loss) for c in predict_curves}
    out = {"law": law, "lambda": args.lam if law == "anneal" else None, "params": result.params,
           "fit": result.to_dict() | {"seconds": result.seconds}}
    if predict_curves:
        out["predict"] = {"curves": per_curve, "average": averaged(list(per_curve.values())),
                          "pooled": pooled([predictions[c.name] for c in predict_curves],
                                           [c.loss for c in predict_curves])}
    out["_predictions"] = predictions
    return out


def print_table(result: dict, fit_curves: list[LossCurve], predict_curves: list[LossCurve]) -> None:
    from rich.console import Console
    from rich.table import Table

    law, fit = result["law"], result["fit"]
    table = Table(title=f"{law} law: fit in {fit['seconds']:.1f} s, {fit['optimizer']}, {fit['iterations']} iterations "
                        f"(max {fit['max_iter']}), start {fit['start']}")
    for col in ("curve", "role", "R^2", "mean rel err", "worst rel err", "points"):
        table.add_column(col, justify="left" if col in ("curve", "role") else "right")

    def row(name: str, role: str, m: dict) -> None:
        table.add_row(name, role, f"{m['r2']:.5f}", f"{m['mean_rel_err']:.5f}", f"{m['max_rel_err']:.5f}",
                      str(m.get("points", "")))

    for c in fit_curves:
        row(c.name, "fit", fit["metrics"][c.name])
    if predict_curves:
        for c in predict_curves:
            row(c.name, "predict", result["predict"]["curves"][c.name])
        row("average over predicted", "", result["predict"]["average"])
        row("pooled predicted points", "", result["predict"]["pooled"])
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print("params: " + ", ".join(f"{k}={v:.5g}" for k, v in result["params"].items()))
    if fit.get("selection"):
        sel = fit["selection"]
        if "scores" in sel:   # auto: optimiser and stop
            console.print(f"chosen by validation on the fitting curves only ({sel['folds']} folds, {sel['seconds']:.1f} s): "
                          f"{sel['optimizer']} from the informed start, max_iter={sel['max_iter']}, held-out mean rel "
                          f"err {sel['validation_mean_rel_err']:.5f}")
            for o, by_k in sel["scores"].items():
                console.print(f"  {o}: " + ", ".join(f"{k}: {v:.5f}" for k, v in by_k.items()))
        else:
            console.print(f"early stop chosen by validation on the fitting curves: max_iter={sel['max_iter']} "
                          f"({sel['seconds']:.1f} s)")


def plot_path(base: str, law: str, many: bool) -> str:
    if not many:
        return base
    root, ext = os.path.splitext(base)
    return f"{root}-{law}{ext or '.png'}"


def main_fit(argv: list[str]) -> int:
    args = fit_parser().parse_args(argv)
    if args.max_iter is not None and args.max_iter < 1:
        raise HetronError(f"--max-iter {args.max_iter}: must be at least 1")
    fit_curves = load_all(args.fit, args.warmup)
    predict_curves = load_all(args.predict, args.warmup)
    laws = LAWS if args.law == "both" else (args.law,)
    report = {}
    for law in laws:
        result = run_fit(law, fit_curves, predict_curves, args)
        predictions = result.pop("_predictions")
        print_table(result, fit_curves, predict_curves)
        if args.plot:
            from pretrain.scaling_law.plot import plot_fit

            path = plot_path(args.plot, law, len(laws) > 1)
            plot_fit(law, fit_curves, predict_curves, predictions, path)
            print(f"wrote {path}")
        report[law] = result
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def read_params(path: str, law: str | None) -> tuple[str, dict[str, float], float]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise HetronError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise HetronError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and "params" not in data:   # the --json report, keyed by law
        if law is None:
            if len(data) != 1:
                raise HetronError(f"{path}: holds laws {', '.join(data)}; choose one with --law")
            law = next(iter(data))
        if law not in data:
            raise HetronError(f"{path}: no parameters for law {law!r} (has {', '.join(data)})")
        data = data[law]
    if not isinstance(data, dict) or "params" not in data or "law" not in data:
        raise HetronError(f"{path}: expected the JSON written by `hetron fit-law --json`")
    return data["law"], {k: float(v) for k, v in data["params"].items()}, float(data.get("lambda") or DEFAULT_LAMBDA)


def main_predict(argv: list[str]) -> int:
    from pretrain.schedules.spec import parse_spec_text

    p = OneLineErrorParser(prog="hetron fit-law predict",
                                description="predicted loss of a schedule from saved law parameters")
    p.add_argument("--params", required=True, help="JSON written by `hetron fit-law --json`")
    p.add_argument("--law", default=None, choices=LAWS, help="which law, when the JSON holds both")
    p.add_argument("--schedule", required=True, help="schedule spec: YAML file or key=value,...")
    p.add_argument("--at", default=None, help="comma-separated steps (default: 10 evenly spaced and the last)")
    p.add_argument("--json", default=None, help="write {step: loss} here")
    args = p.parse_args(argv)
    law, params, lam = read_params(args.params, args.law)
    spec = parse_spec_text(args.schedule)
    if args.at:
        try:
            steps = np.asarray([int(float(s)) for s in args.at.split(",") if s.strip()])
        except ValueError:
            raise HetronError(f"--at {args.at!r}: expected comma-separated integer steps") from None
    else:
        steps = np.unique(np.linspace(spec.warmup_steps, spec.total_steps - 1, 11).astype(int))
    if len(steps) == 0 or steps.min() < 1 or steps.max() >= spec.total_steps:
        raise HetronError(f"--at: steps must lie in 1..{spec.total_steps - 1}: steps index the schedule from 0, "
                          f"so the last of total_steps={spec.total_steps} is step {spec.total_steps - 1}")
    from pretrain.scaling_law.laws import predict_loss

    order = np.argsort(steps)
    losses = np.empty(len(steps))
    losses[order] = predict_loss(law, params, spec.lrs(), steps[order], spec.warmup_steps, lam)
    print(f"{law} law, schedule {spec.kind} ({spec.total_steps} steps)")
    for s, loss in zip(steps, losses):
        print(f"  step {s:>9d}  lr {spec.lr(int(s)):.4g}  predicted loss {loss:.5f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"law": law, "schedule": spec.to_dict(),
                       "predictions": {str(int(s)): float(v) for s, v in zip(steps, losses)}}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def main_optimize(argv: list[str]) -> int:
    from pretrain.scaling_law.laws import MultiPowerParams
    from pretrain.scaling_law.optimal_schedule import optimize_schedule

    p = OneLineErrorParser(prog="hetron fit-law optimize",
                                description="the monotone schedule with the lowest predicted final loss (multi-power law)")
    p.add_argument("--params", required=True, help="JSON written by `hetron fit-law --law mpl --json`")
    p.add_argument("--steps", type=int, required=True, help="step budget (total steps)")
    p.add_argument("--peak-lr", type=float, required=True)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--min-lr", type=float, default=0.0, help="floor of the optimised schedule")
    p.add_argument("--knots", type=int, default=64)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    law, params, _ = read_params(args.params, "mpl")
    if law != "mpl":
        raise HetronError(f"{args.params}: schedule choice needs multi-power-law parameters, not {law!r}")
    if not 0 <= args.warmup < args.steps - 1:
        raise HetronError(f"--warmup {args.warmup} must be below --steps {args.steps}")
    choice = optimize_schedule(MultiPowerParams(**params), args.steps, args.peak_lr, args.warmup, args.min_lr, args.knots)
    losses = {"optimised": choice.predicted_final_loss} | choice.baselines
    for name, loss in losses.items():
        print(f"  {name:<28} predicted final loss {loss:.5f}")
    if args.plot:
        from pretrain.scaling_law.plot import plot_schedule_choice

        plot_schedule_choice(choice.lrs, {n: s.lrs() for n, s in choice.baseline_specs.items()}, losses, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        marks = np.unique(np.linspace(0, args.steps - 1, 101).astype(int))
        with open(args.json, "w") as fh:
            json.dump({"predicted_final_loss": losses, "lr_at": {str(int(s)): float(choice.lrs[s]) for s in marks}},
                      fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "predict":
        return main_predict(argv[1:])
    if argv and argv[0] == "optimize":
        return main_optimize(argv[1:])
    return main_fit(argv)
