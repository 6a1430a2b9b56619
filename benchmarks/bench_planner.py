"""C++ kernels vs their pure-Python twins on the planner's real inputs (wikipedia.txt, N=64, 7B),
and plan_step end to end with each. Prints ratios measured in the same run.

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
from parallel.planner import build_problem, kernels_py, plan_step
from parallel.planner.fast_path import fast_plan

DEFAULT_LENGTHS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seqlens" / "wikipedia.txt"


def best_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return min(times), statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default=str(DEFAULT_LENGTHS))
    p.add_argument("--gpus", type=int, default=64)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
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
        lengths = kept[b * 512:(b + 1) * 512].tolist()
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
        for name, case in cases.items():
            assert case(cpp) == case(kernels_py), f"{name}: C++ and Python twin disagree"
            c, _ = best_ms(lambda: case(cpp), args.repeats)
            py, _ = best_ms(lambda: case(kernels_py), max(1, args.repeats // 2))
            rows.append((name, c, py))
        c, _ = best_ms(lambda: plan_step(lengths, n, cm, solver="none"), args.repeats)
        saved = {k: getattr(native, k) for k in ("bucket_lengths", "partition_microbatches", "pack_microbatch",
                                                  "fill_microbatch")}
        try:
            for k in saved:
                setattr(native, k, getattr(kernels_py, k))
            py, _ = best_ms(lambda: plan_step(lengths, n, cm, solver="none"), 1)
        finally:
            for k, v in saved.items():
                setattr(native, k, v)
        rows.append(("plan_step fast path, end to end", c, py))
    print(f"C++ vs Python twin, {args.lengths}, N={n}, 7B, {args.batches} batches of 512 (best of {args.repeats})")
    print(f"{'kernel':<34} {'C++ ms (median)':>16} {'Python ms (median)':>19} {'speedup':>8}")
    for name in dict.fromkeys(r[0] for r in rows):
        c = statistics.median(r[1] for r in rows if r[0] == name)
        py = statistics.median(r[2] for r in rows if r[0] == name)
        print(f"{name:<34} {c:>16.3f} {py:>19.1f} {py / c:>7.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
