"""Peak memory of a reweighted training step against the plain step, as the number of micro-batches
per rank grows (2, 4, 8): one CPU rank, `hetron train` for one step, peak RSS of each run.

The two-pass reweighted step (forward-only pass for the losses, then megatron's forward-backward
with gradient accumulation) holds one micro-batch's activations at a time, like the plain step, so
its peak should not grow with the micro-batch count. `--old-tree DIR` also measures a checkout of an
earlier hetron (e.g. `git worktree add DIR 6e21b18~1`, the held-graph step) in the same run.

    .venv/bin/python benchmarks/bench_reweighting_memory.py --shards DIR [--quick] [--old-tree DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from peak_rss import BASE, peak_rss_mb

REWEIGHT = ["reweight.strategy=linupper", "reweight.r=0.4"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True, help="prepared shards (micro-batches are of their context)")
    ap.add_argument("--micro-batches", default="2,4,8", help="micro-batches per rank to compare")
    ap.add_argument("--old-tree", default="", help="an earlier checkout to measure too (its code, this venv)")
    ap.add_argument("--quick", action="store_true", help="reduced mode: the tiny preset, 2 and 4 micro-batches")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.micro_batches.split(",")]
    context = int(json.loads((Path(args.shards) / "manifest.json").read_text())["max_context"])
    base = [a for a in BASE if not a.startswith("model.seq_length=")] + [f"model.seq_length={context}"]
    if args.quick:
        base = [a for a in base if not a.startswith("model.preset=")] + ["model.preset=tiny"]
        counts = counts[:2]
    variants = {"plain": ({}, []), "two-pass": ({}, REWEIGHT)}
    if args.old_tree:
        variants["held-graph (old tree)"] = ({"PYTHONPATH": os.path.abspath(args.old_tree)}, REWEIGHT)
    peaks: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            # whole documents of <= context tokens fill about n bins of model.seq_length=context tokens
            tokens = context * n
            for name, (env, extra) in variants.items():
                run = os.path.join(tmp, f"{name.split()[0]}-{n}")
                overrides = [*base, f"data.shards={args.shards}", f"run.dir={run}",
                             f"data.global_batch_tokens={tokens}", *extra]
                old = dict(os.environ)
                os.environ.update(env)
                try:
                    peaks[name].append(peak_rss_mb(overrides))
                finally:
                    os.environ.clear()
                    os.environ.update(old)
                print(f"{name:>24} at ~{n} micro-batches: {peaks[name][-1]:8.0f} MB", flush=True)
    for name, values in peaks.items():
        print(f"RATIO {name} peak RSS at {counts[-1]} / at {counts[0]} micro-batches: {values[-1] / values[0]:.3f}")
    for i, n in enumerate(counts):
        print(f"RATIO two-pass / plain peak RSS at ~{n} micro-batches: {peaks['two-pass'][i] / peaks['plain'][i]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
