"""One training step's forward function and loss for megatron-core's forward_backward_func.

The loss of a global batch is the sum of token losses divided by the global token count: each
micro-batch returns (sum of its token losses, its token count) and megatron's finalize_model_grads
all-reduces the counts over data-parallel ranks and scales the gradients by 1 / total
(`calculate_per_token_loss`). Per-sample losses (mean token loss of each document) are collected on
the side for the algorithms that need them (reweighting) and for metrics. A reweighted step passes
`sample_coefficients` (one per sample of the global batch): each token's loss is then scaled by its
sample's coefficient, the count left as it is (pretrain.reweighting.token_coefficients); with
reweight.scope=microbatch `sample_coefficients` is a MicroBatchWeights that weighs each micro-batch
as it arrives (pretrain.micro_batch_weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from data.packing import MicroBatch
from parallel.ulysses import DocumentPackedParams


@dataclass
class SampleLosses:
    """Per-sample sums of token losses and token counts seen by this rank in one step.

    Everything stays on the device until the step reads it (one copy per step, after megatron's
    forward-backward, instead of host syncs in every micro-batch's loss function)."""

    sample_ids: list[torch.Tensor] = field(default_factory=list)
    sums: list[torch.Tensor] = field(default_factory=list)
    counts: list[torch.Tensor] = field(default_factory=list)

    def add(self, sample_ids: list[int], sums: torch.Tensor, counts: torch.Tensor) -> None:
        self.sample_ids.append(torch.tensor(sample_ids, dtype=torch.long).to(sums.device, non_blocking=True))
        self.sums.append(sums.detach().double())
        self.counts.append(counts.detach().double())

    def totals(self, device: torch.device) -> torch.Tensor:
        """[sum of token losses, token count] of this rank, float64 on the device (padding holds
        neither, so these are the per-sample sums added up)."""
        if not self.sums:
            return torch.zeros(2, dtype=torch.float64, device=device)
        return torch.stack([torch.cat(self.sums).sum(), torch.cat(self.counts).sum()])

    def per_sample(self, num_samples: int, device: torch.device) -> torch.Tensor:
        """(num_samples, 2) float64 on the device: [sum of token losses, token count] by global
        sample index (0 for samples this rank did not see)."""
        out = torch.zeros(num_samples, 2, dtype=torch.float64, device=device)
        if self.sums:
            ids = torch.cat(self.sample_ids)
            out.index_add_(0, ids, torch.stack([torch.cat(self.sums), torch.cat(self.counts)], dim=1))
        return out


def per_document_sums(values: torch.Tensor, mb: MicroBatch, doc: torch.Tensor | None = None) -> torch.Tensor:
    """Sums of per-token `values` of this rank's tokens by document (the micro-batch's sample_ids order).
    Under sequence parallelism these are partial sums: the group's other ranks hold the rest.
    `doc`: mb.local_document_index() on values' device, when the caller has it already."""
    doc = mb.local_document_index().to(values.device) if doc is None else doc
    sums = torch.zeros(len(mb.cu_seqlens) - 1, dtype=values.dtype, device=values.device).index_add_(0, doc, values)
    return sums[:len(mb.sample_ids)]


def packed_params(mb: MicroBatch, device: torch.device, sp_groups=None) -> PackedSeqParams:
    cu = mb.cu_seqlens.to(device)
    max_len = mb.max_seqlen
    group = sp_groups.group(mb.sp_start, mb.sp_size) if mb.sp_size > 1 else None
    return DocumentPackedParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len,
                                max_seqlen_kv=max_len, cu_seqlens_host=mb.cu_seqlens_host or None,
                                sp_group=group, sp_size=mb.sp_size)


def token_scale(mb: MicroBatch, sample_coefficients: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """Every token's coefficient: its sample's, 0 on padding (the segment after the samples);
    `doc` is mb.local_document_index() on the device."""
    per_doc = torch.zeros(len(mb.cu_seqlens) - 1, dtype=torch.float32)
    per_doc[:len(mb.sample_ids)] = sample_coefficients[mb.sample_ids].float()
    return per_doc.to(doc.device)[doc]


def loss_func(mb: MicroBatch, record: SampleLosses, sample_coefficients: torch.Tensor | None,
              output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)
    mask = mb.loss_mask.reshape(-1).to(losses.device)
    masked = losses * mask
    detached = masked.detach()
    doc = mb.local_document_index().to(losses.device)
    sums, counts = per_document_sums(detached, mb, doc), per_document_sums(mask, mb, doc)
    record.add(mb.sample_ids, sums, counts)
    if callable(sample_coefficients):  # reweight.scope=microbatch: weighed here, from this micro-batch's losses
        sample_coefficients = sample_coefficients(mb.sample_ids, sums, counts)
    if sample_coefficients is None:
        loss_sum = masked.sum()
    else:
        loss_sum = (masked * token_scale(mb, sample_coefficients, doc)).sum()
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([detached.sum(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}


def make_forward_step(record: SampleLosses, device: torch.device, sp_groups=None,
                      sample_coefficients: torch.Tensor | None = None):
    def forward_step(data_iterator: Iterator[MicroBatch], model):
        mb = next(data_iterator)
        output = model(
            mb.tokens.to(device), mb.positions.to(device), None, labels=mb.labels.to(device),
            packed_seq_params=packed_params(mb, device, sp_groups),
        )
        return output, partial(loss_func, mb, record, sample_coefficients)

    return forward_step
