"""Live-forecast accuracy (issue 9 item 5): the predicted final loss from the first 30/50/70/90% of
real mpl-25M curves, fitted the way the trainer's forecast does (L-BFGS-B, one generic start) and
with the multi-power law's AdamW procedure, against the curve's real last loss. Prints each signed
relative error and, per optimiser, the mean absolute one. Everything printed is measured in this run.

    .venv/bin/python benchmarks/bench_forecast.py [--curves cosine_24000,wsd_20000_24000,...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from pretrain.scaling_law.forecast import forecast_final_loss
from pretrain.scaling_law.reference_curves import load_mpl_25m

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HETRON_SHARED_DATA", REPO.parent / "shared" / "data")) / "loss-curves" / "mpl-25M"
OPTIMIZERS = ("lbfgs", "adamw")
FRACTIONS = (0.3, 0.5, 0.7, 0.9)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curves", default="cosine_24000,wsd_20000_24000,wsdcon_3,cosine_72000")
    ap.add_argument("--quick", action="store_true", help="reduced mode: cosine_24000 seen to 50%% and 90%% only")
    args = ap.parse_args(argv)
    fractions = (0.5, 0.9) if args.quick else FRACTIONS
    if args.quick:
        args.curves = "cosine_24000"
    curves = load_mpl_25m(DATA)
    errors: dict[str, list[float]] = {o: [] for o in OPTIMIZERS}
    print(f"{'curve':<18} {'seen':>5}  " + "  ".join(f"{o + ' rel err (s)':>22}" for o in OPTIMIZERS), flush=True)
    for name in args.curves.split(","):
        c = curves[name]
        lrs = c.lrs[:c.steps[-1] + 1]   # the schedule ends at the last logged step
        for frac in fractions:
            n = int(len(c.steps) * frac)
            cells = []
            for optimizer in OPTIMIZERS:
                t0 = time.perf_counter()
                f = forecast_final_loss(c.steps[:n], c.loss[:n], lrs, c.warmup_steps, optimizer=optimizer)
                rel = (f.final_loss - c.loss[-1]) / c.loss[-1]
                errors[optimizer].append(abs(rel))
                cells.append(f"{rel:+.4f} ({time.perf_counter() - t0:4.1f} s)")
            print(f"{name:<18} {frac:5.0%}  " + "  ".join(f"{cell:>22}" for cell in cells), flush=True)
    for optimizer in OPTIMIZERS:
        print(f"mean |relative error| of the final-loss forecast, {optimizer}: {np.mean(errors[optimizer]):.4f}")
    ratio = np.mean(errors["adamw"]) / np.mean(errors["lbfgs"])
    print(f"ratio adamw / lbfgs: {ratio:.2f} (above 1: the trainer's L-BFGS-B forecast is the more accurate)")
    print(f"RATIO forecast mean |rel err|, adamw / lbfgs: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
