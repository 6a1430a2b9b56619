"""`hetron train [CONFIG] [key=value ...] [--resume]`: pretrain a GPT.

Outside a distributed launch, this process validates the config, prepares the shards, writes the
run folder and spawns `launch.nproc` local ranks. Inside one (RANK/WORLD_SIZE set by srun, submitit
or torchrun), it runs as that one rank.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pretrain import preemption
from pretrain.arg_parser import OneLineErrorParser
from pretrain.config import Config, dump_config, load_config
from pretrain.errors import ConfigError, HetronError


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = OneLineErrorParser(prog="hetron train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", help="an optional config (YAML path or name under configs/), then key=value overrides")
    p.add_argument("--resume", action="store_true", help="resume from the newest complete checkpoint (error if none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs lines instead)")
    args = p.parse_intermixed_args(argv)
    config_file = None
    overrides = list(args.items)
    if overrides and "=" not in overrides[0]:
        config_file = overrides.pop(0)
    if args.resume:
        overrides.append("resume=latest")
    if args.no_progress:
        overrides.append("run.progress=false")
    return argparse.Namespace(config_file=config_file, overrides=overrides), overrides


def check_data_against_model(cfg: Config, shards: Path, manifest, arch) -> None:
    if manifest.max_context > arch.seq_length:
        raise ConfigError(
            f"shards in {shards} hold documents up to {manifest.max_context} tokens but model.seq_length="
            f"{arch.seq_length}; raise model.seq_length or prepare shards with --max-context {arch.seq_length}"
        )
    if cfg.data.global_batch_tokens < arch.seq_length:
        raise ConfigError(f"data.global_batch_tokens={cfg.data.global_batch_tokens} is smaller than one sequence "
                          f"(model.seq_length={arch.seq_length})")
    if cfg.data.tokenizer:
        from data.tokenizer import load_tokenizer, tokenizer_fingerprint

        fp = tokenizer_fingerprint(load_tokenizer(cfg.data.tokenizer))
        if fp != manifest.tokenizer_fingerprint:
            raise HetronError(f"data.tokenizer={cfg.data.tokenizer} does not match the tokenizer the shards in "
                              f"{shards} were made with; re-run `hetron prepare` with it")


def prepare_run(cfg: Config):
    """Everything that must happen once before ranks start: shards, checks, run folder."""
    from data.shard_cache import ensure_shards
    from pretrain.model import resolve_model

    arch = resolve_model(cfg.model, cfg.parallel)
    shards, manifest = ensure_shards(cfg.data, arch.seq_length, progress=cfg.run.progress)
    check_data_against_model(cfg, shards, manifest, arch)
    if cfg.stages:
        from data.stage_data import stage_sources

        stage_sources(cfg, shards, manifest, arch.seq_length, prepare=True)
    if cfg.resume == "latest":
        from pretrain.checkpoint import newest_checkpoint

        if newest_checkpoint(cfg.checkpoint_dir) is None:
            raise HetronError(f"resume requested but no complete checkpoint in {cfg.checkpoint_dir}")
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    return arch, shards, manifest


def main(argv: list[str]) -> int:
    from launch.local import in_distributed_launch, spawn_ranks

    ns, overrides = parse_args(argv)
    cfg = load_config(ns.config_file, overrides)
    if in_distributed_launch():
        return run_rank(cfg)
    prepare_run(cfg)
    if cfg.launch.nproc == 1:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        return run_rank(cfg)
    rank_argv = ([ns.config_file] if ns.config_file else []) + overrides
    return spawn_ranks("pretrain.train_cli", rank_argv, cfg.launch.nproc, Path(cfg.run.dir) / "logs",
                       master_port=cfg.launch.master_port, threads_per_rank=cfg.launch.threads_per_rank)


def run_rank(cfg: Config) -> int:
    import torch.distributed as dist

    from pretrain.algorithms import build_algorithms
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.progress import TrainingProgress
    from pretrain.trainer import Trainer

    threads = cfg.launch.threads_per_rank or int(os.environ.get("HETRON_THREADS", "0"))
    info = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline, cfg.launch.backend, threads)
    try:
        # Under srun/torchrun nobody prepared the run before the ranks started: rank 0 does it.
        if info.is_main:
            arch, shards, manifest = prepare_run(cfg)
        dist.barrier()
        if not info.is_main:
            arch, shards, manifest = _load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        resume = trainer.resume_path()
        if resume is not None:
            trainer.load(resume)
            if info.is_main:
                print(f"resumed from {resume} at step {trainer.step}", flush=True)
        elif cfg.init_from:
            source = trainer.initialize_from(Path(cfg.init_from))
            if info.is_main:
                print(f"initialized from {source} (optimizer state: {cfg.init_optimizer})", flush=True)
        progress = TrainingProgress(cfg, trainer.step, enabled=info.is_main)
        with progress:
            summary = trainer.fit(progress.update)
        if summary.get("preempted"):
            if info.is_main:
                print(f"stopped at step {summary['step']} on the preemption signal; checkpoint saved",
                      flush=True)
            preemption.run_callback()  # under submitit, rank 0: requeue the job and exit
            return 0
        if info.is_main:
            _finish(cfg, summary)
        return 0
    finally:
        shutdown()


def _load_prepared(cfg: Config):
    from data.prepare import Manifest
    from data.shard_cache import default_shards_dir
    from pretrain.model import resolve_model

    arch = resolve_model(cfg.model, cfg.parallel)
    shards = Path(cfg.data.shards) if cfg.data.shards else default_shards_dir(
        cfg.data.corpus, cfg.data.vocab_size, arch.seq_length, cfg.data.eval_fraction, cfg.data.tokenizer)
    return arch, shards, Manifest.load(shards)


def _finish(cfg: Config, summary: dict) -> None:
    from pretrain.metrics import plot_loss_curve

    run_dir = Path(cfg.run.dir)
    if "final_loss" not in summary:
        print(summary["message"])
        return
    plot = plot_loss_curve(run_dir) if cfg.run.plot else None
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    eval_text = f"{summary['eval_loss']:.4f}" if summary.get("eval_loss") is not None else "n/a"
    print(f"done: step {summary['step']}, train loss {summary['final_loss']:.4f}, held-out loss {eval_text}, "
          f"{summary['tokens_per_s']:,.0f} tokens/s (median), {summary['parameters'] / 1e6:.1f}M parameters")
    print(f"run folder: {run_dir.resolve()}" + (f"  (loss plot: {plot.name})" if plot else ""))


if __name__ == "__main__":
    from pretrain.cli import run_script

    run_script(main, "hetron train")
