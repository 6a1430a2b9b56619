"""`hetron calibrate`: measure forward+backward times of sequences of several lengths on several
sequence-parallel group sizes on this machine, fit the cost model's constants (parallel.calibrate),
save them as JSON for the planner (`sp.cost_model=FILE.json`).

    hetron calibrate [CONFIG] [key=value ...] --lengths 128,256,512 --sizes 1,2,4 --out cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError


def parse(argv: list[str]):
    p = OneLineErrorParser(prog="hetron calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", help="an optional config, then key=value overrides (model, launch.nproc, ...)")
    p.add_argument("--lengths", default="128,256,512,1024", help="sequence lengths to time")
    p.add_argument("--sizes", default="", help="group sizes (default: every usable size up to the rank count)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True, help="cost-model JSON to write")
    args = p.parse_intermixed_args(argv)
    try:
        args.length_list = sorted({int(x) for x in args.lengths.split(",") if x})
        args.size_list = sorted({int(x) for x in args.sizes.split(",") if x})
    except ValueError:
        raise HetronError(f"--lengths {args.lengths!r} / --sizes {args.sizes!r} must be comma-separated integers") from None
    if len(args.length_list) < 3:
        raise HetronError("--lengths needs at least 3 lengths to fit a1, a2 and beta")
    if args.repeats < 1:
        raise HetronError("--repeats must be >= 1")
    return args


def time_group_step(trainer, length: int, size: int, repeats: int, rng: np.random.Generator) -> float:
    """Median ms of forward+backward of one sequence of `length` on every group of `size` ranks."""
    import torch.distributed as dist

    from data.packing import build_micro_batch
    from pretrain.step import SampleLosses

    dp_rank = trainer.info.dp_rank
    start = dp_rank - dp_rank % size
    sample = rng.integers(2, trainer.manifest.vocab_size, size=length + 1)
    packed = build_micro_batch([sample], [0], trainer.manifest.pad_id, 8 * size)
    mb = packed.shard(dp_rank - start, start, size) if size > 1 else packed
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        for chunk in trainer.model_chunks:
            chunk.zero_grad_buffer()
        dist.barrier()
        t0 = time.perf_counter()
        trainer.run_micro_batches([mb], forward_only=False, record=SampleLosses())
        dist.barrier()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:])


def run_rank(args, cfg) -> int:
    from parallel.calibrate import fit_cost_model
    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import start_rank
    from pretrain.distributed import shutdown
    from pretrain.trainer import Trainer

    info, (arch, shards, manifest) = start_rank(cfg, pipeline=1)
    try:
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        sizes = args.size_list or trainer.sp_sizes
        bad = [d for d in sizes if d not in trainer.sp_sizes]
        if bad:
            raise HetronError(f"--sizes {bad} are not usable here; usable: {trainer.sp_sizes}")
        too_long = [L for L in args.length_list if L > arch.seq_length]
        if too_long:
            raise HetronError(f"--lengths {too_long} exceed model.seq_length={arch.seq_length}")
        rng = np.random.default_rng(cfg.seed)
        times = {}
        for d in sizes:
            for L in args.length_list:
                times[(d, L)] = time_group_step(trainer, L, d, args.repeats, rng)
                if info.is_main:
                    print(f"group {d}, length {L}: {times[(d, L)]:.1f} ms", flush=True)
        if info.is_main:
            bytes_per_element = 2 if trainer.bf16 else 4
            model = fit_cost_model(times, arch.num_layers, arch.hidden_size, bytes_per_element,
                                   cfg.sp.tokens_per_rank or arch.seq_length)
            model.save(args.out)
            measured = {f"{d}x{L}": t for (d, L), t in times.items()}
            Path(args.out).with_suffix(".measurements.json").write_text(json.dumps(measured, indent=2))
            fit = {f"{d}x{L}": model.group_time_ms([L], d) for (d, L) in times}
            err = max(abs(fit[k] - measured[k]) / measured[k] for k in measured)
            print(f"cost model: a1={model.a1:.3e} a2={model.a2:.3e} beta={model.beta:.2f} ms, bandwidth GB/s "
                  f"{ {d: round(b, 3) for d, b in model.bandwidth_gbps.items()} }; worst fit error {err:.1%}; "
                  f"written to {args.out}")
        return 0
    finally:
        shutdown()


def main(argv: list[str]) -> int:
    from pretrain.bootstrap import run_command
    from pretrain.config import load_config

    args = parse(argv)
    items = list(args.items)
    config_file = items.pop(0) if items and "=" not in items[0] else None
    overrides = [*items, "sp.mode=adaptive", "resume=never", "run.tensorboard=false"]
    cfg = load_config(config_file, overrides)
    rank_argv = ([config_file] if config_file else []) + items + [
        "--lengths", args.lengths, "--sizes", args.sizes, "--repeats", str(args.repeats), "--out", args.out]
    return run_command(cfg, "pretrain.calibrate_cli", rank_argv, lambda: run_rank(args, cfg))


if __name__ == "__main__":
    from pretrain.cli import run_script

    run_script(main, "hetron calibrate")
