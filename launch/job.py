"""The callable submitit runs in every task: export the torch.distributed environment, run the program
(`hetron train`, handed in by the submitting command) as this task's rank, and on preemption or
time-out (Slurm's USR2) finish the current step, save a checkpoint on all ranks, and requeue the job
(a bounded number of times) so it resumes from there.

A job that fails for its own reasons (an exception, a non-zero exit) raises: submitit records the error,
Slurm marks the job FAILED, and nothing requeues it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import submitit

from launch.program import TrainingProgram
from launch.slurm_env import distributed_env_from_submitit
from pretrain.errors import HetronError


class TrainingFailed(RuntimeError):
    """`hetron train` returned a non-zero exit code inside the job."""


class TrainingJob(submitit.helpers.Checkpointable):
    def __init__(self, program: TrainingProgram, train_argv: list[str], run_dir: str, checkpoint_dir: str,
                 max_requeues: int, environ: dict[str, str] | None = None) -> None:
        self.program = program
        self.train_argv = list(train_argv)
        self.run_dir = run_dir
        self.checkpoint_dir = checkpoint_dir
        self.max_requeues = max_requeues
        self.environ = dict(environ or {})  # set in every task before training (HETRON_CACHE)

    def __call__(self) -> dict:
        import torch

        env = distributed_env_from_submitit(cuda_available=torch.cuda.is_available())
        os.environ.update(self.environ)
        os.environ.update(env.as_environ())
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        print(f"hetron job: {env.describe()}, restart {restarts}, run folder {self.run_dir}", file=sys.stderr,
              flush=True)
        try:  # the program routes submitit's USR2 handler (requeue and exit) through a checkpoint
            code = self.program.run(self.train_argv)
        except HetronError as exc:  # the user's error, as one line: the last line of the job's log
            raise TrainingFailed(f"hetron train: error: {exc}") from None
        if code != 0:
            raise TrainingFailed(f"hetron train exited with code {code} on rank {env.rank} "
                                 f"(run folder {self.run_dir}); its error is in the lines above")
        return {"run_dir": self.run_dir, "rank": env.rank, "restarts": restarts}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission | None:
        """Called by submitit on rank 0 when the job is preempted or about to time out."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts >= self.max_requeues:
            print(f"hetron job: not requeued: already requeued {restarts} time(s), the limit "
                  f"(--max-requeues {self.max_requeues})", file=sys.stderr, flush=True)
            return None
        print(f"hetron job: requeueing ({restarts + 1} of at most {self.max_requeues}); the next run resumes "
              f"from the newest complete checkpoint in {self.run_dir}", file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(self._resuming())

    def _resuming(self) -> TrainingJob:
        # resume=PATH (start from another run's checkpoint) still matters until this run has written a
        # checkpoint of its own; auto, latest and never all become auto.
        paths = [a for a in self.train_argv if a.startswith("resume=") and a[7:] not in ("auto", "latest", "never")]
        argv = [a for a in self.train_argv if not a.startswith("resume=")]
        if paths and self.program.newest_checkpoint(Path(self.checkpoint_dir)) is None:
            argv += paths[-1:]
        else:
            argv.append("resume=auto")
        return TrainingJob(self.program, argv, self.run_dir, self.checkpoint_dir, self.max_requeues, self.environ)
