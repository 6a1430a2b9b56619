"""Pure packing of a global batch's documents into micro-batches and onto data-parallel ranks.

A sample of n tokens trains n - 1 next-token predictions; its "length" here is n - 1. Micro-batches
hold whole documents (attention never crosses documents: see parallel.document_attention), so a
micro-batch is described by the documents it holds plus padding up to a shape multiple.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.sample_store import sample_lengths


def pack_into_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped into bins of at most `capacity` tokens.

    Deterministic (ties broken by index) so every rank computes the same packing."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"document {i} has {lengths[i]} tokens, more than the micro-batch capacity {capacity}")
        for b, load in enumerate(loads):
            if load + lengths[i] <= capacity:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return bins


def assign_bins_to_ranks(bin_tokens: list[int], num_ranks: int) -> list[list[int]]:
    """Every rank gets the same number of bins (megatron runs the same number of micro-batches on
    each data-parallel rank); -1 marks an empty bin. Heaviest bins are dealt first to the rank with
    the least load, so ranks finish at about the same time."""
    per_rank = max(1, -(-len(bin_tokens) // num_ranks))
    order = sorted(range(len(bin_tokens)), key=lambda b: (-bin_tokens[b], b))
    ranks: list[list[int]] = [[] for _ in range(num_ranks)]
    loads = [0] * num_ranks
    for b in order:
        r = min((r for r in range(num_ranks) if len(ranks[r]) < per_rank), key=lambda r: (loads[r], r))
        ranks[r].append(b)
        loads[r] += bin_tokens[b]
    for r in range(num_ranks):
        ranks[r] += [-1] * (per_rank - len(ranks[r]))
    return ranks


@dataclass
class MicroBatch:
    """One packed micro-batch (batch dimension 1, 'thd' layout)."""

    tokens: torch.Tensor  # (1, t) int64 inputs
    labels: torch.Tensor  # (1, t) int64
    loss_mask: torch.Tensor  # (1, t) float: 0 on padding
    positions: torch.Tensor  # (1, t) int64: position inside each document
    cu_seqlens: torch.Tensor  # (docs + 1,) int32 boundaries, padding is its own final segment
    sample_ids: list[int]  # index in the global batch of each document (padding excluded)
    # Under sequence parallelism the tensors above are this rank's shard of a group's packed
    # sequence: cu_seqlens stay those of the whole sequence, shard_offset says where the shard starts.
    shard_offset: int = 0
    sp_start: int = 0
    sp_size: int = 1
    max_seqlen: int = 0  # longest segment of cu_seqlens, known on the host (no device sync per layer)
    cu_seqlens_host: tuple[int, ...] = ()  # cu_seqlens as Python ints, for the same reason

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def local_document_index(self) -> torch.Tensor:
        """For every token of this shard, the index of its document in cu_seqlens."""
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        return doc[self.shard_offset:self.shard_offset + self.tokens.shape[1]]

    def shard(self, rank_in_group: int, group_start: int, group_size: int) -> "MicroBatch":
        """This rank's 1/group_size of the packed sequence (its length must divide evenly)."""
        t = self.tokens.shape[1] // group_size
        lo, hi = rank_in_group * t, (rank_in_group + 1) * t
        return MicroBatch(self.tokens[:, lo:hi], self.labels[:, lo:hi], self.loss_mask[:, lo:hi],
                          self.positions[:, lo:hi], self.cu_seqlens, self.sample_ids, lo, group_start, group_size,
                          self.max_seqlen, self.cu_seqlens_host)


def build_micro_batch(samples: list[np.ndarray], sample_ids: list[int], pad_id: int, pad_to_multiple: int,
                      min_tokens: int = 0) -> MicroBatch:
    inputs, labels, positions, bounds = [], [], [], [0]
    for s in samples:
        inputs.append(s[:-1])
        labels.append(s[1:])
        positions.append(np.arange(len(s) - 1))
        bounds.append(bounds[-1] + len(s) - 1)
    used = bounds[-1]
    total = max(used, min_tokens)
    total = max(pad_to_multiple, -(-total // pad_to_multiple) * pad_to_multiple)
    pad = total - used
    if pad:
        inputs.append(np.full(pad, pad_id))
        labels.append(np.full(pad, pad_id))
        positions.append(np.arange(pad))
        bounds.append(total)
    mask = np.zeros(total, dtype=np.float32)
    mask[:used] = 1.0
    cat = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64))[None]  # noqa: E731
    return MicroBatch(
        tokens=cat(inputs), labels=cat(labels), loss_mask=torch.from_numpy(mask)[None], positions=cat(positions),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32), sample_ids=list(sample_ids),
        max_seqlen=max(b - a for a, b in zip(bounds[:-1], bounds[1:])), cu_seqlens_host=tuple(bounds),
    )


def micro_batches_for_rank(samples: list[np.ndarray], capacity: int, dp_rank: int, dp_size: int, pad_id: int,
                           pad_to_multiple: int = 8, fixed_shape: bool = False) -> list[MicroBatch]:
    """This data-parallel rank's micro-batches of the global batch `samples` (a GlobalBatch is
    packed from its lengths and only this rank's samples are read)."""
    lengths = sample_lengths(samples)
    bins = pack_into_bins(lengths, capacity)
    assignment = assign_bins_to_ranks([sum(lengths[i] for i in b) for b in bins], dp_size)
    out = []
    for b in assignment[dp_rank]:
        ids = sorted(bins[b]) if b >= 0 else []
        out.append(build_micro_batch([samples[i] for i in ids], ids, pad_id, pad_to_multiple,
                                     min_tokens=capacity if fixed_shape else 0))
    return out
