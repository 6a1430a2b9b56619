"""The algorithms a config switches on, in the order their hooks run."""
from __future__ import annotations

from pretrain.algorithm import Algorithm


def build_algorithms(cfg) -> list[Algorithm]:
    from pretrain.reweighting import LossReweighting

    algorithms: list[Algorithm] = []
    if cfg.reweight.enabled:
        algorithms.append(LossReweighting(cfg.reweight))
    return algorithms
