"""Trainer trunk benchmarks, each a ratio against a baseline measured in the same run.

1. Whole iterations of hetron's training loop (`Trainer.fit`: streaming loader, packing, the step
   through megatron's schedule, LR, per-sample losses, metrics.jsonl and TensorBoard, the memory
   ledger, the progress line, the preemption all-reduce) against megatron-core's canonical loop as
   in Megatron-LM's pretrain_gpt.py and megatron-core's examples: pre-built batches of
   tokens/labels/loss_mask/position_ids, a forward step and a loss_func returning
   (loss, num_tokens, {'lm loss': report}) under calculate_per_token_loss,
   get_forward_backward_func, optimizer.step, OptimizerParamScheduler.step, the 'lm loss' report
   summed and all-reduced over data parallel and read on the host (logged every step, as hetron
   logs by default). The baseline has its own model of the same architecture and spec, DDP and
   optimizer configs, and runs the very global batches hetron's loop runs, packed into the same
   micro-batches (handed over as pretrain_gpt.py's get_batch hands packed THD sequences, with
   packed_seq_params), pre-built on the device: both arms do the same arithmetic on the same shapes,
   and what differs is the loop around it. A hetron iteration is timed from the end of the baseline step that follows
   the previous iteration's progress callback to the end of its own progress callback, so each
   iteration's post-callback work (preemption all-reduce, checkpoint check) is counted in the
   next one; one baseline step runs in every callback, so machine noise hits both alike.
   Compared in seconds per loss token (= per step: the same tokens). Target: <= 1.05.
2. The streaming loader's token rate (global batches formed and packed) vs the trainer's token
   consumption. Target: >= 20.

    python benchmarks/bench_trainer.py [--steps 12] [--warmup 2] [--preset tiny] [--json out.json] [--quick] [key=value ...]

--quick (run_all's mode): a 2-layer, hidden-64 model at 4,096-token global batches, 10 measured steps,
a 2 s loader window.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

from single_rank import single_rank_trainer


def canonical_loop(cfg, trainer, loader, num_steps: int):
    """megatron-core's canonical training loop on its own model, as a callable doing one step.
    Returns (step function -> (seconds, tokens, loss), loss tokens of every global batch)."""
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pretrain.model import build_gpt_model
    from pretrain.schedules.megatron import megatron_scheduler_args

    device = trainer.info.device
    model = build_gpt_model(cfg, trainer.arch, trainer.manifest.vocab_size, bf16=trainer.bf16)
    model.to(device)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer), model)
    model.config.finalize_model_grads_func = finalize_model_grads
    chunks = [ddp]
    # As Megatron-LM's arguments do: the optimizer config carries the schedule's LR range, which
    # megatron copies into every param group's max_lr / min_lr for OptimizerParamScheduler.
    opt_config = dataclasses.replace(trainer.optimizer_config, lr=cfg.schedule.peak_lr, min_lr=cfg.schedule.min_lr)
    optimizer = get_megatron_optimizer(opt_config, chunks)
    sched_args = megatron_scheduler_args(cfg.schedule) or dict(
        init_lr=0.0, max_lr=cfg.schedule.peak_lr, min_lr=cfg.schedule.min_lr, lr_warmup_steps=0,
        lr_decay_steps=cfg.train.steps, lr_decay_style="cosine")
    scheduler = OptimizerParamScheduler(optimizer, start_wd=cfg.train.weight_decay, end_wd=cfg.train.weight_decay,
                                        wd_incr_steps=cfg.train.steps, wd_incr_style="constant", **sched_args)

    # The same global batches hetron's loop consumes, in the same order (a loader with the trainer's
    # seed), packed into the same micro-batches, handed over the way pretrain_gpt.py's get_batch
    # hands packed (THD) sequences to the model: tokens, labels, loss_mask, position_ids and
    # packed_seq_params. So both arms compute the same function on the same shapes, step by step.
    from pretrain.step import packed_params

    steps = []
    for _ in range(num_steps):
        steps.append([{"tokens": mb.tokens.to(device), "labels": mb.labels.to(device),
                       "loss_mask": mb.loss_mask.to(device), "position_ids": mb.positions.to(device),
                       "packed_seq_params": packed_params(mb, device)}
                      for mb in trainer.micro_batches(loader.next_batch())])

    def loss_func(loss_mask, output_tensor):
        losses = output_tensor.view(-1).float()
        loss_mask = loss_mask.view(-1).float()
        loss = torch.sum(losses * loss_mask)
        num_tokens = loss_mask.sum().clone().detach().to(torch.int)
        report = torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])
        return loss, num_tokens, {"lm loss": report}

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output_tensor = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                              packed_seq_params=batch["packed_seq_params"])
        return output_tensor, partial(loss_func, batch["loss_mask"])

    forward_backward = get_forward_backward_func()
    state = {"i": 1}  # called after hetron's iteration i (batch i - 1): runs batch i, hetron's next one

    def step():
        start, cpu = time.perf_counter(), time.process_time()
        batches = steps[state["i"]]
        state["i"] += 1
        data = iter(batches)
        for chunk in chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        losses_reduced = forward_backward(forward_step_func=forward_step, data_iterator=data, model=chunks,
                                          num_microbatches=len(batches), seq_length=max_len(batches),
                                          micro_batch_size=1,
                                          forward_only=False)
        update_successful, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        val = torch.vstack([x["lm loss"].view(-1) for x in losses_reduced]).sum(dim=0)
        torch.distributed.all_reduce(val, group=ps.get_data_parallel_group())
        loss = (val[0] / val[1]).item()
        return time.perf_counter() - start, time.process_time() - cpu, int(val[1].item()), loss

    return step, [sum(int(b["loss_mask"].sum()) for b in batches) for batches in steps]


def max_len(batches) -> int:
    return max(b["tokens"].shape[1] for b in batches)


# A model small enough that a step is short and the loop's own cost shows.
QUICK = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.num_query_groups=4",
         "model.ffn_hidden_size=128", "data.global_batch_tokens=4096"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="measured iterations of each arm")
    ap.add_argument("--warmup", type=int, default=2, help="iterations of each arm run first, not measured")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--json", default="")
    ap.add_argument("--quick", action="store_true", help="reduced mode: " + " ".join(QUICK) + ", 10 steps")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    quick = QUICK if args.quick else []
    if args.quick:
        args.steps = min(args.steps, 10)
    args.warmup = max(args.warmup, 1)
    import torch

    from data.loader import GlobalBatchLoader
    from pretrain import preemption
    from pretrain.memory_ledger import MemoryLedgerLog
    from pretrain.progress import TrainingProgress

    total = args.warmup + args.steps
    run_dir = f"/tmp/hetron-bench-{os.getpid()}"
    # The loop as `hetron train` runs it, minus the periodic work: no eval, no checkpoint but the
    # final one (which falls after the last timed iteration).
    trainer, cfg = single_rank_trainer([f"model.preset={args.preset}", *quick, f"train.steps={total}",
                                        f"run.dir={run_dir}", "run.tensorboard=true", "train.eval_every=0",
                                        f"checkpoint.every={10 ** 9}", *args.overrides],
                                       algorithms=[MemoryLedgerLog()])
    preemption.install()  # as under Slurm: every iteration all-reduces the stop flag
    same_batches = GlobalBatchLoader(trainer.shards / "train", cfg.data.global_batch_tokens, seed=cfg.seed,
                                     shuffle=cfg.data.shuffle)
    baseline_step, batch_tokens = canonical_loop(cfg, trainer, same_batches, total)
    mismatched = []
    progress = TrainingProgress(cfg, 0, enabled=True)
    hetron_s, hetron_cpu, hetron_tok, bare_s, bare_cpu, bare_tok, bare_losses = [], [], 0, [], [], 0, []
    mark = {"t": None, "cpu": None}

    def on_iteration(metrics):
        nonlocal hetron_tok, bare_tok
        progress.update(metrics)
        now, now_cpu = time.perf_counter(), time.process_time()
        if metrics["batch_tokens"] != batch_tokens[metrics["step"] - 1]:
            mismatched.append(metrics["step"])
        measured = metrics["step"] > args.warmup
        if mark["t"] is not None and measured:
            hetron_s.append(now - mark["t"])
            hetron_cpu.append(now_cpu - mark["cpu"])
            hetron_tok += metrics["batch_tokens"]
        if metrics["step"] < total:  # one baseline step between hetron iterations
            seconds, cpu_seconds, tokens, loss = baseline_step()
            if measured or metrics["step"] == args.warmup:
                bare_s.append(seconds)
                bare_cpu.append(cpu_seconds)
                bare_tok += tokens
                bare_losses.append(loss)
        mark["t"], mark["cpu"] = time.perf_counter(), time.process_time()

    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    with progress:
        summary = trainer.fit(on_iteration)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # Batches differ in token count (token budget, whole documents): compare seconds per token.
    step_ratio = (sum(hetron_s) / hetron_tok) / (sum(bare_s) / bare_tok)
    cpu_ratio = (sum(hetron_cpu) / hetron_tok) / (sum(bare_cpu) / bare_tok)
    # Pairs on the same global batch, run one right after the other: the median is robust to a
    # load spike that hits one step of one arm.
    paired = statistics.median(h / b for h, b in zip(hetron_s, bare_s))
    paired_cpu = statistics.median(h / b for h, b in zip(hetron_cpu, bare_cpu))
    consumption = hetron_tok / sum(hetron_s)

    loader = GlobalBatchLoader(trainer.shards / "train", cfg.data.global_batch_tokens, seed=cfg.seed + 1)
    t, tokens = time.perf_counter(), 0
    while time.perf_counter() - t < (2.0 if args.quick else 5.0):
        batch = loader.next_batch()
        trainer.micro_batches(batch)
        tokens += sum(batch.lengths)
    loader_rate = tokens / (time.perf_counter() - t)

    result = {
        "preset": args.preset, "steps": args.steps, "global_batch_tokens": cfg.data.global_batch_tokens,
        "threads": torch.get_num_threads(),
        "hetron_iteration_s_median": round(statistics.median(hetron_s), 4),
        "megatron_step_s_median": round(statistics.median(bare_s), 4),
        "hetron_tokens_per_iteration": round(hetron_tok / len(hetron_s)),
        "megatron_tokens_per_step": round(bare_tok / len(bare_s)),
        "hetron_iteration_cpu_s_median": round(statistics.median(hetron_cpu), 4),
        "megatron_step_cpu_s_median": round(statistics.median(bare_cpu), 4),
        "hetron_vs_megatron_seconds_per_token": round(step_ratio, 4), "target_step_ratio": 1.05,
        "hetron_vs_megatron_cpu_seconds_per_token": round(cpu_ratio, 4),
        "median_paired_ratio_wall": round(paired, 4), "median_paired_ratio_cpu": round(paired_cpu, 4),
        "per_iteration_wall_s": [round(x, 3) for x in hetron_s], "per_step_wall_s_megatron": [round(x, 3) for x in bare_s],
        "hetron_final_loss": summary.get("final_loss"), "megatron_last_loss": bare_losses[-1],
        "trainer_tokens_per_s": round(consumption), "loader_tokens_per_s": round(loader_rate),
        "loader_vs_trainer": round(loader_rate / consumption, 1), "target_loader_ratio": 20,
        "same_batches_in_both_arms": not mismatched, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
    }
    print(json.dumps(result, indent=2))
    print(f"RATIO hetron loop / megatron-core canonical loop (s per token): {step_ratio:.3f} wall, "
          f"{cpu_ratio:.3f} CPU; median of same-batch pairs {paired:.3f} wall, {paired_cpu:.3f} CPU (target <= 1.05)")
    print(f"RATIO streaming loader / trainer (tokens/s): {loader_rate / consumption:.0f}x (target >= 20)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    from pretrain.distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
