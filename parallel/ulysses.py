"""Ulysses sequence parallelism over groups of different sizes.

Inside a group of d data-parallel ranks each rank holds 1/d of the group's packed tokens. Before
core attention an all-to-all scatters heads and gathers the sequence, so every rank attends over
whole documents for h/d heads; a second all-to-all brings the output back to the token shards.
Everything else in the layer (norms, projections, MLP) is per token and runs on the shard.

Process groups: every aligned contiguous range of data-parallel ranks of a power-of-two size
(start a multiple of the size) is created once, collectively, at start-up, for every tensor-parallel
rank (creating groups lazily per micro-batch is not collective-safe). Plans are laid out onto
aligned ranges by `align_groups`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass
class DocumentPackedParams(PackedSeqParams):
    """PackedSeqParams plus what parallel.document_attention reads: the document boundaries on the
    host too (no device read inside a layer), and the sequence-parallel group that runs the
    micro-batch, if any; then cu_seqlens_q are the boundaries of the group's whole packed sequence,
    not of this rank's shard."""

    cu_seqlens_host: tuple[int, ...] | None = None
    sp_group: object = None
    sp_size: int = 1


class SequenceParallelGroups:
    """All aligned power-of-two ranges of the data-parallel ranks, as process groups."""

    def __init__(self, sizes: list[int], timeout: timedelta | None = None):
        from megatron.core import parallel_state as ps

        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.sizes = sorted(s for s in sizes if s > 1 and s <= self.dp_size)
        world = dist.get_world_size()
        my_rank = dist.get_rank()
        # Data-parallel groups of every tensor/pipeline position: the same rank lists on every process.
        dp_lists = _all_data_parallel_rank_lists(world)
        self._groups: dict[tuple[int, int], object] = {}
        for size in self.sizes:
            for start in range(0, self.dp_size, size):
                for ranks in dp_lists:
                    members = ranks[start:start + size]
                    group = dist.new_group(members, timeout=timeout)
                    if my_rank in members:
                        self._groups[(start, size)] = group

    def group(self, start: int, size: int):
        if size == 1:
            return None
        try:
            return self._groups[(start, size)]
        except KeyError:
            raise ValueError(f"no sequence-parallel group at data-parallel ranks [{start}, {start + size}); "
                             f"sizes created: {self.sizes}") from None


def _all_data_parallel_rank_lists(world: int) -> list[list[int]]:
    from megatron.core import parallel_state as ps

    mine = dist.get_process_group_ranks(ps.get_data_parallel_group())
    gathered: list[list[int]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    unique = []
    for ranks in gathered:
        if ranks not in unique:
            unique.append(ranks)
    return sorted(unique)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 with equal splits; its adjoint is the same exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        # empty_like would copy a transposed input's strides; the collective writes contiguously.
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        dist.all_to_all_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def scatter_heads_gather_sequence(x: torch.Tensor, group, d: int) -> torch.Tensor:
    """(t/d, h, dh) shard of the sequence -> (t, h/d, dh): whole sequence, this rank's heads."""
    t_local, heads, dh = x.shape
    chunks = x.reshape(t_local, d, heads // d, dh).transpose(0, 1)  # (d, t/d, h/d, dh): chunk k goes to rank k
    received = _AllToAll.apply(chunks, group)  # received[k]: rank k's tokens, my heads
    return received.reshape(d * t_local, heads // d, dh)


def gather_heads_scatter_sequence(y: torch.Tensor, group, d: int) -> torch.Tensor:
    """(t, h/d, dh) -> (t/d, h, dh): back to this rank's tokens with every head."""
    t, heads_local, dh = y.shape
    chunks = y.reshape(d, t // d, heads_local, dh)  # chunk k: rank k's tokens
    received = _AllToAll.apply(chunks, group)  # received[k]: my tokens, rank k's heads
    return received.transpose(0, 1).reshape(t // d, d * heads_local, dh)
