"""A memory ledger counted from the actual tensors the model, megatron's DDP and the optimizer hold:
bytes of parameters, gradient buffers and optimizer state on the device, logged every step (with or
without LISA, so runs compare), plus torch.cuda.max_memory_allocated on GPUs.

Tensors are counted by their storage, once each: a parameter that is a view into DDP's contiguous
parameter buffer counts the buffer (padding included), a `main_grad` view counts the whole gradient
buffer, and optimizer state that aliases a parameter (the distributed optimizer's fp32 shards) is
not counted twice. A buffer kept alive by a stale view therefore shows up here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pretrain.algorithm import Algorithm
from pretrain.optimizer_shards import optimizer_tensors


@dataclass(frozen=True)
class MemoryLedger:
    param_bytes: int
    grad_bytes: int
    optim_bytes: int

    def as_metrics(self) -> dict:
        return {"mem_param_bytes": self.param_bytes, "mem_grad_bytes": self.grad_bytes,
                "mem_optim_bytes": self.optim_bytes}


def _storages(tensors) -> dict[tuple, int]:
    """{(device, storage address): storage bytes} of the tensors (None and empty skipped)."""
    out = {}
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        out[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return out


def count_memory(model_chunks, optimizer) -> MemoryLedger:
    params = {}
    grads = {}
    for chunk in model_chunks:
        module = getattr(chunk, "module", chunk)
        for p in module.parameters():
            params.update(_storages([p]))
            grads.update(_storages([getattr(p, "main_grad", None), p.grad]))
        ddp_buffers = getattr(chunk, "buffers", None)  # megatron's DDP: a list (nn.Module's is a method)
        ddp_buffers = ddp_buffers if isinstance(ddp_buffers, list) else []
        for buffer in ddp_buffers + list(getattr(chunk, "expert_parallel_buffers", [])):
            grads.update(_storages([getattr(buffer, "grad_data", None)]))
            params.update(_storages([getattr(buffer, "param_data", None)]))
    optim = {k: v for k, v in _storages(optimizer_tensors(optimizer) if optimizer is not None else []).items()
             if k not in params and k not in grads}
    return MemoryLedger(sum(params.values()), sum(grads.values()), sum(optim.values()))


class MemoryLedgerLog(Algorithm):
    """Always on: adds the ledger of this rank (rank 0's is what metrics.jsonl keeps) to every step's
    metrics, after the optimizer step so Adam's lazily created state is counted."""

    name = "memory"

    def on_train_start(self, trainer) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        metrics.update(count_memory(trainer.model_chunks, trainer.optimizer).as_metrics())
        if torch.cuda.is_available():
            metrics["mem_cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
