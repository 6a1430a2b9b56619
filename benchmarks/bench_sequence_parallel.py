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
import os
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


def run_rank(args, overrides) -> int:
    import torch.distributed as dist

    from parallel.plan_execution import align_groups, rank_micro_batches
    from parallel.simulate import static_plan
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.step import SampleLosses
    from pretrain.train_cli import _load_prepared, prepare_run
    from pretrain.trainer import Trainer

    cfg = load_config(None, ["sp.mode=adaptive", f"sp.cost_model={args.cost_model}", "resume=never",
                             "run.tensorboard=false", *overrides])
    info = init_distributed(1, 1, "gloo", cfg.launch.threads_per_rank)
    try:
        if info.is_main:
            prepare_run(cfg)
        dist.barrier()
        arch, shards, manifest = _load_prepared(cfg)
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
    args, overrides = ap.parse_known_args()
    if "RANK" in os.environ:
        return run_rank(args, overrides)
    from launch.local import spawn_ranks

    argv = [a for a in sys.argv[1:]]
    return spawn_ranks("benchmarks.bench_sequence_parallel", argv, args.nproc, Path("/tmp/hetron-bench-sp-logs"))


if __name__ == "__main__":
    from pretrain.cli import quiet_library_warnings

    quiet_library_warnings()
    sys.exit(main())
