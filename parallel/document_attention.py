"""Core attention over packed documents: causal inside each document, nothing across documents.

Plugged into megatron-core's GPTModel through the ModuleSpec (`core_attention`), in place of
DotProductAttention, which refuses packed sequences. It receives the packed 'thd' layout
(tokens, heads, head_dim) with `packed_seq_params.cu_seqlens_q` marking document boundaries.

Under Ulysses sequence parallelism (parallel.ulysses) the packed params say which group runs the
micro-batch: this rank holds 1/d of the tokens; all-to-alls gather the whole sequence for h/d heads
around the attention. Rotary embeddings are applied here, per document (positions restart at 0 in
every document), rather than by GPTModel, because positions are only known once gathered.

Backends: flash-attn's varlen kernel when importable on GPU; otherwise torch SDPA with a
block-diagonal causal mask (short packs) or one SDPA call per document (long packs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

from parallel.rope_scaling import scaled_inverse_frequencies
from parallel.ulysses import gather_heads_scatter_sequence, scatter_heads_gather_sequence

try:  # optional accelerator
    from flash_attn import flash_attn_varlen_func
except Exception:  # noqa: BLE001 - any import failure means "not available"
    flash_attn_varlen_func = None

# Above this many packed tokens a dense (t x t) mask costs more than looping over documents.
DENSE_MASK_MAX_TOKENS = 4096


def rotary_inverse_frequencies(head_dim: int, base: float, device=None) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def document_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of every packed token inside its own document."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths, output_size=total)  # sized: no device sync
    return torch.arange(total, device=cu_seqlens.device) - starts


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Non-interleaved ("rotate half") RoPE on x: (tokens, heads, head_dim), like megatron-core's default."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def block_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Boolean (t, t) mask: True where query i may attend key j (same document, j <= i)."""
    doc = torch.repeat_interleave(
        torch.arange(len(cu_seqlens) - 1, device=cu_seqlens.device), (cu_seqlens[1:] - cu_seqlens[:-1]).long(),
        output_size=total,
    )
    idx = torch.arange(total, device=cu_seqlens.device)
    return (doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None])


def document_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float, dropout_p: float = 0.0,
    max_seqlen: int | None = None, bounds: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """q: (t, hq, d); k, v: (t, hk, d) with hq a multiple of hk (grouped-query attention: K and V are
    not expanded; flash-attn and SDPA take the groups as they are). max_seqlen and bounds: the
    longest document and cu_seqlens known on the host (else read from cu_seqlens, a device sync).
    Returns (t, hq, d)."""
    total, hq, _ = q.shape
    gqa = k.shape[1] != hq
    if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = cu_seqlens.to(torch.int32)
        max_len = int(max_seqlen) if max_seqlen is not None else int((cu[1:] - cu[:-1]).max())
        return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout_p, softmax_scale=scale, causal=True)
    if total <= DENSE_MASK_MAX_TOKENS:
        mask = block_causal_mask(cu_seqlens, total)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, dropout_p=dropout_p, scale=scale,
            enable_gqa=gqa,
        )
        return out.transpose(0, 1)
    pieces = []
    bounds = list(bounds) if bounds is not None else cu_seqlens.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            continue
        out = F.scaled_dot_product_attention(
            q[lo:hi].transpose(0, 1), k[lo:hi].transpose(0, 1), v[lo:hi].transpose(0, 1),
            is_causal=True, dropout_p=dropout_p, scale=scale, enable_gqa=gqa,
        )
        pieces.append(out.transpose(0, 1))
    return torch.cat(pieces, dim=0)


class DocumentAttention(MegatronModule):
    """megatron-core core-attention module for packed documents with per-document RoPE."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type=None,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("DocumentAttention does not support megatron context parallelism; use sp.mode")
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        rope_base = getattr(config, "hetron_rotary_base", None)
        inv_freq = None
        if rope_base:
            inv_freq = scaled_inverse_frequencies(rotary_inverse_frequencies(self.head_dim, rope_base),
                                                  getattr(config, "hetron_rope_scaling", None))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is None or packed_seq_params.cu_seqlens_q is None:
            raise ValueError("DocumentAttention needs packed_seq_params with cu_seqlens_q (qkv_format='thd')")
        if query.dim() == 4:  # (s, b=1, h, d) when megatron did not squeeze
            query, key, value = query.squeeze(1), key.squeeze(1), value.squeeze(1)
        cu = packed_seq_params.cu_seqlens_q
        d = getattr(packed_seq_params, "sp_size", 1)
        if d > 1:  # Ulysses: this rank holds 1/d of the group's tokens
            group = packed_seq_params.sp_group
            query, key, value = (scatter_heads_gather_sequence(x, group, d) for x in (query, key, value))
            out = gather_heads_scatter_sequence(self.attend(query, key, value, cu, packed_seq_params), group, d)
        else:
            out = self.attend(query, key, value, cu, packed_seq_params)
        return out.reshape(out.shape[0], -1)

    def attend(self, query, key, value, cu_seqlens, packed_seq_params):
        if self.inv_freq is not None:
            positions = document_positions(cu_seqlens, query.shape[0])
            query = apply_rotary(query, positions, self.inv_freq)
            key = apply_rotary(key, positions, self.inv_freq)
        dropout = self.dropout_p if self.training else 0.0
        return document_causal_attention(query, key, value, cu_seqlens, self.softmax_scale, dropout,
                                         packed_seq_params.max_seqlen_q, getattr(packed_seq_params, "cu_seqlens_host", None))
