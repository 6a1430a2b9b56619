"""Live scaling-law forecast during a real training run."""
from __future__ import annotations

import json
import math

import pytest
from conftest import TINY, error_lines, run_hetron


@pytest.mark.slow
def test_forecast_is_logged_and_survives_resume(tmp_path, small_shards):
    common = ["train", f"run.dir={tmp_path}", f"data.shards={small_shards}", *TINY, "launch.nproc=1",
              "forecast.every=8", "schedule.warmup_steps=2", "schedule.total_steps=40", "checkpoint.every=20"]
    assert run_hetron([*common, "train.steps=20"]).returncode == 0
    proc = run_hetron([*common, "train.steps=40"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    forecasts = [r for r in rows if "forecast_final_loss" in r]
    assert forecasts and all(math.isfinite(r["forecast_final_loss"]) for r in forecasts)
    assert max(r["forecast_from_step"] for r in forecasts) > 20  # fitted on the resumed curve too


def test_bad_forecast_config(tmp_path):
    proc = run_hetron(["train", f"run.dir={tmp_path}", "forecast.law=chinchilla", "forecast.every=5"])
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "forecast.law" in lines[0]


def test_a_forecast_on_a_background_thread_leaves_the_trainers_threads_alone():
    # The live forecast fits on rank 0 while it trains: torch's thread count is process-wide, and a
    # fit that set it to 1 would throttle the training step itself.
    import threading

    import numpy as np
    import torch

    from pretrain.scaling_law.forecast import forecast_final_loss

    lrs = np.concatenate([np.linspace(0, 3e-4, 10), np.full(190, 3e-4)])
    steps = np.arange(10, 120, 5)
    losses = 3.0 + 2.0 * (steps / 10.0) ** -0.5
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = {}
        worker = threading.Thread(target=lambda: result.update(f=forecast_final_loss(steps, losses, lrs, 10)))
        worker.start()
        worker.join()
        assert result["f"] is not None and math.isfinite(result["f"].final_loss)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
