"""`hetron train` as the program launch/ submits and runs in Slurm jobs (launch.program.TrainingProgram):
the trainer's side of the layering, so that launch/ imports nothing from the trainer."""
from __future__ import annotations

from pathlib import Path

from launch.program import RunPlan


class HetronTrain:
    """Picklable (submitit sends it to every task): no state, methods import lazily."""

    def resolve_config(self, name: str) -> Path:
        from pretrain.config import resolve_config_path

        return resolve_config_path(name)

    def plan(self, config: str | None, overrides: list[str]) -> RunPlan:
        from data.shard_cache import shards_dir
        from pretrain.architecture import resolve_model
        from pretrain.config import RunConfig, load_config
        from pretrain.input_paths import check_input_paths

        cfg = load_config(config, list(overrides))
        seq_length = resolve_model(cfg.model, cfg.parallel).seq_length
        check_input_paths(cfg, seq_length)  # here, not on the cluster
        return RunPlan(run_dir=Path(cfg.run.dir), run_dir_is_default=cfg.run.dir == RunConfig.dir,
                       checkpoint_dir=cfg.checkpoint_dir.resolve(), steps=cfg.train.steps,
                       checkpoint_every=cfg.checkpoint.every, global_batch_tokens=cfg.data.global_batch_tokens,
                       preset=cfg.model.preset, nproc=cfg.launch.nproc,
                       shards=shards_dir(cfg.data, seq_length).absolute())

    def prepare(self, config: str | None, overrides: list[str]) -> None:
        from pretrain.bootstrap import prepare_run
        from pretrain.config import load_config

        prepare_run(load_config(config, list(overrides)), check_resume=False)

    def newest_checkpoint(self, checkpoint_dir: Path) -> Path | None:
        from pretrain.checkpoint import newest_checkpoint

        return newest_checkpoint(Path(checkpoint_dir))

    def run(self, argv: list[str]) -> int:
        import signal

        from pretrain import preemption
        from pretrain.train_cli import main

        # submitit's USR2 handler (requeue and exit) now runs after a checkpoint at the next step boundary
        if not preemption.installed():
            preemption.install(signal.SIGUSR2)
        return main(argv)

    def __eq__(self, other) -> bool:
        return isinstance(other, HetronTrain)

    def __hash__(self) -> int:
        return hash(HetronTrain)


TRAIN = HetronTrain()
