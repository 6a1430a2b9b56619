"""How every multi-rank command starts (`hetron train`, `hetron calibrate`, the benchmarks), in one place.

Outside a distributed launch, the launching process prepares the run once (shards, stage corpora,
checks, run folder) and then runs as the only rank or spawns `launch.nproc` local ranks. Inside one
(RANK/WORLD_SIZE set by srun, submitit or torchrun) nothing is prepared: every rank loads the prepared
shards, and refuses missing ones, before the process group exists, so a new corpus fails at once with
the `hetron prepare` command instead of one rank tokenizing while the others time out in a barrier.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pretrain.config import Config, dump_config
from pretrain.errors import ConfigError, HetronError


class PreparedData(NamedTuple):
    arch: object  # pretrain.architecture.Architecture
    shards: Path
    manifest: object  # data.prepare.Manifest


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
    if cfg.model.vocab_size is not None and manifest.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"the tokenizer of the shards in {shards} has {manifest.vocab_size} tokens, more than "
                          f"model.vocab_size={cfg.model.vocab_size} embedding rows")


def _check_resume(cfg: Config) -> None:
    if cfg.resume == "latest":
        from pretrain.checkpoint import newest_checkpoint

        if newest_checkpoint(cfg.checkpoint_dir) is None:
            raise HetronError(f"resume requested but no complete checkpoint in {cfg.checkpoint_dir}")


def prepare_run(cfg: Config, *, check_resume: bool = True) -> PreparedData:
    """Everything that must happen once before ranks start: shards (prepared here if missing), stage
    corpora, checks, run folder with the resolved config. check_resume=False (a submission): whether
    there is a checkpoint to resume from is the job's to find out when it starts."""
    from data.shard_cache import ensure_shards
    from pretrain.architecture import resolve_model

    arch = resolve_model(cfg.model, cfg.parallel)
    shards, manifest = ensure_shards(cfg.data, arch.seq_length, progress=cfg.run.progress)
    check_data_against_model(cfg, shards, manifest, arch)
    if cfg.stages:
        from data.stage_data import stage_sources

        stage_sources(cfg, shards, manifest, arch.seq_length, prepare=True)
    if check_resume:
        _check_resume(cfg)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    return PreparedData(arch, shards, manifest)


def load_prepared(cfg: Config) -> PreparedData:
    """The run's prepared shards (and stage corpora), checked; prepares nothing: a missing folder is
    one line naming it and the `hetron prepare` command that writes it."""
    from data.prepare import MANIFEST, TOKENIZER
    from data.shard_cache import missing_shards_error, prepare_command, require_shards
    from pretrain.architecture import resolve_model

    arch = resolve_model(cfg.model, cfg.parallel)
    shards, manifest = require_shards(cfg.data, arch.seq_length)
    check_data_against_model(cfg, shards, manifest, arch)
    if cfg.stages:
        from data.stage_data import stage_sources, stream_folder

        for i, stage in enumerate(cfg.stages):
            for j, stream in enumerate(stage.data):
                key = f"stages[{i}].data[{j}]"
                folder = stream_folder(stream.path, cfg.data, shards, manifest, prepare=False, key=key)
                if not (folder / MANIFEST).is_file():
                    raise missing_shards_error(folder, f"{key}.path={stream.path}", prepare_command(
                        stream.path, folder, vocab_size=manifest.vocab_size, max_context=manifest.max_context,
                        eval_fraction=cfg.data.eval_fraction, tokenizer=str(shards / TOKENIZER),
                        text_field=cfg.data.text_field))
        stage_sources(cfg, shards, manifest, arch.seq_length, prepare=False)
    return PreparedData(arch, shards, manifest)


def threads_for_rank(cfg: Config) -> int:
    """torch intra-op threads of this rank: launch.threads_per_rank, else what the local launcher
    gave it, else Slurm's CPUs per task (srun does not limit torch's threads itself); 0: torch's default."""
    for value in (cfg.launch.threads_per_rank, os.environ.get("HETRON_THREADS"),
                  os.environ.get("SLURM_CPUS_PER_TASK")):
        if value and int(value) > 0:
            return int(value)
    return 0


def start_rank(cfg: Config, *, pipeline: int | None = None, threads: int | None = None):
    """This process as one rank of the launch: prepared data loaded (before any collective, so a bad
    input fails every rank at once), run folder and config (rank 0), the preemption handler under
    Slurm, then the process group. -> (RankInfo, PreparedData)."""
    from pretrain import preemption
    from pretrain.distributed import init_distributed

    data = load_prepared(cfg)
    _check_resume(cfg)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        lock_run_folder(cfg)
        dump_config(cfg, run_dir / "config.yaml")
    # SIGTERM / SIGINT: checkpoint at the next step, then exit (a second one aborts)
    preemption.install_stop_signals()
    if "SLURM_JOB_ID" in os.environ and not preemption.installed():
        # Every rank of a Slurm job (srun from an sbatch script, too): Slurm's warning signal is a
        # checkpoint at the next step boundary, not the default action (terminate, losing the steps).
        preemption.install(signal.SIGUSR2)
    info = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline if pipeline is None else pipeline,
                            cfg.launch.backend, threads_for_rank(cfg) if threads is None else threads,
                            timeout_s=cfg.launch.timeout_s)
    if info.is_main:
        _report_accelerators(info)
    return info, data


def _report_accelerators(info) -> None:
    """Once, on rank 0: the compute path in use (library warnings, which would say it a dozen times
    per rank, stay filtered)."""
    import torch
    import torch.distributed as dist

    from pretrain.accelerators import accelerator_report

    cuda = info.device.type == "cuda"
    name = torch.cuda.get_device_name(info.device) if cuda else ""
    for line in accelerator_report(cuda=cuda, backend=dist.get_backend(), device_name=name):
        print(f"hetron: {line}", flush=True)


def lock_run_folder(cfg: Config) -> None:
    """This process owns run.dir until it exits (pretrain.run_lock); before anything is written."""
    from pretrain import run_lock

    message = run_lock.acquire(Path(cfg.run.dir))
    if message:
        print(f"hetron: run.dir={cfg.run.dir}: {message}", flush=True)


def run_command(cfg: Config, module: str, rank_argv: list[str], run_rank: Callable[[], int]) -> int:
    """Inside a distributed launch: run as this rank. Outside: prepare the run here, once, then run as
    the only rank (launch.nproc=1) or spawn launch.nproc ranks of `python -m module rank_argv`."""
    from launch.local import free_port, in_distributed_launch, spawn_ranks

    if in_distributed_launch():
        return run_rank()
    lock_run_folder(cfg)
    prepare_run(cfg)
    if cfg.launch.nproc == 1:
        # a world of one still rendezvouses over TCP: a free port, not a fixed one another job may hold
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(cfg.launch.master_port or free_port()))
        return run_rank()
    return spawn_ranks(module, rank_argv, cfg.launch.nproc, Path(cfg.run.dir) / "logs",
                       master_port=cfg.launch.master_port, threads_per_rank=cfg.launch.threads_per_rank)
