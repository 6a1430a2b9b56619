"""What launch/ needs of the program a job runs, handed in by the command that submits it
(pretrain/train_program.py for `hetron train`), so that launch/ imports nothing of the trainer: it
checks requests, lays out runs and drives Slurm; the program validates its own arguments, prepares its
data, finds its checkpoints and runs as one task.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RunPlan:
    """One run's validated config, as far as a submission cares."""
    run_dir: Path
    run_dir_is_default: bool  # run.dir not set: the submission picks a fresh folder
    checkpoint_dir: Path
    steps: int
    checkpoint_every: int
    global_batch_tokens: int
    preset: str
    nproc: int  # tasks per node on CPUs
    shards: Path  # the folder the ranks will read


class TrainingProgram(Protocol):
    def resolve_config(self, name: str) -> Path:
        """A config argument (a YAML path or a name under configs/) -> its file; HetronError if none."""

    def plan(self, config: str | None, overrides: list[str]) -> RunPlan:
        """Validates the arguments (HetronError naming the key) -> the run's plan."""

    def prepare(self, config: str | None, overrides: list[str]) -> None:
        """Everything that must exist before the ranks start (shards, run folder), done here."""

    def newest_checkpoint(self, checkpoint_dir: Path) -> Path | None:
        """The newest complete checkpoint in the folder, or None."""

    def run(self, argv: list[str]) -> int:
        """Run as this task's rank (RANK, WORLD_SIZE, ... already exported); the exit code."""
