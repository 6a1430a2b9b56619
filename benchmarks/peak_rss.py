"""Peak resident memory of one `hetron train` process (one CPU rank), for a baseline configuration and
the same with extra overrides, measured in the same run; prints both and their ratio.

    .venv/bin/python benchmarks/peak_rss.py --shards DIR [--with lisa.layers=2] [OVERRIDE ...]

The default baseline is the 125m preset at a small vocabulary and sequence length, one step.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HETRON = Path(sys.executable).with_name("hetron")
BASE = ["model.preset=125m", "model.seq_length=256", "data.global_batch_tokens=512", "data.vocab_size=512",
        "train.steps=1", "train.eval_every=0", "checkpoint.every=1000", "run.tensorboard=false", "run.plot=false",
        "resume=never", "launch.nproc=1", "--no-progress"]


def peak_rss_mb(overrides: list[str]) -> float:
    """Run training in a child and return its peak RSS (a fresh helper process per run, so that
    RUSAGE_CHILDREN holds that run's maximum alone)."""
    code = (f"import resource, subprocess, sys; p = subprocess.run({[str(HETRON), 'train', *overrides]!r}, "
            "capture_output=True, text=True); sys.stderr.write(p.stderr[-2000:] if p.returncode else ''); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"peak_rss: training failed: {proc.stderr.strip().splitlines()[-1:]}")
    return int(proc.stdout.strip()) / 1024


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--with", dest="variant", default="lisa.layers=2", help="comma-separated overrides to compare")
    ap.add_argument("--quick", action="store_true",
                    help="reduced mode: the tiny preset at the shards' own vocabulary and context, not 125m")
    ap.add_argument("overrides", nargs="*", help="applied to both runs")
    args = ap.parse_args(argv)
    reduced = ("model.preset=", "model.seq_length=", "data.vocab_size=", "data.global_batch_tokens=")
    base_args = ([a for a in BASE if not a.startswith(reduced)] + ["model.preset=tiny", "data.global_batch_tokens=1024"]
                 if args.quick else BASE)
    with tempfile.TemporaryDirectory() as tmp:
        common = base_args + [f"data.shards={args.shards}", f"run.dir={os.path.join(tmp, 'run')}", *args.overrides]
        base = peak_rss_mb(common)
        variant = peak_rss_mb(common + args.variant.split(","))
    print(f"peak RSS, baseline:          {base:8.0f} MB")
    print(f"peak RSS, with {args.variant}: {variant:8.0f} MB")
    print(f"ratio: {variant / base:.3f}")
    print(f"RATIO peak RSS with {args.variant} / baseline: {variant / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
