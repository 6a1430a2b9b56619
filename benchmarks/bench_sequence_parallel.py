"""Measured CPU step times of sequence-parallel plans on real gloo ranks, and how well a calibrated
cost model predicts them.

Batches: real Wikipedia document lengths (../shared/data/seqlens/wikipedia.txt, FlexSP's
preprocessing) scaled down by --scale so they fit a CPU, random token ids. Every batch is run under
each policy: adaptive (the planner), static at the degree that fits the longest sequence, and static
at the full degree N (one degree for all, as Ulysses/DeepSpeed). Plans the cost model was fitted on
are never these (calibration uses single synthetic sequences).

    python benchmarks/bench_sequence_parallel.py --cost-model cost.json [--nproc 4] [--batches 4] [key=value ...]
Prints per policy the measured ms per batch, the ratio static / adaptive, and the mean and worst
relative error of the predicted step time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def long_tail_batches(path: Path, count: int, batch: int, scale: int, max_len: int, rng) -> list[list[int]]:
    raw = np.loadtxt(path, dtype=np.int64, max_rows=200_000)
    lengths = np.maximum(raw // scale, 8)
    lengths = lengths[lengths <= max_len]
    return [lengths[i * batch:(i + 1) * batch].tolist() for i in range(count)]


def run_rank(args, cfg) -> int:
    import torch.distributed as dist

    from parallel.plan_execution import align_groups, rank_micro_batches
    from parallel.simulate import static_plan
    from pretrain.bootstrap import start_rank
    from pretrain.distributed import shutdown
    from pretrain.step import SampleLosses
    from pretrain.trainer import Trainer

    info, (arch, shards, manifest) = start_rank(cfg, pipeline=1)
    try:
        trainer = Trainer(cfg, info, arch, shards, manifest)
        trainer.build()
        cm = trainer.sp_cost_model
        n = info.dp_size
        rng = np.random.default_rng(0)
        batches = long_tail_batches(Path(args.lengths), args.batches, args.batch_size, args.scale,
                                    n * cm.capacity_tokens, rng)
        results: dict[str, list[tuple[float, float]]] = {"adaptive": [], "static-fit": [], f"static-{n}": []}
        for lengths in batches:
            samples = [rng.integers(2, manifest.vocab_size, size=L + 1) for L in lengths]
            fit_degree = max(cm.min_sp(L) for L in lengths)
            plans = {"adaptive": trainer._make_plan(lengths, solver="highs"),
                     "static-fit": static_plan(lengths, n, cm, fit_degree),
                     f"static-{n}": static_plan(lengths, n, cm, n)}
            for name, plan in plans.items():
                plan = align_groups(plan)
                mbs = rank_micro_batches(plan, samples, info.dp_rank, manifest.pad_id)
                measured = []
                for _ in range(args.repeats):
                    for chunk in trainer.model_chunks:
                        chunk.zero_grad_buffer()
                    dist.barrier()
                    t0 = time.perf_counter()
                    trainer.run_micro_batches(mbs, forward_only=False, record=SampleLosses())
                    dist.barrier()
                    measured.append(1000 * (time.perf_counter() - t0))
                results[name].append((statistics.median(measured), plan.time_ms(lengths, cm)))
        if info.is_main:
            summary = {}
            for name, rows in results.items():
                meas = np.array([m for m, _ in rows])
                pred = np.array([p for _, p in rows])
                rel = np.abs(pred - meas) / meas
                summary[name] = {"measured_ms_per_batch": float(meas.mean()), "predicted_ms_per_batch": float(pred.mean()),
                                 "prediction_mean_rel_err": float(rel.mean()), "prediction_worst_rel_err": float(rel.max())}
            ada = summary["adaptive"]["measured_ms_per_batch"]
            for name in summary:
                summary[name]["measured_vs_adaptive"] = summary[name]["measured_ms_per_batch"] / ada
            print(json.dumps({"ranks": n, "batches": args.batches, "batch_size": args.batch_size, "scale": args.scale,
                              "capacity_tokens": cm.capacity_tokens, "policies": summary}, indent=2))
            for name in summary:
                if name != "adaptive":
                    print(f"RATIO {name} / adaptive measured ms per batch: {summary[name]['measured_vs_adaptive']:.3f}")
            if args.json:
                Path(args.json).write_text(json.dumps(summary, indent=2))
        return 0
    finally:
        shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cost-model", required=True)
    ap.add_argument("--lengths", default=str(REPO.parent / "shared" / "data" / "seqlens" / "wikipedia.txt"))
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scale", type=int, default=4, help="divide real lengths by this to fit a CPU")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--quick", action="store_true", help="reduced mode: 1 batch of 16 sequences, 1 repeat")
    args, overrides = ap.parse_known_args()
    if args.quick:
        args.batches, args.batch_size, args.repeats = 1, 16, 1
    from pretrain.bootstrap import run_command
    from pretrain.config import load_config

    cfg = load_config(None, ["sp.mode=adaptive", f"sp.cost_model={args.cost_model}", "resume=never",
                             "run.tensorboard=false", "launch.backend=gloo", "parallel.tensor=1",
                             f"launch.nproc={args.nproc}", *overrides])
    return run_command(cfg, "benchmarks.bench_sequence_parallel", sys.argv[1:], lambda: run_rank(args, cfg))


if __name__ == "__main__":
    from pretrain.cli import quiet_library_warnings

    quiet_library_warnings()
    sys.exit(main())
