"""Plots and the results table of the continual-pretraining experiment (EXPERIMENTS.md).

usage: python experiments/continual/plot.py RUNS_DIR OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE1_STEPS = 80
RUNS = {  # run folder -> (label, steps before its first step: init_from runs continue stage 1)
    "a_constant": ("(a) continue at final LR", STAGE1_STEPS),
    "b_rewarm": ("(b) re-warm + re-decay", STAGE1_STEPS),
    "c_rewarm_replay5": ("(c) (b) + 5% replay", STAGE1_STEPS),
    "d_rewarm_replay25": ("(d) (b) + 25% replay", STAGE1_STEPS),
    "e_union": ("(e) from scratch on the union", 0),
}
# held-out keys: (Python, C) per run kind
KEYS = {"e_union": ("eval_loss/union/python", "eval_loss/union/c")}
DEFAULT_KEYS = ("eval_loss/python", "eval_loss/c")


def rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main(runs_dir: str, out_dir: str) -> None:
    runs_dir, out = Path(runs_dir), Path(out_dir)
    stage1 = rows(runs_dir / "stage1")
    fig, (ax_py, ax_c, ax_lr) = plt.subplots(1, 3, figsize=(16, 4.5))
    s1 = [r for r in stage1 if "eval_loss/python" in r]
    ax_py.plot([r["step"] for r in s1], [r["eval_loss/python"] for r in s1], "k-", label="stage 1 (Python)")
    ax_lr.plot([r["step"] for r in stage1], [r["lr"] for r in stage1], "k-", label="stage 1")
    table = []
    for name, (label, offset) in RUNS.items():
        data = rows(runs_dir / name)
        if not data:
            continue
        py_key, c_key = KEYS.get(name, DEFAULT_KEYS)
        ev = [r for r in data if py_key in r]
        steps = [r["step"] + offset for r in ev]
        ax_py.plot(steps, [r[py_key] for r in ev], marker=".", label=label)
        ax_c.plot(steps, [r[c_key] for r in ev], marker=".", label=label)
        ax_lr.plot([r["step"] + offset for r in data], [r["lr"] for r in data], label=label)
        last = ev[-1] if ev else None
        done = data[-1]["step"]
        if last is not None:
            table.append((label, last[py_key], last[c_key], last["step"], done))
    ax_py.set_title("held-out loss, Python (stage 1 data)")
    ax_c.set_title("held-out loss, C (stage 2 data)")
    ax_lr.set_title("learning rate")
    for ax in (ax_py, ax_c, ax_lr):
        ax.set_xlabel("global step")
        ax.axvline(STAGE1_STEPS, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "continual_losses.png", dpi=110)
    print("| run | Python held-out loss | C held-out loss | at step |")
    print("|---|---|---|---|")
    if s1:
        print(f"| end of stage 1 | {s1[-1]['eval_loss/python']:.4f} | - | {s1[-1]['step']} |")
    for label, py, c, step, done in table:
        print(f"| {label} | {py:.4f} | {c:.4f} | {step} of the run{'' if step == done else f' (ran {done})'} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
