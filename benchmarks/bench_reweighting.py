"""Step time with loss-based reweighting vs without, same model, same batches, one run.

Rotates three steps on identical global batches: reweight.scope=batch (a forward-only pass for every
sample's loss, global weights, then the weighted forward-backward), reweight.scope=microbatch (one
pass, each micro-batch weighed in megatron's loss function) and the plain megatron step.

    python benchmarks/bench_reweighting.py [--steps 10] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from single_rank import single_rank_trainer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default="")
    ap.add_argument("--quick", action="store_true", help="reduced mode: 2 steps of 4096-token global batches")
    args, overrides = ap.parse_known_args()
    if args.quick:
        args.steps = min(args.steps, 2)
        overrides = ["data.global_batch_tokens=4096", *overrides]
    from pretrain.config import ReweightConfig
    from pretrain.reweighting import LossReweighting
    from pretrain.step import SampleLosses

    algo = LossReweighting(ReweightConfig(strategy="linupper", r=0.4))
    trainer, cfg = single_rank_trainer(["model.preset=tiny", "run.dir=/tmp/hetron-bench-rw", *overrides])
    batches = [trainer.micro_batches(trainer.loader.next_batch()) for _ in range(args.steps + 1)]

    def plain(mbs):
        trainer.run_micro_batches(mbs, forward_only=False, record=SampleLosses())

    def weighted(scope):
        def run(mbs):
            trainer.cfg.reweight.scope = scope
            n = 1 + max(i for mb in mbs for i in mb.sample_ids)
            trainer.run_weighted_micro_batches(mbs, n, SampleLosses(), lambda ls: algo.sample_weights(trainer, 0, ls))
        return run

    arms = [("plain", plain), ("reweighted", weighted("batch")), ("microbatch", weighted("microbatch"))]
    times = {name: [] for name, _ in arms}
    for i, mbs in enumerate(batches):
        for name, fn in arms[i % 3:] + arms[:i % 3]:  # each arm leads in turn
            for chunk in trainer.model_chunks:
                chunk.zero_grad_buffer()
            t = time.perf_counter()
            fn(mbs)
            trainer.optimizer.step()
            if i:  # the first batch warms up
                times[name].append(time.perf_counter() - t)
    result = {"steps": args.steps, "plain_s_median": statistics.median(times["plain"]),
              "reweighted_s_median": statistics.median(times["reweighted"]),
              "microbatch_s_median": statistics.median(times["microbatch"]),
              "ratio_total": sum(times["reweighted"]) / sum(times["plain"]), "target": 1.40,
              "microbatch_ratio_total": sum(times["microbatch"]) / sum(times["plain"]), "microbatch_target": 1.03}
    print(json.dumps(result, indent=2))
    print(f"RATIO reweighted / plain step time: {result['ratio_total']:.3f} (target <= {result['target']})")
    print(f"RATIO microbatch-scope / plain step time: {result['microbatch_ratio_total']:.3f} "
          f"(target <= {result['microbatch_target']})")
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
