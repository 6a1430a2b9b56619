"""Dynamic loss-based sample reweighting (Sow et al., ICLR 2025, arXiv 2502.06733).

Per step, over the whole global batch (all data-parallel ranks' samples, not one micro-batch):
h_i = delta * (2 l_i - l_max - l_min) / max(l_max - l_min, 1e-6)  in [-delta, delta];
f = linupper: min(h + delta, delta) | quadratic: 1 - h^2 / delta^2 | extremes: |h| | uniform: 0;
w = softmax((f - max f) / r).

The step minimises, by default, the authors' length-aware objective sum_i w_i (n_i / mean n) l_i
(n_i = the sample's tokens): under uniform weights that is exactly the per-token mean of plain
training. `reweight.objective=samples` minimises sum_i w_i l_i instead (the paper's formula as
written: every sample counts alike whatever its length). The trainer runs two passes through
megatron's schedule: a forward-only pass for every sample's loss, then the ordinary
forward-backward with each token's loss scaled by its sample's coefficient (token_coefficients);
reweight.scope=microbatch weighs each micro-batch in the one pass instead (pretrain.micro_batch_weights).
"""
from __future__ import annotations

import math

import torch

from pretrain.algorithm import Algorithm
from pretrain.config import ReweightConfig
from pretrain.errors import HetronError


def strategy_scores(h: torch.Tensor, strategy: str, delta: float) -> torch.Tensor:
    if strategy == "linupper":
        return torch.clamp(h + delta, max=delta)
    if strategy == "quadratic":
        return 1.0 - h**2 / delta**2
    if strategy == "extremes":
        return h.abs()
    if strategy == "uniform":
        return torch.zeros_like(h)
    raise ValueError(f"unknown reweighting strategy {strategy!r}")


def sample_weights(losses: torch.Tensor, strategy: str, r: float, delta: float = 1.0) -> torch.Tensor:
    """Weights summing to 1 for per-sample mean losses `losses` (1-D), float64 internally."""
    losses = torch.as_tensor(losses, dtype=torch.float64)
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise HetronError(f"per-sample loss of sample {i} of the global batch is {float(losses[i])}; "
                          "cannot compute reweighting weights")
    lo, hi = losses.min(), losses.max()
    h = delta * (2 * losses - hi - lo) / torch.clamp(hi - lo, min=1e-6)
    f = strategy_scores(h, strategy, delta)
    if math.isinf(r):
        return torch.full_like(losses, 1.0 / len(losses))
    return torch.softmax((f - f.max()) / r, dim=0)


def token_coefficients(weights: torch.Tensor, counts: torch.Tensor, objective: str = "tokens") -> torch.Tensor:
    """c_i (float64) such that sum_i c_i S_i / T is the step's objective, where S_i is the sum of
    sample i's token losses and T = sum_i n_i the global token count that megatron's per-token loss
    divides by. Partial sums S_i of sequence-parallel shards add up, so every rank scales its own
    tokens by c_i and needs no count of its own.
    tokens:  sum_i w_i (n_i / mean n) l_i = sum_i (N w_i) S_i / T
    samples: sum_i w_i l_i               = sum_i (T w_i / n_i) S_i / T"""
    w = torch.as_tensor(weights, dtype=torch.float64)
    n = torch.as_tensor(counts, dtype=torch.float64)
    if objective == "tokens":
        return len(w) * w
    if objective == "samples":
        return n.sum() * w / n
    raise ValueError(f"unknown reweighting objective {objective!r}")


def weight_statistics(weights: torch.Tensor, losses: torch.Tensor) -> dict:
    w = weights.double()
    entropy = float(-(w * torch.log(torch.clamp(w, min=1e-30))).sum())
    lo, hi = int(torch.argmin(w)), int(torch.argmax(w))
    return {
        "weight_entropy": entropy,
        "weight_ess": float(1.0 / (w**2).sum()),  # effective sample size, n for uniform weights
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "loss_of_min_weight": float(losses[lo]),
        "loss_of_max_weight": float(losses[hi]),
    }


class LossReweighting(Algorithm):
    name = "reweight"

    def __init__(self, cfg: ReweightConfig):
        self.cfg = cfg
        self.steps_weighted = 0

    def r_at(self, step: int) -> float:
        """The strength used at `step` (0-based): inf during burn-in, then the warm-up value, then r."""
        if step < self.cfg.burn_in_steps:
            return math.inf
        if step < self.cfg.burn_in_steps + self.cfg.r_warmup:
            return self.cfg.r_warmup_value
        return self.cfg.r

    def weighs_step(self, trainer, step: int) -> bool:
        # Burn-in steps are plain steps: uniform weights give exactly the per-token mean (objective
        # tokens), so no forward-only pass is spent on them.
        return math.isfinite(self.r_at(step)) or self.cfg.objective != "tokens"

    def sample_weights(self, trainer, step: int, losses: torch.Tensor) -> torch.Tensor:
        return sample_weights(losses, self.cfg.strategy, self.r_at(step), self.cfg.delta).float()

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        weights, losses = trainer.last_weights, trainer.last_sample_losses
        if weights is None:
            return
        self.steps_weighted += 1
        metrics.update(weight_statistics(weights, losses))
        r = self.r_at(step - 1)
        if math.isfinite(r):
            metrics["reweight_r"] = r
        if trainer.metrics_writer is not None:
            trainer.metrics_writer.histogram("reweight/weights", weights, step)

    def state_dict(self) -> dict:
        return {"steps_weighted": self.steps_weighted}

    def load_state_dict(self, state: dict) -> None:
        self.steps_weighted = int(state.get("steps_weighted", 0))
