"""`hetron import-hf DIR --out CKPT`: write a hetron checkpoint (weights only) of a Hugging Face
Llama / Mistral / Qwen2 model folder. Train from it with init_from=CKPT (or skip this step:
init_from=hf:DIR loads DIR directly into every rank)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.arg_parser import OneLineErrorParser


def main(argv: list[str]) -> int:
    p = OneLineErrorParser(prog="hetron import-hf", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a Hugging Face model folder: config.json, *.safetensors or pytorch_model*.bin, "
                                  "tokenizer.json")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (must not exist)")
    args = p.parse_args(argv)
    from pretrain.hf.importer import import_hf

    summary = import_hf(Path(args.folder), Path(args.out))
    print(f"imported {summary['parameters']:,} parameters from {args.folder} into {summary['out']} "
          f"in {summary['seconds']:.1f} s; train from it with init_from={summary['out']}", flush=True)
    return 0
