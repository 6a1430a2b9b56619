"""reweight.scope=microbatch: each micro-batch weighs its own samples, in the one ordinary pass.

Micro-batch k of the step is the k-th micro-batch of every data-parallel rank together (under
sequence parallelism: every group's shard of it), as the method's authors' trainer gathers each
micro-batch's losses across data-parallel ranks. Inside megatron's loss function every rank of the
last pipeline stage all-reduces its partial (sum of token losses, token count) per sample over the
data-parallel group, weighs the samples that micro-batch holds, and scales its tokens by
token_coefficients of those samples. Micro-batch k then contributes (T_k / T) J_k to the step, J_k
its own objective (T_k its tokens, T the step's), so uniform weights give the plain per-token mean.

Every data-parallel rank runs the same number of micro-batches (the packer pads with empty ones and
SP plans place every rank in every micro-batch), so the collectives line up.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from pretrain.reweighting import token_coefficients


def effective_weights(coefficients: torch.Tensor, counts: torch.Tensor, objective: str) -> torch.Tensor:
    """The weights over the whole global batch that give these per-sample coefficients, the inverse of
    token_coefficients: batch-scope reweighting with them minimises the same objective."""
    c, n = coefficients.double(), counts.double()
    return c / len(c) if objective == "tokens" else c * n / n.sum()


class MicroBatchWeights:
    """Handed to pretrain.step.loss_func as its coefficients: called once per micro-batch with that
    rank's per-sample partial sums and counts, returns every sample's coefficient (0 outside it)."""

    def __init__(self, num_samples: int, weigh: Callable[[torch.Tensor], torch.Tensor], objective: str, group,
                 device: torch.device):
        self.num_samples, self.weigh, self.objective, self.group, self.device = num_samples, weigh, objective, group, device
        self.sums = torch.zeros(num_samples, dtype=torch.float64)
        self.counts = torch.zeros(num_samples, dtype=torch.float64)
        self.coefficients = torch.zeros(num_samples, dtype=torch.float64)
        self.members: list[list[int]] = []

    def __call__(self, sample_ids: list[int], sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        partial = torch.zeros(self.num_samples, 2, dtype=torch.float64, device=self.device)
        if sample_ids:
            ids = torch.tensor(sample_ids, dtype=torch.long, device=self.device)
            partial.index_add_(0, ids, torch.stack([sums.detach().double(), counts.detach().double()], dim=1))
        dist.all_reduce(partial, group=self.group)
        partial = partial.cpu()
        present = (partial[:, 1] > 0).nonzero().flatten()
        coefficients = torch.zeros(self.num_samples, dtype=torch.float64)
        if len(present):
            sums_k, counts_k = partial[present, 0], partial[present, 1]
            weights = self.weigh((sums_k / counts_k).float())
            coefficients[present] = token_coefficients(weights, counts_k, self.objective)
            self.sums[present] += sums_k
            self.counts[present] += counts_k
            self.coefficients[present] = coefficients[present]
            self.members.append(present.tolist())
        return coefficients

    def step_view(self, is_last_stage: bool, copies: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample mean losses, effective weights over the global batch), the same on every rank:
        only the last pipeline stage weighed; its data-parallel ranks and tensor-parallel ranks
        (`copies` of them in all) hold the same vectors."""
        packed = torch.stack([self.sums, self.counts, self.coefficients], dim=1).to(device)
        if not is_last_stage:
            packed.zero_()
        dist.all_reduce(packed)
        sums, counts, coefficients = (packed.cpu() / copies).unbind(1)
        return (sums / counts.clamp(min=1.0)).float(), effective_weights(coefficients, counts, self.objective).float()
