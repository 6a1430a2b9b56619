"""C++ kernels vs their pure-Python twins on the planner's real inputs (wikipedia.txt, N=64, 7B),
and plan_step end to end with each; then the cost of building the planner's LP/MILPs as arrays for
highspy's passModel against building the same models through pulp, at N = 64, 256, 1024. Prints
ratios measured in the same run.

    .venv/bin/python benchmarks/bench_planner.py [--lengths FILE] [--gpus 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from parallel import native
from parallel.cost_model import CostModel
from parallel.planner import build_problem, kernels_py, milp, plan_step, repack_milp, solvers
from parallel.planner.batch_bound import build_batch_lp, integral_sequences
from parallel.planner.fast_path import fast_plan

DEFAULT_LENGTHS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seqlens" / "wikipedia.txt"


def best_ms(fn, repeats):
    """Least CPU ms of `repeats` runs (CPU time: other jobs share this machine)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(1000 * (time.process_time() - start))
    return min(times)


def measure_batch(lengths, n, cm, cpp, repeats):
    """(kernel, C++ ms, Python ms) rows for one batch; twins must agree before they are timed."""
    problem = build_problem(lengths, n, cm)
    values, counts = np.unique(problem.lengths, return_counts=True)
    order = np.argsort(problem.lengths, kind="stable")
    tokens_sorted = problem.lengths[order].tolist()
    mb = fast_plan(problem).micro_batches[-1]
    members = np.asarray(mb.members)
    pack_args = (problem.times[members], problem.lengths[members].tolist(), problem.lo[members].tolist(),
                 problem.hi[members].tolist(), list(problem.sizes), n, problem.capacity)
    cases = {
        "bucketing DP (16 buckets)": lambda m: m.bucket_lengths(values.tolist(), counts.tolist(), 16),
        "micro-batch partition DP (m=3)": lambda m: m.partition_microbatches(tokens_sorted, 3),
        "greedy packer (one micro-batch)": lambda m: m.pack_microbatch(*pack_args, 24),
        "anchor fill (one micro-batch)": lambda m: m.fill_microbatch(*pack_args, mb.span_ms),
    }
    rows = []
    for name, case in cases.items():
        assert case(cpp) == case(kernels_py), f"{name}: C++ and Python twin disagree"
        c = best_ms(lambda case=case: case(cpp), repeats)
        py = best_ms(lambda case=case: case(kernels_py), max(1, repeats // 2))
        rows.append((name, c, py))
    c = best_ms(lambda: plan_step(lengths, n, cm, solver="none"), repeats)
    saved = {k: getattr(native, k) for k in ("bucket_lengths", "partition_microbatches", "pack_microbatch",
                                              "fill_microbatch")}
    try:
        for k in saved:
            setattr(native, k, getattr(kernels_py, k))
        py = best_ms(lambda: plan_step(lengths, n, cm, solver="none"), 1)
    finally:
        for k, v in saved.items():
            setattr(native, k, v)
    rows.append(("plan_step fast path, end to end", c, py))
    return rows


def measure_model_building(kept, n, cm, repeats):
    """(model, variables, arrays CPU ms, pulp CPU ms, HiGHS CPU ms for the batch LP) for one batch at N=n."""
    lengths = kept[:512].tolist()
    problem = build_problem(lengths, n, cm)
    greedy = fast_plan(problem)
    biggest = max(greedy.micro_batches, key=lambda mb: len(mb.members))
    members = np.asarray(biggest.members)
    work = problem.lower_bound_ms() - problem.beta * problem.min_micro_batches()
    m = problem.min_micro_batches()
    whole = integral_sequences(problem, greedy.total_ms)
    cases = {
        "FlexSP MILP, 16 buckets (largest micro-batch)": lambda: milp.build_micro_batch_model(problem, members, cm).model,
        f"batch bound ({m} micro-batches, {whole.size} whole)": lambda: build_batch_lp(problem, m, work, greedy.total_ms,
                                                                                      whole).model,
        "re-pack MILP (largest micro-batch)": lambda: repack_milp.build_repack_model(
            problem, biggest, repack_milp.neighbourhood(repack_milp.group_times(problem, biggest)))[0],
    }
    rows = []
    for name, build in cases.items():
        model = build()
        arrays = best_ms(build, repeats)
        via_pulp = best_ms(lambda model=model: solvers.pulp_problem(model), max(1, repeats // 2))
        solve = best_ms(lambda model=model: solvers.solve(model, "highs", 10.0, relax=True), repeats)
        rows.append((name, model.num_cols, model.num_rows, arrays, via_pulp, solve))
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default=str(DEFAULT_LENGTHS))
    p.add_argument("--gpus", type=int, default=64)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="reduced mode: 1 batch, best of 1")
    args = p.parse_args()
    if args.quick:
        args.batches, args.repeats = 1, 1
    if native.BACKEND != "cpp":
        print("parallel._native is not built: nothing to compare", file=sys.stderr)
        return 1
    cpp = __import__("parallel._native", fromlist=["x"])
    cm = CostModel.preset("7b")
    n = args.gpus
    raw = np.loadtxt(args.lengths, dtype=np.int64)
    padded = -(-raw // (2 * n)) * (2 * n)
    kept = padded[padded <= 196608 - 2 * n]
    rows = []
    for b in range(args.batches):
        rows += measure_batch(kept[b * 512:(b + 1) * 512].tolist(), n, cm, cpp, args.repeats)
    print(f"C++ vs Python twin, {args.lengths}, N={n}, 7B, {args.batches} batches of 512 (best of {args.repeats})")
    print(f"{'kernel':<34} {'C++ cpu ms':>16} {'Python cpu ms':>19} {'speedup':>8}   (median over batches)")
    for name in dict.fromkeys(r[0] for r in rows):
        c = statistics.median(r[1] for r in rows if r[0] == name)
        py = statistics.median(r[2] for r in rows if r[0] == name)
        print(f"{name:<34} {c:>16.3f} {py:>19.1f} {py / c:>7.0f}x")
        if name.startswith("plan_step"):
            print(f"RATIO {name}, Python twin / C++ CPU ms: {py / c:.0f}x")
    print()
    print(f"Building the planner's models: NumPy arrays (for Highs.passModel) vs the same model through pulp; "
          f"first batch of 512, best of {args.repeats}, CPU ms")
    print(f"{'N':>5} {'model':<46} {'columns':>8} {'rows':>6} {'arrays ms':>10} {'pulp ms':>9} {'ratio':>6} "
          f"{'HiGHS LP relaxation ms':>23}")
    for gpus in (64, 256, 1024):
        padded_n = -(-raw // (2 * gpus)) * (2 * gpus)
        kept_n = padded_n[padded_n <= 196608 - 2 * gpus]
        for name, cols, nrows, arrays, via_pulp, solve in measure_model_building(kept_n, gpus, cm, args.repeats):
            print(f"{gpus:>5} {name:<46} {cols:>8} {nrows:>6} {arrays:>10.2f} {via_pulp:>9.1f} "
                  f"{via_pulp / arrays:>5.0f}x {solve:>23.1f}")
            if gpus == 64 and name.startswith("FlexSP"):
                print(f"RATIO FlexSP MILP build at N=64, pulp / arrays CPU ms: {via_pulp / arrays:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
