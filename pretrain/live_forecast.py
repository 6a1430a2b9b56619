"""Live scaling-law forecast during training (`forecast.every=N`): every N steps rank 0 fits the law
to the loss curve so far under the configured schedule, in a background thread so training does
not wait, and the next logged step carries `forecast_final_loss` (the predicted loss at the
schedule's last step) to metrics.jsonl, the progress bar and the loss plot."""
from __future__ import annotations

import threading

from pretrain.algorithm import Algorithm
from pretrain.config import ForecastConfig


class LiveForecast(Algorithm):
    name = "forecast"

    def __init__(self, cfg: ForecastConfig, schedule):
        self.cfg = cfg
        self.schedule = schedule
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.previous: dict | None = None
        self._thread: threading.Thread | None = None
        self._result: dict = {}

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if not trainer.info.is_main:
            return
        self.steps.append(step)
        self.losses.append(metrics["loss"])
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
            forecast = self._result.pop("forecast", None)
            if forecast is not None:
                self.previous = forecast.params
                metrics["forecast_final_loss"] = forecast.final_loss
                metrics["forecast_from_step"] = forecast.step
        if step % self.cfg.every == 0 and self._thread is None:
            self._thread = threading.Thread(target=self._fit, args=(list(self.steps), list(self.losses)),
                                            name="hetron-forecast", daemon=True)
            self._thread.start()

    def _fit(self, steps: list[int], losses: list[float]) -> None:
        from pretrain.scaling_law.forecast import forecast_final_loss

        try:
            self._result["forecast"] = forecast_final_loss(
                steps, losses, self.schedule.lrs(self.schedule.total_steps), self.schedule.warmup_steps,
                law=self.cfg.law, previous=self.previous)
        except Exception as exc:  # noqa: BLE001 - a failed fit must not stop training
            self._result["forecast"] = None
            print(f"forecast at step {steps[-1]} failed: {exc}", flush=True)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "losses": self.losses, "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state.get("steps", []))
        self.losses = list(state.get("losses", []))
        self.previous = state.get("previous")
