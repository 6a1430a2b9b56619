"""Run one real training step on this rank and dump the loss and every parameter's gradient.

Launched by tests as N real processes (gloo) through launch.local.spawn_ranks:
    python -m tests.grad_harness OUT.pt key=value ...
Rank 0 writes {"loss", "grads": {name: full fp32 gradient}, "sample_losses", "weights"} to OUT.pt.
The distributed optimizer is off so every rank's DDP buffer holds the full all-reduced gradient.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    from pretrain.algorithms import build_algorithms
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.train_cli import _load_prepared
    from pretrain.trainer import Trainer

    out = Path(argv[0])
    cfg = load_config(None, ["parallel.distributed_optimizer=false", "resume=never", *argv[1:]])
    info = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline, "gloo", threads=1)
    try:
        arch, shards, manifest = _load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        trainer._set_lr(0.0)
        for chunk in trainer.model_chunks:
            chunk.zero_grad_buffer()
        samples = trainer.loader.next_batch()
        from pretrain.step import SampleLosses

        record = SampleLosses()
        weighers = [a for a in trainer.algorithms if a.name == "reweight"]
        if weighers:
            loss, _, losses, weights = trainer.run_weighted_micro_batches(
                trainer.micro_batches(samples), len(samples), record,
                lambda ls: weighers[0].sample_weights(trainer, 10**9, ls))
        else:
            loss, _ = trainer.run_micro_batches(trainer.micro_batches(samples), forward_only=False, record=record)
            losses = weights = None
        module = trainer.model_chunks[0].module
        grads = {name: p.main_grad.detach().float().clone() for name, p in module.named_parameters()}
        if info.is_main:
            torch.save({"loss": loss, "grads": grads, "sample_losses": losses, "weights": weights}, out)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
