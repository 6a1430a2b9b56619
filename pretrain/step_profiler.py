"""The torch profiler on chosen steps (`run.profile_steps=10,11`, steps counted from 1 as metrics.jsonl
logs them): every rank records each chosen step, from before its forward-backward to after its
optimizer step, and writes a Chrome trace (chrome://tracing, Perfetto) to
run.dir/profile/step_NNNNNNNN-rank_R.json."""
from __future__ import annotations

from pathlib import Path

from pretrain.algorithm import Algorithm


def trace_path(run_dir: Path, step: int, rank: int) -> Path:
    return Path(run_dir) / "profile" / f"step_{step:08d}-rank_{rank}.json"


class StepProfiler(Algorithm):
    name = "profiler"

    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self._profile = None

    def on_step_start(self, trainer, step: int, batch_lengths: list[int]) -> None:
        if step + 1 not in self.steps:  # `step` is the 0-based index of the step about to run
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self._profile = profile(activities=activities)
        self._profile.__enter__()

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if self._profile is None:
            return
        self._profile.__exit__(None, None, None)
        path = trace_path(trainer.run_dir, step, trainer.info.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._profile.export_chrome_trace(str(path))
        self._profile = None
        if trainer.info.is_main:
            print(f"hetron: profiler trace of step {step} in {path.parent}", flush=True)
