"""Tensor names and layouts between Hugging Face Llama/Mistral/Qwen2 and megatron-core's GPTModel.

Pure functions on tensors. megatron-core 0.16.1 lays its fused weights out as:
- `linear_qkv` (column parallel): rows grouped by query group, each group [its q heads, k, v]
  (attention.py SelfAttention.get_query_key_value_tensors: view (.., ng, (np/ng + 2) * hn), split);
  its bias (Qwen2) the same way. Groups are split contiguously over tensor-parallel ranks.
- `linear_fc1` of a gated MLP: [gate; up] (mlp.py: chunk(2) then silu(gate) * up); under tensor
  parallelism each rank holds [its slice of gate; its slice of up] (apply_swiglu_sharded_factory).
- `linear_proj`, `linear_fc2` (row parallel): split along the input dimension.
- word embeddings and the output layer: vocabulary rows padded to a multiple of 128 x TP
  (pretrain.model.padded_vocab_size), split contiguously over ranks; padded rows are zero.
- norms: replicated.
Each tensor of a layer has a `kind`; a kind names the HF tensors it is made of, how they fuse, and
how megatron shards it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LAYER_KINDS = ("input_norm", "qkv_weight", "qkv_bias", "proj", "pre_mlp_norm", "fc1", "fc2")
GLOBAL_KINDS = ("embedding", "final_norm", "output")

# Parameter-name suffixes inside a megatron decoder layer, local spec first, Transformer Engine spec second.
_LAYER_SUFFIXES = {
    "input_norm": ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    "qkv_weight": ("self_attention.linear_qkv.weight",),
    "qkv_bias": ("self_attention.linear_qkv.bias",),
    "proj": ("self_attention.linear_proj.weight",),
    "pre_mlp_norm": ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    "fc1": ("mlp.linear_fc1.weight",),
    "fc2": ("mlp.linear_fc2.weight",),
}
# dist_checkpointing keys: megatron saves layers stacked (a leading layer axis) under TE-style names.
CHECKPOINT_KEYS = {kind: "decoder.layers." + suffixes[-1] for kind, suffixes in _LAYER_SUFFIXES.items()} | {
    "embedding": "embedding.word_embeddings.weight",
    "final_norm": "decoder.final_layernorm.weight",
    "output": "output_layer.weight",
}
_GLOBAL_PARAMS = {"embedding.word_embeddings.weight": "embedding", "decoder.final_layernorm.weight": "final_norm",
                  "output_layer.weight": "output"}
# How megatron splits each kind over tensor-parallel ranks.
TP_SPLIT = {"input_norm": None, "pre_mlp_norm": None, "final_norm": None, "qkv_weight": "rows", "qkv_bias": "rows",
            "embedding": "rows", "output": "rows", "proj": "columns", "fc2": "columns", "fc1": "gated_rows"}


@dataclass(frozen=True)
class Layout:
    """What the conversion needs to know of the model's shape."""

    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int  # rows a Hugging Face model holds
    padded_vocab_size: int  # rows megatron holds
    tie_embeddings: bool
    qkv_bias: bool


def parameter_kind(name: str) -> tuple[str, int | None]:
    """(kind, local layer index or None) of a GPTModel parameter name ('module.' prefixes dropped)."""
    while name.startswith("module."):
        name = name[len("module."):]
    if name in _GLOBAL_PARAMS:
        return _GLOBAL_PARAMS[name], None
    prefix = "decoder.layers."
    if name.startswith(prefix):
        index, _, suffix = name[len(prefix):].partition(".")
        for kind, suffixes in _LAYER_SUFFIXES.items():
            if suffix in suffixes:
                return kind, int(index)
    raise KeyError(f"megatron parameter {name!r} has no Hugging Face counterpart")


def hf_names(kind: str, layer: int | None, layout: Layout) -> list[str]:
    """The Hugging Face tensors a kind is made of (for layer `layer`)."""
    p = f"model.layers.{layer}."
    return {
        "embedding": ["model.embed_tokens.weight"],
        "final_norm": ["model.norm.weight"],
        "output": ["model.embed_tokens.weight" if layout.tie_embeddings else "lm_head.weight"],
        "input_norm": [p + "input_layernorm.weight"],
        "qkv_weight": [p + f"self_attn.{x}_proj.weight" for x in "qkv"],
        "qkv_bias": [p + f"self_attn.{x}_proj.bias" for x in "qkv"],
        "proj": [p + "self_attn.o_proj.weight"],
        "pre_mlp_norm": [p + "post_attention_layernorm.weight"],
        "fc1": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
        "fc2": [p + "mlp.down_proj.weight"],
    }[kind]


def layer_kinds(layout: Layout) -> tuple[str, ...]:
    return tuple(k for k in LAYER_KINDS if layout.qkv_bias or k != "qkv_bias")


def global_kinds(layout: Layout) -> tuple[str, ...]:
    """Output-layer weights of a tied model are the embedding's: HF stores them once."""
    return tuple(k for k in GLOBAL_KINDS if not (layout.tie_embeddings and k == "output"))


# ------------------------------------------------------------------------------------ layouts


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
    """HF q/k/v projections (weights (out, in) or biases (out,)) -> megatron's per-group [q.., k, v] rows."""
    groups, hd = layout.num_query_groups, layout.head_dim
    per_group = layout.num_attention_heads // groups
    rest = q.shape[1:]
    q = q.reshape(groups, per_group * hd, *rest)
    k = k.reshape(groups, hd, *rest)
    v = v.reshape(groups, hd, *rest)
    return torch.cat([q, k, v], dim=1).reshape(groups * (per_group + 2) * hd, *rest)


def split_qkv(fused: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, hd = layout.num_query_groups, layout.head_dim
    per_group = layout.num_attention_heads // groups
    rest = fused.shape[1:]
    grouped = fused.reshape(groups, (per_group + 2) * hd, *rest)
    q, k, v = torch.split(grouped, [per_group * hd, hd, hd], dim=1)
    return (q.reshape(groups * per_group * hd, *rest), k.reshape(groups * hd, *rest), v.reshape(groups * hd, *rest))


def pad_vocab(weight: torch.Tensor, padded_rows: int) -> torch.Tensor:
    if weight.shape[0] == padded_rows:
        return weight
    return torch.cat([weight, weight.new_zeros(padded_rows - weight.shape[0], *weight.shape[1:])])


def to_megatron(kind: str, tensors: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """The whole (unsharded) megatron tensor of a kind from its HF tensors (in hf_names order)."""
    if kind in ("qkv_weight", "qkv_bias"):
        return fuse_qkv(*tensors, layout)
    if kind == "fc1":
        return torch.cat(tensors, dim=0)
    if kind in ("embedding", "output"):
        return pad_vocab(tensors[0], layout.padded_vocab_size)
    return tensors[0]


def to_hf(kind: str, tensor: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """The HF tensors (in hf_names order) of a whole megatron tensor; vocabulary padding dropped."""
    if kind in ("qkv_weight", "qkv_bias"):
        return list(split_qkv(tensor, layout))
    if kind == "fc1":
        return list(torch.chunk(tensor, 2, dim=0))
    if kind in ("embedding", "output"):
        return [tensor[: layout.vocab_size]]
    return [tensor]


def tensor_parallel_shard(kind: str, whole: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This tensor-parallel rank's part of a whole megatron tensor, as megatron's layers hold it."""
    split = TP_SPLIT[kind]
    if split is None or size == 1:
        return whole
    if split == "rows":
        return torch.chunk(whole, size, dim=0)[rank]
    if split == "columns":
        return torch.chunk(whole, size, dim=1)[rank]
    gate, up = torch.chunk(whole, 2, dim=0)
    return torch.cat([torch.chunk(gate, size, dim=0)[rank], torch.chunk(up, size, dim=0)[rank]], dim=0)
