"""The GPU benchmark of scripts/gpu-check.sh: training throughput and MFU of the 125m and 1b presets at
sequence 4096 (bf16, one GPU, `hetron train` as a user runs it), document attention against padded
attention on real document lengths, and the profiler's top kernels of one step.

    python benchmarks/gpu_bench.py [--json OUT.json] [--steps 8] [--dry-run]

MFU = model FLOPs per token x tokens/s / the GPU's dense bf16 peak (pretrain/throughput.py, the
formula in BENCHMARKS.md). Document attention packs the documents (lengths from
benchmarks/data/wikipedia-lengths-4096.txt, the first 4096 of FlexSP's Wikipedia lengths, cut at the
sequence length) into sequences and attends within documents; padded attention pads each document
to the longest of its batch, as a trainer without packing does. Both count real tokens only.
--dry-run: the CPU, tiny sizes, 2 steps (make test runs it so that the script keeps working).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LENGTHS = REPO / "benchmarks" / "data" / "wikipedia-lengths-4096.txt"


def default_shards() -> str:
    code = ("import sys; from pretrain.bootstrap import prepare_run; from pretrain.config import load_config; "
            "print(prepare_run(load_config(None, ['run.dir=/tmp/gpu-bench-prepare', 'resume=never'])).shards)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_bench: preparing the default shards failed: {proc.stderr.strip()[-1500:]}")
    return proc.stdout.strip().splitlines()[-1]


def train_throughput(preset: str, seq: int, steps: int, shards: str, dry: bool) -> dict:
    """Median tokens/s, model TFLOP/s and MFU over the second half of `steps` steps, and the top
    kernels (or CPU ops) of the last step's profile."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = [sys.executable, "-m", "pretrain.cli", "train", f"run.dir={run}", f"data.shards={shards}",
                f"model.preset={preset}", f"model.seq_length={seq}", f"train.steps={steps}",
                f"schedule.total_steps={steps}", "schedule.warmup_steps=1", "train.eval_every=0",
                "run.tensorboard=false", "run.plot=false", "--no-progress", f"run.profile_steps={steps}",
                f"data.global_batch_tokens={seq * (2 if dry else 8)}"]
        if not dry:
            args.append("train.precision=bf16")
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            return {"preset": preset, "seq": seq, "error": proc.stderr.strip().splitlines()[-1:] or ["exit"]}
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        tail = rows[len(rows) // 2:]
        trace = next((run / "profile").glob("*.json"), None)
        return {"preset": preset, "seq": seq, "steps": len(rows), "wall_s": round(wall, 1),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in tail),
                "model_tflops_per_rank": statistics.median(r["model_tflops_per_rank"] for r in tail),
                "mfu": statistics.median(r["mfu"] for r in tail) if all(r.get("mfu") for r in tail) else None,
                "step_s": statistics.median(r["step_s"] for r in tail),
                "cuda_max_allocated_gib": rows[-1].get("mem_cuda_max_allocated_bytes", 0) / 2**30,
                "top_ops": top_ops(trace) if trace else []}


def top_ops(trace: Path, n: int = 10) -> list[dict]:
    """The n longest kernels of a Chrome trace by total time (CPU ops where it holds no kernels)."""
    events = json.loads(trace.read_text()).get("traceEvents", [])
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    chosen = kernels or [e for e in events if e.get("cat") == "cpu_op" and "dur" in e]
    totals: dict[str, float] = {}
    for e in chosen:
        totals[e["name"]] = totals.get(e["name"], 0.0) + e["dur"]
    whole = sum(totals.values()) or 1.0
    best = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return [{"name": name[:90], "ms": round(us / 1000, 3), "share": round(us / whole, 3)} for name, us in best]


def attention_comparison(seq: int, dry: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from parallel.document_attention import document_causal_attention

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads, dim = (16, 128) if not dry else (2, 16)
    lengths = [min(int(x), seq) for x in LENGTHS.read_text().split()][: 4096 if not dry else 64]
    # pack into sequences of `seq` tokens (next fit, file order), as the trainer's packer does
    packs, current = [], []
    for n in lengths:
        if current and sum(current) + n > seq:
            packs.append(current)
            current = []
        current.append(n)
    packs.append(current)
    batch = max(1, round(len(lengths) / len(packs)))  # padded batches hold as many documents as a pack
    batches = [lengths[i:i + batch] for i in range(0, len(lengths), batch)]
    real = sum(lengths)

    def timed(fn, repeats):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    def packed_pass():
        for pack in packs:
            t = sum(pack)
            q, k, v = (torch.randn(t, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            cu = torch.tensor([0, *torch.tensor(pack).cumsum(0).tolist()], dtype=torch.int32, device=device)
            document_causal_attention(q, k, v, cu, dim ** -0.5, max_seqlen=max(pack)).sum().backward()

    def padded_pass():
        for docs in batches:
            longest = max(docs)
            q, k, v = (torch.randn(len(docs), heads, longest, dim, device=device, dtype=dtype, requires_grad=True)
                       for _ in range(3))
            keep = torch.arange(longest, device=device)[None, :] < torch.tensor(docs, device=device)[:, None]
            causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
            mask = causal[None, None] & keep[:, None, None, :]
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dim ** -0.5).sum().backward()

    repeats = 1 if dry else 3
    packed_s, padded_s = timed(packed_pass, repeats), timed(padded_pass, repeats)
    return {"documents": len(lengths), "real_tokens": real, "packs": len(packs), "padded_batches": len(batches),
            "padded_tokens": sum(len(b) * max(b) for b in batches), "heads": heads, "head_dim": dim,
            "dtype": str(dtype), "document_tokens_per_s": real / packed_s, "padded_tokens_per_s": real / padded_s,
            "speedup": padded_s / packed_s}


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    for name in ("flash_attn", "transformer_engine", "megatron.core"):
        try:
            module = __import__(name, fromlist=["__version__"])
            info[name] = getattr(module, "__version__", "importable")
        except Exception as exc:  # an accelerator package that fails to import is a finding, not a crash
            info[name] = f"not importable ({type(exc).__name__})"
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--quick", action="store_true", help="same as --dry-run (make bench)")
    args = parser.parse_args(argv)
    dry = args.dry_run or args.quick
    import torch

    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device here; run it on a GPU, or with --dry-run on the CPU")
    shards = default_shards()
    configs = [("tiny", 1024)] if dry else [("125m", 4096), ("1b", 4096)]
    steps = 2 if dry else args.steps
    result = {"environment": environment(), "dry_run": dry,
              "training": [train_throughput(p, s, steps, shards, dry) for p, s in configs],
              "attention": attention_comparison(256 if dry else 4096, dry)}
    for row in result["training"]:
        if "error" in row:
            print(f"{row['preset']} seq {row['seq']}: FAILED: {row['error'][0]}")
            continue
        mfu = f"{row['mfu']:.1%}" if row["mfu"] else "n/a (no known peak)"
        print(f"{row['preset']} seq {row['seq']}: {row['tokens_per_s']:,.0f} tokens/s, "
              f"{row['model_tflops_per_rank']:.1f} model TFLOP/s, MFU {mfu}, step {row['step_s']:.3f} s, "
              f"peak {row['cuda_max_allocated_gib']:.1f} GiB")
        for op in row["top_ops"][:5]:
            print(f"    {op['share']:6.1%} {op['ms']:9.3f} ms  {op['name']}")
    att = result["attention"]
    print(f"attention on {att['documents']} real-length documents: document {att['document_tokens_per_s']:,.0f} "
          f"tokens/s vs padded {att['padded_tokens_per_s']:,.0f} ({att['padded_tokens'] / att['real_tokens']:.2f}x "
          f"tokens after padding)")
    print(f"RATIO document / padded attention tokens/s: {att['speedup']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all("error" not in r for r in result["training"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
