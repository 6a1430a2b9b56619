"""Time and peak memory of `hetron import-hf` and `hetron export-hf` against the model's bytes.

    .venv/bin/python benchmarks/bench_hf_convert.py [--shape 125m|1b|small] [--quick] [--keep DIR]

A random Llama-shaped Hugging Face folder (fp32 safetensors, 32000-token vocabulary, written tensor
by tensor) is imported into a hetron checkpoint and exported back; each command runs in a fresh
child whose peak RSS is read from RUSAGE_CHILDREN. The baseline is a child that only imports what
the commands import (torch, megatron-core, transformers), so `(peak - baseline) / model bytes`
says how many copies of the weights a conversion holds at once (the goal: at most ~2). The export is
checked against the source tensor by tensor (bitwise). Prints RATIO lines.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # the 125m and 1b presets of pretrain/architecture.py, with a Llama vocabulary
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=688),
}
VOCAB = 32000


def write_random_model(folder: Path, shape: dict, vocab: int) -> int:
    """A Llama folder with random fp32 weights; returns the weights' bytes."""
    import torch
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from data.tokenizer import EOS, PAD, train_bpe
    from pretrain.hf.tensor_map import Layout, global_kinds, hf_names, layer_kinds
    from pretrain.hf.weight_files import SafetensorsShardWriter

    folder.mkdir(parents=True)
    LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, **shape).save_pretrained(str(folder))
    tok = train_bpe([(REPO / "README.md").read_text()], 300)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD).save_pretrained(str(folder))
    h, f = shape["hidden_size"], shape["intermediate_size"]
    hd = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * hd
    layout = Layout(shape["num_attention_heads"], shape["num_key_value_heads"], hd, vocab, vocab, False, False)
    shapes = {"embedding": [(vocab, h)], "output": [(vocab, h)], "final_norm": [(h,)], "input_norm": [(h,)],
              "pre_mlp_norm": [(h,)], "qkv_weight": [(h, h), (kv, h), (kv, h)], "proj": [(h, h)],
              "fc1": [(f, h), (f, h)], "fc2": [(h, f)]}
    writer = SafetensorsShardWriter(folder, 2 * 1024**3)
    gen = torch.Generator().manual_seed(0)
    items = [(k, None) for k in global_kinds(layout)]
    items += [(k, i) for i in range(shape["num_hidden_layers"]) for k in layer_kinds(layout)]
    for kind, layer in items:
        for name, size in zip(hf_names(kind, layer, layout), shapes[kind]):
            writer.add(name, torch.randn(size, generator=gen) * 0.02)
    writer.finish()
    return writer.total_bytes


def run_measured(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one command in a fresh child."""
    code = (f"import resource, subprocess, sys, time; t = time.time(); p = subprocess.run({argv!r}, "
            "capture_output=True, text=True); dt = time.time() - t; "
            "sys.stderr.write(p.stderr[-3000:] if p.returncode else ''); "
            "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_hf_convert: {' '.join(argv[2:4])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    seconds, kb = proc.stdout.split()
    return float(seconds), int(kb) / 1024


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    from pretrain.hf.weight_files import HfWeightReader

    ra, rb = HfWeightReader(a), HfWeightReader(b)
    return ra.names() == rb.names() and all(torch.equal(ra.get(n), rb.get(n)) for n in sorted(ra.names()))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="125m")
    ap.add_argument("--quick", action="store_true", help="reduced mode: the small shape")
    ap.add_argument("--keep", default="", help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args(argv)
    shape = SHAPES["small" if args.quick else args.shape]
    hetron = [sys.executable, "-m", "pretrain.cli"]
    with tempfile.TemporaryDirectory(dir=args.keep or None) as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        source, ckpt, exported = root / "hf-source", root / "hetron-ckpt", root / "hf-exported"
        model_bytes = write_random_model(source, shape, VOCAB)
        _, base_mb = run_measured([sys.executable, "-c", "import torch, megatron.core, transformers, safetensors"])
        t_import, rss_import = run_measured([*hetron, "import-hf", str(source), "--out", str(ckpt)])
        t_export, rss_export = run_measured([*hetron, "export-hf", str(ckpt), "--out", str(exported)])
        exact = same_tensors(source, exported)
    gb = model_bytes / 1e9
    name = "small" if args.quick else args.shape
    print(json.dumps({"shape": name, "model_bytes": model_bytes, "baseline_rss_mb": round(base_mb),
                      "import_s": round(t_import, 1), "import_peak_rss_mb": round(rss_import),
                      "export_s": round(t_export, 1), "export_peak_rss_mb": round(rss_export),
                      "round_trip_bitwise": exact}))
    for label, seconds, rss in (("import", t_import, rss_import), ("export", t_export, rss_export)):
        print(f"RATIO hf_{label}_{name}_memory_over_weights {(rss - base_mb) * 2**20 / model_bytes:.2f} "
              f"(peak {rss:.0f} MB - baseline {base_mb:.0f} MB, weights {gb:.2f} GB, {seconds:.1f} s, "
              f"{gb / seconds:.2f} GB/s)")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
