"""LISA vs full training on one rank (megatron-core DDP + distributed optimizer, gloo): gradient and
optimizer-state bytes from the memory ledger, step time, and the cost of a switch (rebuilding DDP
and the optimizer, carrying the state over). Everything is measured in the same run.

    .venv/bin/python benchmarks/bench_lisa.py --shards DIR [--preset tiny] [--gamma 2] [--steps 5]
        [--switches 5] [key=value ...]

Experiment plot (LISA vs full runs of `hetron train`, loss and held-out loss against tokens):

    .venv/bin/python benchmarks/bench_lisa.py --plot OUT.png NAME=RUN_DIR NAME=RUN_DIR

The memory check: (grad + optimizer bytes with LISA) / (full) <= (embedding + head + final norm +
gamma layers) / (all parameters) + 5%. Exits 1 if it fails.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _setup():
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from launch.local import free_port

        os.environ["MASTER_PORT"] = str(free_port())


def build(overrides):
    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import load_prepared
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    cfg = load_config(None, overrides)
    arch, shards, manifest = load_prepared(cfg)
    trainer = Trainer(cfg, INFO, arch, shards, manifest, build_algorithms(cfg))
    trainer.build()
    return trainer


def timed_steps(trainer, n):
    """Median wall and CPU seconds of n steps (after one warm-up step)."""
    trainer.train_step()
    wall, cpu = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        trainer.train_step()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def plot_runs(out: str, runs: list[str]) -> int:
    """Training loss (smoothed) and held-out loss against tokens for NAME=RUN_DIR runs; prints the
    held-out losses at equal tokens."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    evals = {}
    for spec in runs:
        name, run_dir = spec.split("=", 1)
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        tokens = [r["tokens"] for r in rows]
        loss = [r["loss"] for r in rows]
        smooth = [sum(loss[max(0, i - 9):i + 1]) / len(loss[max(0, i - 9):i + 1]) for i in range(len(loss))]
        ax1.plot(tokens, smooth, label=name)
        ev = [(r["tokens"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        evals[name] = dict(ev)
        ax2.plot([t for t, _ in ev], [e for _, e in ev], marker="o", label=name)
    ax1.set(xlabel="tokens", ylabel="training loss (mean of 10 steps)", title="training loss")
    ax2.set(xlabel="tokens", ylabel="held-out loss", title="held-out loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    names = list(evals)
    common = sorted(set.intersection(*(set(v) for v in evals.values())))
    print("tokens," + ",".join(f"eval_loss_{n}" for n in names))
    for t in common:
        print(f"{t}," + ",".join(f"{evals[n][t]:.4f}" for n in names))
    print(f"plot: {out}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--plot":
        return plot_runs(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--gamma", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--switches", type=int, default=5)
    parser.add_argument("--state", default="reset", choices=["reset", "offload"])
    parser.add_argument("--quick", action="store_true", help="reduced mode: 1 timed step, 1 switch")
    parser.add_argument("overrides", nargs="*", help="extra config key=value")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.switches = 1, 1
    _setup()
    global INFO
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.lisa import layer_index
    from pretrain.memory_ledger import count_memory

    common = [f"model.preset={args.preset}", f"data.shards={args.shards}", "resume=never", "run.dir=/tmp/bench-lisa",
              "train.eval_every=0", "schedule.warmup_steps=0", "train.steps=1000000", *args.overrides]
    INFO = init_distributed(1, 1, "gloo", threads=int(os.environ.get("HETRON_THREADS", "1")))
    try:
        full = build(common)
        module = full.model_chunks[0].module
        total = sum(p.numel() for p in module.parameters())
        always = sum(p.numel() for n, p in module.named_parameters() if layer_index(n) is None)
        layers = len(module.decoder.layers)
        per_layer = (total - always) / layers
        full_wall, full_cpu = timed_steps(full, args.steps)
        full_mem = count_memory(full.model_chunks, full.optimizer)
        del full, module

        lisa = build(common + [f"lisa.layers={args.gamma}", "lisa.interval=1000000", f"lisa.state={args.state}"])
        lisa_wall, lisa_cpu = timed_steps(lisa, args.steps)
        lisa_mem = count_memory(lisa.model_chunks, lisa.optimizer)
        algo = next(a for a in lisa.algorithms if a.name == "lisa")
        switch_s = []
        for i in range(1, args.switches + 1):
            start = time.perf_counter()
            algo.switch(lisa, i)
            switch_s.append(time.perf_counter() - start)
            lisa.train_step()  # state exists for the new set before the next switch carries it
        after = count_memory(lisa.model_chunks, lisa.optimizer)
    finally:
        shutdown()

    bound = (always + args.gamma * per_layer) / total
    ratio = (lisa_mem.grad_bytes + lisa_mem.optim_bytes) / (full_mem.grad_bytes + full_mem.optim_bytes)
    switch = statistics.median(switch_s)
    print(f"model: preset {args.preset}, {layers} layers, {total / 1e6:.2f}M parameters "
          f"(embedding + head + final norm {always / 1e6:.2f}M, {per_layer / 1e6:.3f}M per layer); "
          f"LISA gamma={args.gamma}, state={args.state}; 1 rank, distributed optimizer, fp32")
    print(f"{'':24}{'full':>14}{'LISA':>14}{'ratio':>8}")
    for name, a, b in (("param bytes", full_mem.param_bytes, lisa_mem.param_bytes),
                       ("grad bytes", full_mem.grad_bytes, lisa_mem.grad_bytes),
                       ("optimizer bytes", full_mem.optim_bytes, lisa_mem.optim_bytes),
                       ("grad + optimizer bytes", full_mem.grad_bytes + full_mem.optim_bytes,
                        lisa_mem.grad_bytes + lisa_mem.optim_bytes)):
        print(f"{name:24}{a:>14,}{b:>14,}{b / a:>8.3f}")
    print(f"{'step wall s (median)':24}{full_wall:>14.3f}{lisa_wall:>14.3f}{lisa_wall / full_wall:>8.3f}")
    print(f"{'step CPU s (median)':24}{full_cpu:>14.3f}{lisa_cpu:>14.3f}{lisa_cpu / full_cpu:>8.3f}")
    print(f"switch (rebuild DDP + optimizer, carry state): median {switch:.3f} s = {switch / lisa_wall:.2f} LISA steps; "
          f"over {args.switches} switches, ledger after = before: {after == lisa_mem}")
    ok = ratio <= bound + 0.05
    print(f"RATIO LISA / full grad+optimizer bytes: {ratio:.3f} (bound {bound + 0.05:.3f})")
    print(f"RATIO LISA / full step wall time: {lisa_wall / full_wall:.3f}")
    print(f"grad+optimizer ratio {ratio:.3f} vs bound (always-trained + {args.gamma} layers)/all + 5% = "
          f"{bound:.3f} + 0.05 -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok and after == lisa_mem else 1


INFO = None

if __name__ == "__main__":
    sys.exit(main())
