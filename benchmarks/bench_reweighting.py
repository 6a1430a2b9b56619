"""Step time with loss-based reweighting vs without, same model, same batches, one run.

Alternates a reweighted step (graphs held, global weights, one backward) and a plain megatron step
on identical global batches. Target: ratio <= 1.03.

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
    args, overrides = ap.parse_known_args()
    from pretrain.reweighting import LossReweighting, ReweightConfig
    from pretrain.step import SampleLosses

    algo = LossReweighting(ReweightConfig(strategy="linupper", r=0.4))
    trainer, cfg = single_rank_trainer(["model.preset=tiny", "run.dir=/tmp/hetron-bench-rw", *overrides])
    batches = [trainer.micro_batches(trainer.loader.next_batch()) for _ in range(args.steps + 1)]

    def plain(mbs):
        trainer.run_micro_batches(mbs, forward_only=False, record=SampleLosses())

    def weighted(mbs):
        n = 1 + max(i for mb in mbs for i in mb.sample_ids)
        trainer.run_weighted_micro_batches(mbs, n, SampleLosses(), lambda ls: algo.sample_weights(trainer, 0, ls))

    times = {"plain": [], "reweighted": []}
    for i, mbs in enumerate(batches):
        for name, fn in (("plain", plain), ("reweighted", weighted)) if i % 2 else (("reweighted", weighted), ("plain", plain)):
            for chunk in trainer.model_chunks:
                chunk.zero_grad_buffer()
            t = time.perf_counter()
            fn(mbs)
            trainer.optimizer.step()
            if i:  # the first batch warms up
                times[name].append(time.perf_counter() - t)
    result = {"steps": args.steps, "plain_s_median": statistics.median(times["plain"]),
              "reweighted_s_median": statistics.median(times["reweighted"]),
              "ratio_total": sum(times["reweighted"]) / sum(times["plain"]), "target": 1.03}
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
