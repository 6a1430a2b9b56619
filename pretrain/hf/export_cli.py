"""`hetron export-hf RUN_OR_CHECKPOINT --out DIR`: write a hetron checkpoint (saved at any TP/PP/DP
layout; a run folder means its newest) as a Hugging Face model folder that
transformers.AutoModelForCausalLM and AutoTokenizer load: config.json, generation_config.json,
model*.safetensors (sharded above --max-shard-size) and the tokenizer files."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise HetronError(f"--max-shard-size {text!r} is not a size like 2GB, 500MB or 1GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def main(argv: list[str]) -> int:
    p = OneLineErrorParser(prog="hetron export-hf", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write (must not exist)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors file (default 2GB)")
    p.add_argument("--dtype", default="float32", help="float32 (default) | bfloat16 | float16")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or tokenizer folder, if the run's is elsewhere")
    args = p.parse_args(argv)
    from pretrain.hf.exporter import export_hf

    summary = export_hf(Path(args.source), Path(args.out), max_shard_bytes=parse_size(args.max_shard_size),
                        dtype=args.dtype, tokenizer=Path(args.tokenizer) if args.tokenizer else None)
    print(f"exported {summary['checkpoint']} ({summary['model_type']}, {summary['bytes'] / 1e6:.1f} MB in "
          f"{len([f for f in summary['files'] if f.endswith('.safetensors')])} safetensors files) to {args.out} "
          f"in {summary['seconds']:.1f} s", flush=True)
    return 0
