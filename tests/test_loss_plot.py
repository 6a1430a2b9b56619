"""The loss plot: raw and smoothed train loss, held-out loss, a tokens axis on top, the LR below."""
from __future__ import annotations

import json

import pytest

from pretrain.metrics import loss_figure, plot_loss_curve, smoothed


def test_smoothing_keeps_level_and_length_and_damps_noise():
    assert smoothed([3.0] * 40) == pytest.approx([3.0] * 40)  # debiased: no ramp up from 0
    noisy = [5.0 + (0.5 if i % 2 else -0.5) for i in range(60)]
    out = smoothed(noisy)
    assert len(out) == 60 and max(abs(v - 5.0) for v in out[20:]) < 0.2


def test_figure_has_smoothed_loss_tokens_axis_and_lr_panel(tmp_path):
    rows = [{"step": s, "loss": 8.0 - 0.05 * s, "lr": 1e-3 * min(1, s / 5), "tokens": 4096 * s} for s in range(1, 41)]
    rows[19]["eval_loss"] = 7.1
    fig = loss_figure(rows, "run")
    loss_ax, lr_ax = fig.axes[:2]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["train loss", "train loss (smoothed)", "held-out loss"]
    assert [line.get_label() for line in lr_ax.get_lines()] == ["lr"]
    (top,) = loss_ax.child_axes
    assert top.get_xlabel() == "tokens"
    to_tokens, to_steps = top._functions  # the tokens logged at a step, and back
    assert to_tokens(20) == pytest.approx(4096 * 20) and to_steps(4096 * 30) == pytest.approx(30)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss_curve(run).read_bytes()[:4] == b"\x89PNG"
