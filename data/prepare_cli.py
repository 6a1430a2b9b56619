"""`hetron prepare`: corpus -> tokenizer + MDS shards (train and held-out eval splits)."""
from __future__ import annotations

import json

from data.prepare import prepare_shards
from pretrain.arg_parser import OneLineErrorParser


def main(argv: list[str]) -> int:
    p = OneLineErrorParser(prog="hetron prepare", description=__doc__)
    p.add_argument("--corpus", default="stdlib", help="a directory of text/code files, a .jsonl file, or 'stdlib'")
    p.add_argument("--out", required=True, help="output folder (created; replaced only with --force)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-context", type=int, default=1024, help="documents longer than this are split")
    p.add_argument("--eval-fraction", type=float, default=0.02)
    p.add_argument("--tokenizer", default="", help="a tokenizer.json to use instead of training a BPE")
    p.add_argument("--text-field", default="text", help="JSONL field holding the document text")
    p.add_argument("--force", action="store_true", help="rebuild even if the output folder is complete")
    args = p.parse_args(argv)
    manifest = prepare_shards(
        args.corpus, args.out, vocab_size=args.vocab_size, max_context=args.max_context,
        eval_fraction=args.eval_fraction, tokenizer_path=args.tokenizer or None, text_field=args.text_field,
        force=args.force,
    )
    for split, st in manifest.splits.items():
        print(f"{split:5s}: {st['documents']} documents -> {st['samples']} samples, {st['tokens']:,} tokens; "
              f"{st['split_documents']} documents longer than {manifest.max_context} tokens were split; "
              f"lengths p50/p90/p99/max {st['length_percentiles']['50']}/{st['length_percentiles']['90']}/"
              f"{st['length_percentiles']['99']}/{st['length_percentiles']['100']}")
    print(f"tokenizer: vocab {manifest.vocab_size}, fingerprint {manifest.tokenizer_fingerprint}; shards in {args.out}")
    print(json.dumps({"seconds": manifest.seconds}))
    return 0
