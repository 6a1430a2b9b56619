"""The algorithms a config switches on, in the order their hooks run."""
from __future__ import annotations

from pretrain.algorithm import Algorithm


def build_algorithms(cfg) -> list[Algorithm]:
    return []
