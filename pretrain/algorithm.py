"""Algorithms that change what a training step does (reweighting, LISA, forecasting, ...) are small
objects hooked at named points of the loop, rather than branches spread through the trainer.

Every hook has a do-nothing default; an algorithm overrides the ones it needs. Anything that
changes across steps goes in state_dict()/load_state_dict() and is saved in every checkpoint.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from data.packing import MicroBatch
    from pretrain.trainer import Trainer


class Algorithm:
    name = "algorithm"

    def on_train_start(self, trainer: "Trainer") -> None:
        """After the model, optimizer and loader exist and any checkpoint is loaded."""

    def on_step_start(self, trainer: "Trainer", step: int, batch_lengths: list[int]) -> None:
        """Before the forward-backward of `step` (0-based), with the lengths of its global batch."""

    def token_weights(self, trainer: "Trainer", mb: "MicroBatch", token_losses: torch.Tensor) -> torch.Tensor | None:
        """Per-token multipliers of the loss of one micro-batch, or None to leave it unweighted."""
        return None

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        """After the optimizer step; may add entries to `metrics` (logged to metrics.jsonl)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
