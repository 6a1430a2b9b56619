"""Packing a global batch into micro-batches and onto data-parallel ranks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.packing import assign_bins_to_ranks, build_micro_batch, micro_batches_for_rank, pack_into_bins


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=40), st.integers(64, 200))
def test_bins_hold_every_document_once_within_capacity(lengths, capacity):
    bins = pack_into_bins(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert bins == pack_into_bins(lengths, capacity)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=30), st.integers(1, 8))
def test_every_rank_gets_the_same_number_of_bins(tokens, ranks):
    assignment = assign_bins_to_ranks(tokens, ranks)
    assert len({len(a) for a in assignment}) == 1
    assert sorted(b for a in assignment for b in a if b >= 0) == list(range(len(tokens)))


def test_too_long_document_is_named():
    with pytest.raises(ValueError, match="document 1 has 300 tokens"):
        pack_into_bins([10, 300], 256)


def test_micro_batch_layout():
    mb = build_micro_batch([np.array([1, 2, 3, 4]), np.array([7, 8])], [3, 5], pad_id=0, pad_to_multiple=8)
    assert mb.tokens.tolist() == [[1, 2, 3, 7, 0, 0, 0, 0]]
    assert mb.labels.tolist() == [[2, 3, 4, 8, 0, 0, 0, 0]]
    assert mb.positions.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    assert mb.cu_seqlens.tolist() == [0, 3, 4, 8]
    assert mb.loss_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    assert mb.num_tokens == 4 and mb.sample_ids == [3, 5]


def test_ranks_together_cover_the_global_batch():
    rng = np.random.default_rng(0)
    samples = [rng.integers(2, 100, size=n) for n in rng.integers(2, 120, size=25)]
    seen = []
    for rank in range(3):
        for mb in micro_batches_for_rank(samples, 128, rank, 3, pad_id=0):
            seen += mb.sample_ids
            assert mb.tokens.shape[1] <= 128 + 8
    assert sorted(seen) == list(range(25))
