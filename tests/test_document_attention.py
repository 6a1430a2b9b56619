"""Document-causal attention against a per-document reference built from first principles."""
from __future__ import annotations

import math

import pytest
import torch

from parallel import document_attention as da


def reference(q, k, v, lengths, base):
    """Each document alone: positions 0..L-1, RoPE, causal softmax attention, explicit loops."""
    out, start = [], 0
    inv = da.rotary_inverse_frequencies(q.shape[-1], base)
    for n in lengths:
        qs, ks, vs = q[start:start + n], k[start:start + n], v[start:start + n]
        pos = torch.arange(n)
        qs, ks = da.apply_rotary(qs, pos, inv), da.apply_rotary(ks, pos, inv)
        rep = q.shape[1] // k.shape[1]
        ks, vs = ks.repeat_interleave(rep, 1), vs.repeat_interleave(rep, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("lengths, heads, groups", [([5, 1, 9, 3], 4, 4), ([16], 4, 2), ([2, 7, 7], 6, 3)])
@pytest.mark.parametrize("dense_limit", [10**6, 0])  # the dense block mask and the per-document loop
def test_matches_per_document_reference(lengths, heads, groups, dense_limit, monkeypatch):
    monkeypatch.setattr(da, "DENSE_MASK_MAX_TOKENS", dense_limit)
    torch.manual_seed(0)
    t, d = sum(lengths), 8
    q, k, v = torch.randn(t, heads, d), torch.randn(t, groups, d), torch.randn(t, groups, d)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    inv = da.rotary_inverse_frequencies(d, 10000.0)
    pos = da.document_positions(cu, t)
    got = da.document_causal_attention(da.apply_rotary(q, pos, inv), da.apply_rotary(k, pos, inv), v, cu, 1 / math.sqrt(d))
    torch.testing.assert_close(got, reference(q, k, v, lengths, 10000.0), rtol=1e-5, atol=1e-5)


def test_no_attention_across_documents():
    torch.manual_seed(1)
    q, k, v = (torch.randn(12, 2, 4) for _ in range(3))
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    base = da.document_causal_attention(q, k, v, cu, 0.5)
    k2, v2 = k.clone(), v.clone()
    k2[5:] += 3.0
    v2[5:] -= 2.0
    changed = da.document_causal_attention(q, k2, v2, cu, 0.5)
    torch.testing.assert_close(base[:5], changed[:5])
    assert not torch.allclose(base[5:], changed[5:])


def test_positions_restart_in_every_document():
    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    assert da.document_positions(cu, 8).tolist() == [0, 1, 2, 0, 0, 1, 2, 3]


def test_megatron_rope_on_packed_documents_equals_hetrons(monkeypatch):
    """model.attention=te hands RoPE to megatron (GPTModel's RotaryEmbedding, applied per document of
    the thd pack; on a GPU TE's fused kernel does this in one kernel): the rotation hetron's document
    attention applies itself, positions restarting in every document, at a non-default base."""
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.transformer_config import TransformerConfig

    lengths, heads, dim, base = [5, 130, 1, 64, 17], 4, 32, 500000.0
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    x = torch.randn(cu[-1].item(), heads, dim, generator=torch.Generator().manual_seed(1))
    config = TransformerConfig(num_layers=1, hidden_size=heads * dim, num_attention_heads=heads,
                               apply_rope_fusion=False, use_cpu_initialization=True)
    # RotaryEmbedding.forward moves itself to CUDA; its frequencies laid out as forward lays them out
    rope = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=base, use_cpu_initialization=True)
    angles = torch.outer(torch.arange(max(lengths), dtype=torch.float32), rope.inv_freq)
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]
    # a real one-rank gloo group as the context-parallel group, without a default group
    one_rank = torch.distributed.ProcessGroupGloo(torch.distributed.HashStore(), 0, 1)
    theirs = apply_rotary_pos_emb(x, freqs, config, cu_seqlens=cu, cp_group=one_rank)
    ours = da.apply_rotary(x, da.document_positions(cu, x.shape[0]), da.rotary_inverse_frequencies(dim, base))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
