"""A one-rank, in-process trainer for benchmarks that alternate variants on the same model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def single_rank_trainer(overrides: list[str], algorithms=None):
    """(trainer, cfg) after build, gloo world of one, all cores for this rank."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    from launch.local import free_port

    os.environ["MASTER_PORT"] = str(free_port())
    from pretrain.cli import quiet_library_warnings

    quiet_library_warnings()
    from pretrain.bootstrap import prepare_run, start_rank
    from pretrain.config import load_config
    from pretrain.trainer import Trainer

    cfg = load_config(None, ["resume=never", "launch.nproc=1", "launch.backend=gloo", "run.tensorboard=false",
                             *overrides])
    prepare_run(cfg)
    info, (arch, shards, manifest) = start_rank(cfg, threads=os.cpu_count() or 1)
    trainer = Trainer(cfg, info, arch, shards, manifest, algorithms or [])
    trainer.build()
    return trainer, cfg
