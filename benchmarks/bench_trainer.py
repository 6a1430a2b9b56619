"""Trainer trunk benchmarks, each a ratio against a baseline measured in the same run.

1. hetron's training step (loader + packing + per-sample losses + LR + metrics bookkeeping) vs a
   bare megatron-core loop (forward_backward_func + optimizer.step) on the same model and the same
   pre-packed batch. Target: <= 1.10.
2. The streaming loader's token rate (global batches formed and packed) vs the trainer's token
   consumption on the tiny preset. Target: >= 20.

Usage: python benchmarks/bench_trainer.py [--steps 12] [--preset tiny] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from single_rank import single_rank_trainer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--json", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from data.loader import GlobalBatchLoader
    from pretrain.step import SampleLosses, make_forward_step

    trainer, cfg = single_rank_trainer([f"model.preset={args.preset}", f"train.steps={args.steps * 3}",
                                        "run.dir=/tmp/hetron-bench", *args.overrides])
    info, shards = trainer.info, trainer.shards

    # Warm up, then alternate hetron steps and bare steps so machine noise hits both alike.
    trainer.train_step()
    fixed = trainer.micro_batches(trainer.loader.next_batch())
    fb = get_forward_backward_func()

    def bare_step():
        t = time.perf_counter()
        for chunk in trainer.model_chunks:
            chunk.zero_grad_buffer()
        trainer.optimizer.zero_grad()
        fb(forward_step_func=make_forward_step(SampleLosses(), info.device), data_iterator=iter(fixed),
           model=trainer.model_chunks, num_microbatches=len(fixed), seq_length=fixed[0].tokens.shape[1],
           micro_batch_size=1, forward_only=False)
        trainer.optimizer.step()
        return time.perf_counter() - t, sum(mb.num_tokens for mb in fixed)

    hetron_s, bare_s, hetron_tok, bare_tok = [], [], 0, 0
    for _ in range(args.steps):
        r = trainer.train_step()
        hetron_s.append(r.seconds)
        hetron_tok += r.tokens
        s, n = bare_step()
        bare_s.append(s)
        bare_tok += n
    # Batches differ in token count (token budget, whole documents): compare seconds per token.
    step_ratio = (sum(hetron_s) / hetron_tok) / (sum(bare_s) / bare_tok)
    consumption = hetron_tok / sum(hetron_s)

    loader = GlobalBatchLoader(shards / "train", cfg.data.global_batch_tokens, seed=cfg.seed + 1)
    t, tokens = time.perf_counter(), 0
    while time.perf_counter() - t < 5.0:
        samples = loader.next_batch()
        trainer.micro_batches(samples)
        tokens += sum(len(s) - 1 for s in samples)
    loader_rate = tokens / (time.perf_counter() - t)

    result = {
        "preset": args.preset, "steps": args.steps, "global_batch_tokens": cfg.data.global_batch_tokens,
        "hetron_step_s_median": statistics.median(hetron_s), "bare_step_s_median": statistics.median(bare_s),
        "hetron_vs_bare_seconds_per_token": round(step_ratio, 4), "target_step_ratio": 1.10,
        "trainer_tokens_per_s": round(consumption), "loader_tokens_per_s": round(loader_rate),
        "loader_vs_trainer": round(loader_rate / consumption, 1), "target_loader_ratio": 20,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    from pretrain.distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
