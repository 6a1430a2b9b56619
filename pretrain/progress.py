"""The progress display of rank 0: a rich bar with step, loss, tokens/s, model TFLOP/s per rank (and MFU
when the device's peak is known) and ETA, or plain lines when the output is not a terminal (logs, CI)."""
from __future__ import annotations

import sys
import time


class TrainingProgress:
    def __init__(self, cfg, start_step: int, enabled: bool):
        self.total = cfg.train.steps
        self.start_step = start_step
        self.enabled = enabled
        self.every = max(1, cfg.run.log_every)
        self.rich = enabled and cfg.run.progress and sys.stdout.isatty()
        self._bar = None
        self._task = None
        self._t0 = time.time()
        self._first_step_end: float | None = None
        self.expected_line = ""

    def __enter__(self):
        if self.rich:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                TextColumn("{task.fields[throughput]}"),
                TextColumn("{task.fields[extra]}"), TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start_step, loss="-",
                                            rate="-", throughput="", extra="")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def update(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self._say_expected_duration(metrics["step"])
        extra = f"eval {metrics['eval_loss']:.3f}" if "eval_loss" in metrics else ""
        throughput = throughput_text(metrics)
        if "forecast_final_loss" in metrics:
            extra += f" forecast {metrics['forecast_final_loss']:.3f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=metrics["step"], loss=f"{metrics['loss']:.4f}",
                             rate=f"{metrics['tokens_per_s']:,.0f}", throughput=throughput, extra=extra)
        elif metrics["step"] % self.every == 0 or metrics["step"] == self.total or extra:
            done = metrics["step"] - self.start_step
            eta = (time.time() - self._t0) / max(done, 1) * (self.total - metrics["step"])
            print(f"step {metrics['step']}/{self.total} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                  f"{metrics['tokens_per_s']:,.0f} tok/s {throughput} {extra} eta {eta:.0f}s", flush=True)


    def _say_expected_duration(self, step: int) -> None:
        """Once, after the third step of this launch: the time to the last step at the pace of steps
        2-3 (the first carries start-up)."""
        done = step - self.start_step
        if done == 1:
            self._first_step_end = time.time()
        if done != EXPECTED_AFTER_STEPS or self._first_step_end is None or step >= self.total:
            return
        per_step = (time.time() - self._first_step_end) / (done - 1)
        self.expected_line = expected_duration_line(per_step, self.total - step, step)
        if self._bar is not None:
            self._bar.console.print(self.expected_line)
        else:
            print(self.expected_line, flush=True)


EXPECTED_AFTER_STEPS = 3


def expected_duration_line(per_step_s: float, steps_left: int, step: int) -> str:
    left = per_step_s * steps_left
    shown = f"{left / 60:.1f} min" if left >= 90 else f"{left:.0f} s"
    steps = f"{steps_left} steps" if steps_left != 1 else "last step"
    return (f"expected: about {shown} more for the {steps} left ({per_step_s:.2f} s/step over steps "
            f"{step - EXPECTED_AFTER_STEPS + 2}-{step}; evaluation and checkpoints come on top)")


def throughput_text(metrics: dict) -> str:
    """'0.012 TFLOP/s/rank' (model FLOPs), with ' MFU 41.3%' when the device's peak is known."""
    if "model_tflops_per_rank" not in metrics:
        return ""
    text = f"{metrics['model_tflops_per_rank']:.3g} TFLOP/s/rank"
    return text + (f" MFU {100 * metrics['mfu']:.1f}%" if metrics.get("mfu") is not None else "")
