"""`hetron train [CONFIG] [key=value ...] [--resume]`: pretrain a GPT.

Outside a distributed launch, this process validates the config, prepares the shards, writes the
run folder and spawns `launch.nproc` local ranks. Inside one (RANK/WORLD_SIZE set by srun, submitit
or torchrun), it runs as that one rank and prepares nothing: missing shards are an error naming the
`hetron prepare` command (or run `hetron train --prepare-only` with the same arguments first).
`--print-config` and `--dry-run` check and describe the run without writing anything.
"""
from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from pretrain.architecture import resolve_model
from pretrain.arg_parser import OneLineErrorParser
from pretrain.config import Config, config_yaml, load_config
from pretrain.input_paths import check_input_paths


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = OneLineErrorParser(prog="hetron train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", help="an optional config (YAML path or name under configs/), then key=value overrides")
    p.add_argument("--resume", action="store_true", help="resume from the newest complete checkpoint (error if none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs lines instead)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--prepare-only", action="store_true",
                      help="prepare the shards and the run folder, then exit (before starting ranks under Slurm)")
    only.add_argument("--print-config", action="store_true",
                      help="print the resolved config (defaults and preset filled in) as YAML and exit")
    only.add_argument("--dry-run", action="store_true",
                      help="check the config and every input path, print what would run (ranks, shards, resume, "
                           "parameters, FLOPs per token, memory per rank) and exit; writes nothing")
    args = p.parse_intermixed_args(argv)
    config_file = None
    overrides = list(args.items)
    if overrides and "=" not in overrides[0]:
        config_file = overrides.pop(0)
    if args.resume:
        overrides.append("resume=latest")
    if args.no_progress:
        overrides.append("run.progress=false")
    return argparse.Namespace(config_file=config_file, overrides=overrides, prepare_only=args.prepare_only,
                              print_config=args.print_config, dry_run=args.dry_run), overrides


def main(argv: list[str]) -> int:
    ns, overrides = parse_args(argv)
    cfg = load_config(ns.config_file, overrides)
    if ns.print_config:
        print(config_yaml(cfg), end="")
        return 0
    check_input_paths(cfg, resolve_model(cfg.model, cfg.parallel).seq_length)
    if ns.dry_run:
        from pretrain.dry_run import describe_run

        print("\n".join(describe_run(cfg)))
        return 0
    from pretrain.bootstrap import lock_run_folder, prepare_run, run_command  # after the checks: imports torch

    if ns.prepare_only:
        lock_run_folder(cfg)
        data = prepare_run(cfg)
        print(f"prepared: shards in {data.shards.resolve()}, run folder {Path(cfg.run.dir).resolve()}", flush=True)
        return 0
    rank_argv = ([ns.config_file] if ns.config_file else []) + overrides
    return run_command(cfg, "pretrain.train_cli", rank_argv, lambda: run_rank(cfg))


def run_rank(cfg: Config) -> int:
    from pretrain import preemption
    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import start_rank
    from pretrain.distributed import shutdown
    from pretrain.progress import TrainingProgress
    from pretrain.trainer import Trainer

    info, (arch, shards, manifest) = start_rank(cfg)
    me, hosts = share_rank_hosts(cfg, info)
    trainer = None
    try:
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
                print(f"initialized from {source} (optimizer state: {trainer.init_optimizer_note})", flush=True)
        progress = TrainingProgress(cfg, trainer.step, enabled=info.is_main)
        with progress:
            summary = trainer.fit(progress.update)
        if summary.get("preempted"):
            signum = preemption.requested_signal() or signal.SIGUSR2
            name = signal.Signals(signum).name
            if info.is_main:
                print(f"stopped at step {summary['step']} on {name}; checkpoint saved in {cfg.checkpoint_dir}. "
                      "Run the same command again to resume from it (resume=auto), or add --resume", flush=True)
            preemption.run_callback()  # under submitit, rank 0: requeue the job and exit
            # Slurm's warning (USR2) ends a job step that is requeued: success; a kill or Ctrl-C stops a run
            return 0 if signum == signal.SIGUSR2 else 128 + signum
        if info.is_main:
            _finish(cfg, summary)
        return 0
    except RuntimeError as exc:  # torch.distributed's errors are RuntimeErrors
        from pretrain.rank_hosts import is_communication_failure, lost_peer_message

        if not is_communication_failure(exc):
            raise
        from pretrain.checkpoint import newest_checkpoint
        from pretrain.errors import HetronError

        newest = newest_checkpoint(cfg.checkpoint_dir)
        raise HetronError(lost_peer_message(exc, hosts, me, trainer.step if trainer else 0,
                                            str(newest) if newest else None)) from None
    finally:
        shutdown()


def share_rank_hosts(cfg: Config, info):
    """Every rank's host and address; rank 0 records them in the run folder and says where ranks run."""
    import os

    import torch.distributed as dist

    from pretrain.rank_hosts import hosts_summary, this_rank, write_table

    me = this_rank(info.rank, os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "0")))
    table = [None] * info.world_size
    dist.all_gather_object(table, me)
    if info.is_main:
        write_table(Path(cfg.run.dir), table)
        if info.world_size > 1:
            print(f"hetron: {hosts_summary(table)}", flush=True)
    return me, table


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
