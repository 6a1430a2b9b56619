"""Run one real training step on this rank and dump the loss and every parameter's gradient.

Launched by tests as N real processes (gloo) through launch.local.spawn_ranks:
    python -m tests.grad_harness OUT.pt key=value ...
HARNESS_PLAN=2,1,1 runs the batch with a fixed sequence-parallel plan whose every micro-batch has
groups of those sizes (sp.mode must not be off); HARNESS_PLAN=4;2,1,1 alternates the patterns by
micro-batch; HARNESS_SKEW_RANK=R makes rank R plan another batch;
HARNESS_WEIGHTS=OTHER.pt weighs the samples with another run's weights.
Rank 0 writes {"loss", "grads": {name: full fp32 gradient}, "sample_losses", "weights",
"attention_calls"} to OUT.pt; attention_calls counts the core attention's forwards on rank 0 (twice per
layer and micro-batch when megatron recomputes it in the backward).
The distributed optimizer is off so every rank's DDP buffer holds the full all-reduced gradient; with
parallel.pipeline > 1 rank 0 gathers every stage's gradients, named by global layer.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch


def spawn_harness(tmp_path: Path, name: str, nproc: int, args: list[str], env: dict | None = None) -> int:
    """Run this harness as nproc gloo ranks with `args` (and `env` added to the environment), rank 0
    dumping to TMP/name.pt and the others logging to TMP/logs-name; returns the exit code."""
    from launch.local import spawn_ranks

    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return spawn_ranks("tests.grad_harness", [str(tmp_path / f"{name}.pt"), f"run.dir={tmp_path / name}", *args],
                           nproc, tmp_path / f"logs-{name}")
    finally:
        os.environ.clear()
        os.environ.update(old)


def run_harness(tmp_path: Path, name: str, nproc: int, args: list[str], env: dict | None = None) -> dict:
    """spawn_harness that must succeed; returns rank 0's dump."""
    code = spawn_harness(tmp_path, name, nproc, args, env)
    assert code == 0, f"harness run {name} exited {code}; logs: {sorted((tmp_path / f'logs-{name}').glob('*'))}"
    return torch.load(tmp_path / f"{name}.pt")


def pattern_plan(lengths: list[int], patterns: list[list[int]], capacity: int):
    """Micro-batches with groups of the patterns' sizes (micro-batch k uses pattern k mod their
    number); longest sequences first, each to the group with the least load per rank that can
    still hold it."""
    from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup

    remaining = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    micro_batches, stalled = [], 0
    while remaining:
        pattern = patterns[len(micro_batches) % len(patterns)]
        loads, members, rest = [0] * len(pattern), [[] for _ in pattern], []
        for i in remaining:
            fits = [g for g, d in enumerate(pattern) if loads[g] + lengths[i] <= d * capacity]
            if not fits:
                rest.append(i)
                continue
            g = min(fits, key=lambda g: (loads[g] / pattern[g], g))
            loads[g] += lengths[i]
            members[g].append(i)
        if len(rest) == len(remaining):
            stalled += 1
            if stalled == len(patterns):
                raise SystemExit(f"patterns {patterns} cannot hold sequence {rest[0]} of length {lengths[rest[0]]}")
            micro_batches.append(None)  # this pattern holds none of the rest: try the next one
            continue
        stalled = 0
        starts = [sum(pattern[:g]) for g in range(len(pattern))]
        micro_batches.append(MicroBatchPlan(tuple(SPGroup(st, d, tuple(m)) for st, d, m in zip(starts, pattern, members))))
        remaining = rest
    return SequenceParallelPlan(sum(patterns[0]), tuple(mb for mb in micro_batches if mb is not None), 0.0, 0.0,
                                "patterns " + ";".join(",".join(map(str, p)) for p in patterns))


def stage_gradients(module) -> dict[str, torch.Tensor]:
    """This pipeline stage's gradients, named as in a one-stage model: a stage numbers its layers
    from 0, their global index is layer_number - 1."""
    import re

    offsets = {str(i): str(layer.layer_number - 1) for i, layer in enumerate(module.decoder.layers)}
    return {re.sub(r"^decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{offsets[m.group(1)]}.", name):
            p.main_grad.detach().float().clone() for name, p in module.named_parameters()}


def main(argv: list[str]) -> int:
    from parallel.plan_execution import check_ranks_agree
    from pretrain.algorithms import build_algorithms
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.bootstrap import load_prepared
    from pretrain.trainer import Trainer

    from parallel.document_attention import DocumentAttention

    attention_calls = [0]
    plain_forward = DocumentAttention.forward

    def counted_forward(self, *args, **kwargs):
        attention_calls[0] += 1
        return plain_forward(self, *args, **kwargs)

    DocumentAttention.forward = counted_forward
    out = Path(argv[0])
    cfg = load_config(None, ["parallel.distributed_optimizer=false", "resume=never", *argv[1:]])
    info = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline, "gloo", threads=1)
    try:
        arch, shards, manifest = load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        if cfg.init_from:  # layouts start from the same weights (a pipeline stage seeds its own layers' init)
            trainer.initialize_from(Path(cfg.init_from))
        trainer._set_lr(0.0)
        for chunk in trainer.model_chunks:
            chunk.zero_grad_buffer()
        samples = trainer.loader.next_batch()
        from pretrain.step import SampleLosses

        plan = None
        if os.environ.get("HARNESS_PLAN"):
            lengths = [len(x) - 1 for x in samples]
            if int(os.environ.get("HARNESS_SKEW_RANK", "-1")) == info.rank:
                lengths = lengths[:-1]
            patterns = [[int(x) for x in p.split(",")] for p in os.environ["HARNESS_PLAN"].split(";")]
            plan = pattern_plan(lengths, patterns, trainer.sp_cost_model.capacity_tokens)
            check_ranks_agree(lengths, plan.to_json())
        trainer.micro_batches = functools.partial(trainer.micro_batches, plan=plan)

        record = SampleLosses()
        weighers = [a for a in trainer.algorithms if a.name == "reweight"]
        if weighers:
            def weigh(ls):
                # HARNESS_WEIGHTS=OUT.pt of another run: weigh with exactly its weights (a weight is
                # a sharp function of the losses, which differ in the last float32 bits across layouts)
                if os.environ.get("HARNESS_WEIGHTS"):
                    return torch.load(os.environ["HARNESS_WEIGHTS"])["weights"]
                return weighers[0].sample_weights(trainer, 10**9, ls)

            loss, _, losses, weights = trainer.run_weighted_micro_batches(
                trainer.micro_batches(samples), len(samples), record, weigh)
        else:
            loss, _ = trainer.run_micro_batches(trainer.micro_batches(samples), forward_only=False, record=record)
            losses = weights = None
        grads = stage_gradients(trainer.model_chunks[0].module)
        if cfg.parallel.pipeline > 1:  # rank 0 holds the first stage: gather the others' (one DP/TP copy each)
            import torch.distributed as dist

            mine = grads if info.dp_rank == 0 and info.tp_rank == 0 else {}
            stages = [None] * dist.get_world_size()
            dist.all_gather_object(stages, mine)
            grads = {name: g for stage in stages for name, g in stage.items()}
        if info.is_main:
            torch.save({"loss": loss, "grads": grads, "sample_losses": losses, "weights": weights,
                        "lengths": [len(x) - 1 for x in samples], "attention_calls": attention_calls[0]}, out)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    from pretrain.errors import HetronError

    try:
        sys.exit(main(sys.argv[1:]))
    except HetronError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
