"""hetron's logits of packed documents, on real gloo ranks, for the Hugging Face conversion tests.

    python -m tests.hf_harness OUT.pt TOKENS.pt SOURCE[,SOURCE...] key=value ...

Each SOURCE is hf:DIR (the model built by init_from=hf:DIR, weights loaded by pretrain.hf.load on
every rank) or a hetron checkpoint folder (its recorded model, weights through dist_checkpointing,
resharded to this launch's parallel.tensor). TOKENS.pt holds {"documents": [token lists],
"prompt": [tokens], "new_tokens": n}: the documents are packed into one sequence (cu_seqlens at their
boundaries) and the prompt is continued greedily for n tokens. Rank 0 writes {SOURCE: {"logits":
(tokens, vocab) fp32, TP-gathered, "token_losses": (tokens,) megatron's loss of each next
token, "generated": [tokens]}} to OUT.pt. Launched by the tests through
launch.local.spawn_ranks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def packed_logits(model, documents: list[list[int]]) -> torch.Tensor:
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    tokens = torch.tensor([t for doc in documents for t in doc], dtype=torch.long)[None, :]
    lengths = torch.tensor([0] + [len(d) for d in documents])
    cu = torch.cumsum(lengths, 0).to(torch.int32)
    positions = torch.cat([torch.arange(len(d)) for d in documents])[None, :]
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=int(lengths.max()),
                             max_seqlen_kv=int(lengths.max()))
    with torch.no_grad():
        logits = model(tokens, positions, None, packed_seq_params=params)
        return gather_from_tensor_model_parallel_region(logits)[0].float()


def packed_token_losses(model, documents: list[list[int]]) -> torch.Tensor:
    """megatron's per-token cross-entropy (the training loss) of each next token inside its document;
    a document's last position has no next token (its label is a placeholder)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    tokens = torch.tensor([t for doc in documents for t in doc], dtype=torch.long)[None, :]
    labels = torch.tensor([t for doc in documents for t in doc[1:] + [0]], dtype=torch.long)[None, :]
    lengths = torch.tensor([0] + [len(d) for d in documents])
    cu = torch.cumsum(lengths, 0).to(torch.int32)
    positions = torch.cat([torch.arange(len(d)) for d in documents])[None, :]
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=int(lengths.max()),
                             max_seqlen_kv=int(lengths.max()))
    with torch.no_grad():
        return model(tokens, positions, None, labels=labels, packed_seq_params=params)[0].float()


def greedy(model, prompt: list[int], new_tokens: int, vocab_size: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(new_tokens):
        tokens.append(int(packed_logits(model, [tokens])[-1, :vocab_size].argmax()))
    return tokens[len(prompt):]


def build(source: str, overrides: list[str]):
    """(model, unpadded vocab size) of one source at this launch's layout."""
    from pretrain.architecture import resolve_model
    from pretrain.config import load_config
    from pretrain.model import build_gpt_model

    if source.startswith("hf:"):
        cfg = load_config(None, [f"init_from={source}", *overrides])
    else:
        cfg = load_config(None, overrides)
        state = json.loads((Path(source) / "hetron_state.json").read_text())
        for name, value in state["model"].items():
            setattr(cfg.model, name, value)
    arch = resolve_model(cfg.model, cfg.parallel)
    vocab = cfg.model.vocab_size or state["vocab_size"]
    model = build_gpt_model(cfg, arch, vocab, bf16=False)
    if source.startswith("hf:"):
        from pretrain.hf.load import load_hf_weights

        load_hf_weights(Path(source[3:]), [model])
    else:
        from pretrain.checkpoint import load_model_and_optimizer

        load_model_and_optimizer(Path(source), [model], None, 0)
    return model.eval(), vocab


def main(argv: list[str]) -> int:
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, seed_everything, shutdown

    out, tokens_file, sources, *overrides = argv
    cfg = load_config(None, overrides)
    info = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline, "gloo")
    seed_everything(cfg.seed)
    inputs = torch.load(tokens_file)
    results = {}
    for source in sources.split(","):
        model, vocab = build(source, overrides)
        results[source] = {"logits": packed_logits(model, inputs["documents"]),
                           "token_losses": packed_token_losses(model, inputs["documents"]),
                           "generated": greedy(model, inputs["prompt"], inputs["new_tokens"], vocab)}
    if info.rank == 0:
        torch.save(results, out)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
