"""Loss curves from files: CSV (step,lr,loss), a hetron run folder (metrics.jsonl) or TensorBoard
events; each becomes a LossCurve with the full per-step LR schedule the laws need.

The per-step schedule comes from a ScheduleSpec when one is attached (`PATH@SPEC`, SPEC a YAML file
or key=value,...), else it is reconstructed from the logged (possibly sampled) LRs: linear warmup
from 0 over the stated warmup steps, then linear interpolation between the logged LRs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from pretrain.errors import HetronError
from pretrain.schedules.spec import ScheduleSpec, parse_spec_text

MIN_POINTS = 5
CONFIG_NAMES = ("config.yaml", "resolved_config.yaml", "config.resolved.yaml")


@dataclass(frozen=True)
class LossCurve:
    name: str
    steps: np.ndarray        # int, strictly increasing
    loss: np.ndarray
    lrs: np.ndarray          # LR of every step 0..len-1, len > steps[-1]
    warmup_steps: int
    source: str = ""


def curve_from_arrays(name: str, steps, loss, lrs, warmup_steps: int, source: str = "") -> LossCurve:
    steps = np.asarray(steps, dtype=np.int64)
    loss = np.asarray(loss, dtype=np.float64)
    lrs = np.asarray(lrs, dtype=np.float64)
    check_points(source or name, steps.astype(np.float64), loss)
    if len(lrs) <= steps[-1]:
        raise HetronError(f"{source or name}: the schedule has {len(lrs)} steps, shorter than the curve "
                          f"(last step {steps[-1]})")
    if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
        raise HetronError(f"{source or name}: the schedule has negative or non-finite LRs")
    return LossCurve(name, steps, loss, lrs, int(warmup_steps), source)


def check_points(where: str, steps: np.ndarray, loss: np.ndarray, lr: np.ndarray | None = None) -> None:
    for label, values in (("step", steps), ("loss", loss), ("lr", lr)):
        if values is None:
            continue
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise HetronError(f"{where}: {label} is NaN or not a number in data row {bad[0] + 1}")
    if len(steps) < MIN_POINTS:
        raise HetronError(f"{where}: only {len(steps)} points; at least {MIN_POINTS} are needed to fit or compare")
    if np.any(steps < 0) or np.any(steps != np.round(steps)):
        raise HetronError(f"{where}: steps must be non-negative integers")
    gaps = np.diff(steps)
    if np.any(gaps == 0):
        i = int(np.flatnonzero(gaps == 0)[0])
        raise HetronError(f"{where}: step {int(steps[i])} is repeated (data rows {i + 1} and {i + 2})")
    if np.any(gaps < 0):
        i = int(np.flatnonzero(gaps < 0)[0])
        raise HetronError(f"{where}: steps are not sorted (step {int(steps[i + 1])} after {int(steps[i])}, data row {i + 2})")
    if np.any(loss <= 0):
        raise HetronError(f"{where}: loss must be positive (the laws are fitted on log loss)")
    if lr is not None and np.any(lr < 0):
        raise HetronError(f"{where}: lr must be >= 0")


def reconstruct_lrs(steps: np.ndarray, lr: np.ndarray, warmup_steps: int, num_steps: int) -> np.ndarray:
    """Per-step LRs from LRs logged at some steps: linear warmup from 0 to the LR at warmup_steps,
    then linear interpolation between logged values (held constant past the ends)."""
    after = steps >= warmup_steps
    xs, ys = steps[after].astype(np.float64), lr[after]
    if len(xs) == 0:
        raise HetronError(f"no logged LR after the warmup (warmup_steps={warmup_steps})")
    if warmup_steps > 0:
        xs, ys = np.concatenate([[0.0, warmup_steps], xs]), np.concatenate([[0.0, ys[0]], ys])
        if xs[2] == warmup_steps:
            xs, ys = np.delete(xs, 1), np.delete(ys, 1)
    return np.interp(np.arange(num_steps), xs, ys)


def split_source(arg: str) -> tuple[str, str | None]:
    """'PATH@SPEC' -> (PATH, SPEC); a plain PATH -> (PATH, None)."""
    if "@" in arg and not os.path.exists(arg):
        path, spec = arg.split("@", 1)
        return path, spec
    return arg, None


def load_curve(arg: str, warmup_steps: int | None = None, name: str | None = None) -> LossCurve:
    """A curve from CSV, run folder or TensorBoard events, optionally `@SPEC` for its schedule."""
    path, spec_text = split_source(arg)
    if not os.path.exists(path):
        raise HetronError(f"{path}: no such file or folder")
    name = name or os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "metrics.jsonl")):
        steps, loss, lr = read_metrics_jsonl(os.path.join(path, "metrics.jsonl"))
        if spec_text is None:
            spec_text = next((os.path.join(path, n) for n in CONFIG_NAMES if os.path.exists(os.path.join(path, n))), None)
    elif os.path.isdir(path) or os.path.basename(path).startswith("events.out.tfevents"):
        steps, loss, lr = read_tensorboard(path)
    else:
        steps, loss, lr = read_csv(path, need_lr=spec_text is None)
    check_points(path, steps, loss, lr)
    steps = steps.astype(np.int64)
    num_steps = int(steps[-1]) + 1
    if spec_text is not None:
        spec = spec_for(path, spec_text)
        if spec.total_steps < num_steps:
            raise HetronError(f"{path}: the schedule has {spec.total_steps} steps (total_steps), shorter than the "
                              f"curve (last step {steps[-1]})")
        lrs = spec.lrs(max(num_steps, spec.total_steps))
        if lr is not None:
            check_lr_agrees(path, steps, lr, lrs)
        return curve_from_arrays(name, steps, loss, lrs, spec.warmup_steps, path)
    if lr is None:
        raise HetronError(f"{path}: no lr values and no schedule; attach one as {path}@SPEC")
    if warmup_steps is None:
        raise HetronError(f"{path}: state the warmup (--warmup STEPS) or attach a schedule as {path}@SPEC")
    return curve_from_arrays(name, steps, loss, reconstruct_lrs(steps, lr, warmup_steps, num_steps), warmup_steps, path)


def spec_for(path: str, spec_text: str) -> ScheduleSpec:
    try:
        return parse_spec_text(spec_text)
    except HetronError as exc:
        raise HetronError(f"{path}: schedule {exc}") from None


def check_lr_agrees(path: str, steps: np.ndarray, lr: np.ndarray, lrs: np.ndarray) -> None:
    expected = lrs[steps]
    off = np.abs(lr - expected) > 0.01 * np.maximum(np.abs(expected), 1e-12)
    if np.any(off):
        i = int(np.flatnonzero(off)[0])
        raise HetronError(f"{path}: logged lr {lr[i]:.6g} at step {steps[i]} disagrees with the schedule's "
                          f"{expected[i]:.6g}; fix the schedule spec")


def read_csv(path: str, need_lr: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise HetronError(f"{path}: empty file; expected a header step,lr,loss")
    header = [h.strip().lower() for h in rows[0]]
    required = ["step", "loss"] + (["lr"] if need_lr else [])
    missing = [c for c in required if c not in header]
    if missing:
        raise HetronError(f"{path}: missing column {', '.join(missing)} (header: {','.join(rows[0])})")
    cols = {c: header.index(c) for c in ("step", "loss", "lr") if c in header}
    data = {c: np.empty(len(rows) - 1) for c in cols}
    for r, row in enumerate(rows[1:], start=2):
        for c, i in cols.items():
            try:
                data[c][r - 2] = float(row[i])
            except (ValueError, IndexError):
                raise HetronError(f"{path}: line {r}: {c} is not a number ({row[i] if i < len(row) else 'missing'!r})") from None
    return data["step"], data["loss"], data.get("lr")


def read_metrics_jsonl(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    steps, loss, lr = [], [], []
    with open(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise HetronError(f"{path}: line {n} is not JSON") from None
            if "loss" in rec and "step" in rec:
                steps.append(rec["step"])
                loss.append(rec["loss"])
                lr.append(rec.get("lr", np.nan))
    if not steps:
        raise HetronError(f"{path}: no lines with step and loss")
    lr_arr = np.asarray(lr, dtype=np.float64)
    return np.asarray(steps, dtype=np.float64), np.asarray(loss, dtype=np.float64), None if np.all(np.isnan(lr_arr)) else lr_arr


LOSS_TAGS = ("loss", "train/loss", "lm loss", "train/lm_loss", "train_loss")
LR_TAGS = ("lr", "train/lr", "learning-rate", "learning_rate", "train/learning_rate")


def read_tensorboard(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    loss_tag = next((t for t in LOSS_TAGS if t in tags), None)
    if loss_tag is None:
        raise HetronError(f"{path}: no loss scalar in the TensorBoard events (looked for {', '.join(LOSS_TAGS)}; found {', '.join(tags) or 'none'})")
    events = acc.Scalars(loss_tag)
    steps = np.asarray([e.step for e in events], dtype=np.float64)
    loss = np.asarray([e.value for e in events], dtype=np.float64)
    lr_tag = next((t for t in LR_TAGS if t in tags), None)
    lr = None
    if lr_tag is not None:
        by_step = {e.step: e.value for e in acc.Scalars(lr_tag)}
        lr = np.asarray([by_step.get(int(s), np.nan) for s in steps], dtype=np.float64)
        if np.any(np.isnan(lr)):
            lr = None
    return steps, loss, lr
