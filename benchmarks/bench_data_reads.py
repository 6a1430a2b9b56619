"""What each rank reads per step as the data-parallel size grows with a fixed per-rank batch.

Runs the real `hetron train` (gloo ranks, megatron-core, streaming shards) at data-parallel sizes
1, 2, 4 (2, 4 with adaptive sequence parallelism: 512 tokens per rank, documents up to 1024) with data.global_batch_tokens = DP x --per-rank-tokens, with and without adaptive sequence
parallelism, and reads its per-step metrics: data_read_tokens / data_read_bytes (the most any
rank read) and data_batch_tokens (the whole global batch). The baseline, measured in the same run,
is the whole batch: what every rank read before the length index (the loader took each sample of
the global batch on every rank).

    .venv/bin/python benchmarks/bench_data_reads.py --shards DIR [--per-rank-tokens 4096] [--steps 3] [--quick]
Exit 1 when a rank's reads at the largest size exceed 1.25x those at DP 1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
         "model.seq_length=1024", "train.eval_every=0", "run.tensorboard=false", "run.plot=false", "resume=never",
         "checkpoint.every=1000000", "--no-progress"]
# (overrides, smallest size): with 512 tokens per rank a 1024-token document needs a group of 2
MODES = {"sp off": (["sp.mode=off"], 1), "adaptive sp": (["sp.mode=adaptive", "sp.tokens_per_rank=512"], 2)}


def run(out: Path, shards: str, dp: int, per_rank: int, steps: int, mode: list[str], extra: list[str]) -> dict:
    hetron = str(Path(sys.executable).with_name("hetron"))
    cmd = [hetron, "train", f"run.dir={out}", f"data.shards={shards}", *MODEL, *mode, f"launch.nproc={dp}",
           f"data.global_batch_tokens={dp * per_rank}", f"train.steps={steps}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"bench_data_reads: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    return {"read_tokens": med("data_read_tokens"), "read_bytes": med("data_read_bytes"),
            "read_samples": med("data_read_samples"), "batch_tokens": med("data_batch_tokens"),
            "batch_samples": med("data_batch_samples")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--per-rank-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--quick", action="store_true", help="reduced mode: 2 steps")
    parser.add_argument("overrides", nargs="*", help="extra config key=value")
    args = parser.parse_args(argv)
    steps = 2 if args.quick else args.steps
    sizes = [int(x) for x in args.sizes.split(",")]
    failed = False
    print(f"per-rank batch {args.per_rank_tokens} tokens, {steps} steps per run, median over steps; "
          "'read' is the most any rank read in a step, 'whole batch' what every rank read before")
    print(f"{'mode':12} {'DP':>3} {'read samples':>13} {'read tokens':>12} {'read bytes':>11} "
          f"{'whole batch tokens':>19} {'read/whole':>11}")
    with tempfile.TemporaryDirectory(prefix="hetron-bench-reads-") as tmp:
        for name, (mode, smallest) in MODES.items():
            results = {dp: run(Path(tmp) / f"{name.replace(' ', '-')}-{dp}", args.shards, dp, args.per_rank_tokens,
                               steps, mode, args.overrides) for dp in sizes if dp >= smallest}
            first, last = results[min(results)], results[max(results)]
            for dp, r in results.items():
                print(f"{name:12} {dp:>3} {r['read_samples']:>13.0f} {r['read_tokens']:>12,.0f} {r['read_bytes']:>11,.0f} "
                      f"{r['batch_tokens']:>19,.0f} {r['read_tokens'] / r['batch_tokens']:>11.3f}")
            growth = last["read_tokens"] / first["read_tokens"]
            before = last["batch_tokens"] / first["batch_tokens"]
            print(f"RATIO {name}: per-rank read tokens at DP {max(results)} / DP {min(results)}: {growth:.3f} "
                  f"(whole-batch reads, as before: {before:.3f})")
            print(f"RATIO {name}: per-rank read tokens at DP {max(results)} vs reading the whole batch: "
                  f"{last['read_tokens'] / last['batch_tokens']:.3f}")
            failed |= growth > 1.25
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
