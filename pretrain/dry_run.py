"""`hetron train --dry-run`: what a run would do, checked and described, with nothing written or
started: ranks, run folder and resume, shards, model size, FLOPs per token and memory per rank.

Sizes are analytic (pretrain.architecture), not counted on a built model, so the description needs
neither torch nor megatron-core. Memory per rank: the model state megatron holds (parameters,
gradient buffers in fp32, Adam's fp32 master copy and moments, the optimizer's share divided over
the data-parallel ranks with parallel.distributed_optimizer), plus the activations one micro-batch of
C tokens (train.micro_batch_tokens, or sp.tokens_per_rank, else model.seq_length s) keeps for its
backward, C*h*(34 + 5*a*s/h) bytes per layer at 16 bits (Korthikanti et al. 2022, without
recomputation; documents of at most s tokens), divided by the tensor-parallel size; with
train.recompute_granularity=full a recomputed chunk keeps only its input (C*h values) and holds its
activations again during its own backward. (selective recomputation is not subtracted.)
"""
from __future__ import annotations

import os
from pathlib import Path

from pretrain.architecture import Architecture, count_parameters, padded_vocab_size, resolve_model, training_flops_per_token
from pretrain.config import Config
from pretrain.run_lock import refuse_if_in_use

GIB = 1024**3


def model_state_bytes_per_param(bf16: bool, data_parallel: int, distributed_optimizer: bool) -> float:
    """Bytes a rank holds per parameter of its shard: the parameter, megatron's fp32 gradient buffer,
    and Adam's state (bf16: fp32 master + 2 moments; fp32: 2 moments), the last sharded over DP."""
    optimizer = (12 if bf16 else 8) / (data_parallel if distributed_optimizer else 1)
    return (2 if bf16 else 4) + 4 + optimizer


def micro_batch_capacity(cfg: Config, arch: Architecture) -> int:
    if cfg.sp.mode != "off":
        return cfg.sp.tokens_per_rank or arch.seq_length
    return cfg.train.micro_batch_tokens or arch.seq_length


def activation_bytes(cfg: Config, arch: Architecture, bf16: bool) -> float:
    c, s, h, a = micro_batch_capacity(cfg, arch), arch.seq_length, arch.hidden_size, arch.num_attention_heads
    width = 1 if bf16 else 2
    per_layer = c * h * (34 + 5 * a * s / h) * width
    layers = arch.num_layers // cfg.parallel.pipeline
    hidden_state = c * h * 2 * width  # one layer's input, all that a recomputed layer keeps
    n = cfg.train.recompute_num_layers
    if cfg.train.recompute_granularity == "full" and cfg.train.recompute_method == "uniform":
        chunk = n or 1  # each chunk keeps its input; its activations exist again during its backward
        total = -(-layers // chunk) * hidden_state + chunk * per_layer
    elif cfg.train.recompute_granularity == "full":  # block: the first n (0: all) layers recomputed
        recomputed = n or layers
        total = recomputed * hidden_state + (layers - recomputed + 1) * per_layer
    else:
        total = layers * per_layer
    return total / cfg.parallel.tensor


def memory_lines(cfg: Config, arch: Architecture, parameters: int, world: int) -> list[str]:
    tp, pp = cfg.parallel.tensor, cfg.parallel.pipeline
    dp = max(1, world // (tp * pp))
    choices = {"auto": [("fp32 (on CPU)", False), ("bf16 (on GPU)", True)], "fp32": [("fp32", False)],
               "bf16": [("bf16", True)]}[cfg.train.precision]
    lines = []
    for label, bf16 in choices:
        state = parameters / (tp * pp) * model_state_bytes_per_param(bf16, dp, cfg.parallel.distributed_optimizer)
        act = activation_bytes(cfg, arch, bf16)
        recompute = "" if cfg.train.recompute_granularity == "none" else f", {cfg.train.recompute_granularity} recompute"
        lines.append(f"memory per rank, {label}: {state / GIB:.2f} GiB model state + {act / GIB:.2f} GiB activations "
                     f"of one {micro_batch_capacity(cfg, arch)}-token micro-batch (estimate{recompute}; "
                     f"TP {tp} x PP {pp} x DP {dp})")
    return lines


def describe_run(cfg: Config) -> list[str]:
    """The lines `--dry-run` prints; reads the run folder and shard folder, writes nothing."""
    from data.prepare import MANIFEST, Manifest
    from data.shard_cache import shards_dir
    from launch.local import in_distributed_launch

    arch = resolve_model(cfg.model, cfg.parallel)
    shards = shards_dir(cfg.data, arch.seq_length)
    manifest = Manifest.load(shards) if (shards / MANIFEST).is_file() else None
    if in_distributed_launch():
        world = int(os.environ["WORLD_SIZE"])
        launch = f"as rank {os.environ.get('RANK')} of {world} of this distributed launch"
    else:
        world = cfg.launch.nproc
        launch = f"{world} local rank(s) (launch.nproc={world}), backend {cfg.launch.backend}"
    lines = [f"config: valid; would run {launch}"]
    run_dir = Path(cfg.run.dir)
    refuse_if_in_use(run_dir)  # a real run would be refused now
    lines.append(f"run folder: {run_dir.resolve()}" + ("" if run_dir.exists() else " (to be created)"))
    lines.append(f"resume={cfg.resume}: {resume_decision(cfg)}")
    if manifest is not None:
        lines.append(f"shards: {shards.resolve()} (prepared; vocabulary {manifest.vocab_size})")
    else:
        lines.append(f"shards: {shards} to be prepared from data.corpus={cfg.data.corpus} (once)")
    vocab = cfg.model.vocab_size or (manifest.vocab_size if manifest else cfg.data.vocab_size)
    parameters = count_parameters(arch, vocab, cfg.model.tie_embeddings)
    flops = training_flops_per_token(arch, padded_vocab_size(vocab, cfg.parallel.tensor))
    lines.append(f"model: preset {cfg.model.preset}, {arch.num_layers} layers x hidden {arch.hidden_size}, "
                 f"{arch.num_attention_heads} heads ({arch.num_query_groups} KV groups), FFN {arch.ffn_hidden_size}, "
                 f"context {arch.seq_length}; {parameters / 1e6:.1f}M parameters (vocabulary {vocab})")
    tokens = cfg.train.steps * cfg.data.global_batch_tokens
    lines.append(f"training: {cfg.train.steps} steps x {cfg.data.global_batch_tokens:,} tokens = {tokens:,} tokens; "
                 f"{flops / 1e9:.3g} GFLOP per token, {flops * tokens / 1e15:.3g} PFLOP in all")
    lines += memory_lines(cfg, arch, parameters, world)
    lines.append("dry run: nothing written, nothing started")
    return lines


def resume_decision(cfg: Config) -> str:
    if cfg.resume == "never":
        return "starts from scratch"
    if cfg.resume not in ("auto", "latest"):
        return f"resumes from {cfg.resume}"
    if not cfg.checkpoint_dir.is_dir():
        return f"no checkpoint in {cfg.checkpoint_dir}: starts from " + (cfg.init_from or "scratch")
    from pretrain.checkpoint import newest_checkpoint  # imports torch: only when there are checkpoints

    newest = newest_checkpoint(cfg.checkpoint_dir)
    if newest is None:
        if cfg.resume == "latest":
            from pretrain.errors import HetronError

            raise HetronError(f"resume requested but no complete checkpoint in {cfg.checkpoint_dir}")
        return f"no complete checkpoint in {cfg.checkpoint_dir}: starts from " + (cfg.init_from or "scratch")
    return f"resumes from {newest}"
