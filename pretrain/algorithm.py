"""Algorithms that change what a training step does (reweighting, LISA, forecasting, ...) are small
objects hooked at named points of the loop, rather than branches spread through the trainer.

Every hook has a do-nothing default; an algorithm overrides the ones it needs. Anything that
changes across steps goes in state_dict()/load_state_dict() and is saved in every checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported by the algorithms that compute with it
    import torch

    from pretrain.trainer import Trainer


class Algorithm:
    name = "algorithm"

    def before_wrap(self, trainer: "Trainer", model: torch.nn.Module) -> None:
        """After the model is built, before megatron's DDP and optimizer wrap it (they size their
        gradient buffers and optimizer state by the parameters that require grad at that moment)."""

    def after_build(self, trainer: "Trainer") -> None:
        """After the model, DDP wrapper and optimizer are built, before any checkpoint is loaded."""

    def before_checkpoint_load(self, trainer: "Trainer") -> None:
        """After this algorithm's state was restored from a checkpoint, before the model and
        optimizer tensors are loaded (e.g. to rebuild the optimizer for the saved trainable set)."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """After the model, optimizer and loader exist and any checkpoint is loaded."""

    def on_step_start(self, trainer: "Trainer", step: int, batch_lengths: list[int]) -> None:
        """Before the forward-backward of `step` (0-based), with the lengths of its global batch."""

    def weighs_step(self, trainer: "Trainer", step: int) -> bool:
        """Whether `step` is weighted by sample_weights: such a step costs an extra forward-only
        pass over the global batch (every sample's loss before any backward)."""
        return False

    def sample_weights(self, trainer: "Trainer", step: int, losses: torch.Tensor) -> torch.Tensor:
        """Weights (summing to 1) of the global batch's samples given their mean token losses;
        called on every rank with the same losses for the steps weighs_step() accepts."""
        raise NotImplementedError

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        """After the optimizer step; may add entries to `metrics` (logged to metrics.jsonl)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def rank_state_dict(self) -> dict | None:
        """State that differs by rank and is too large to gather on one host (LISA's offloaded
        optimizer slices): every rank saves its own in the checkpoint; None: nothing."""
        return None

    def load_rank_states(self, trainer: "Trainer", files: list[Path]) -> None:
        """The rank_state_dict files of every rank that saved one (the saved layout may differ from
        this run's); called after load_state_dict, before before_checkpoint_load."""
