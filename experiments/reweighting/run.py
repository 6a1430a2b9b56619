"""Experiment: uniform vs linupper vs quadratic vs extremes reweighting on the tiny preset, default
corpus, equal token budget, several seeds; held-out loss curves. Writes experiments/reweighting.md
and experiments/reweighting.png.

    python experiments/reweighting/run.py [--seeds 1,2,3] [--steps 80] [--out /tmp/rw-runs]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")


def run(out: Path, strategy: str, seed: int, steps: int, extra: list[str]) -> list[dict]:
    run_dir = out / f"{strategy}-s{seed}"
    if not (run_dir / "summary.json").is_file():
        cmd = [sys.executable, "-m", "pretrain.cli", "train", "model.preset=tiny", f"train.steps={steps}",
               f"seed={seed}", f"run.dir={run_dir}", f"reweight.strategy={strategy}", "reweight.r=0.4",
               f"reweight.burn_in_steps={steps // 8}", "train.eval_every=8", "train.eval_batches=4",
               "data.global_batch_tokens=4096", "checkpoint.every=1000", "run.tensorboard=false", "--no-progress", *extra]
        subprocess.run(cmd, check=True, cwd=HERE.parents[1])
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--out", default="/tmp/hetron-rw-runs")
    args, extra = ap.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    curves = {s: {seed: run(out, s, seed, args.steps, extra) for seed in seeds} for s in STRATEGIES}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = []
    for strategy, by_seed in curves.items():
        evals = [[(r["step"], r["eval_loss"]) for r in rows_ if "eval_loss" in r] for rows_ in by_seed.values()]
        steps = [s for s, _ in evals[0]]
        values = np.array([[v for _, v in e] for e in evals])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=strategy)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        finals = values[:, -1]
        rows.append((strategy, finals.mean(), finals.std(), finals.tolist()))
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (mean ± sd over seeds)")
    ax.set_title(f"Loss reweighting, tiny preset, {len(seeds)} seeds, equal tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE.parent / "reweighting.png", dpi=110)
    base = next(r for r in rows if r[0] == "uniform")
    lines = ["| strategy | final held-out loss (mean) | sd over seeds | minus uniform | per seed |", "|---|---|---|---|---|"]
    for name, m, sd, per in rows:
        lines.append(f"| {name} | {m:.4f} | {sd:.4f} | {m - base[1]:+.4f} | {', '.join(f'{x:.4f}' for x in per)} |")
    (HERE.parent / "reweighting-table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
