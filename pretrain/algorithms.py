"""The algorithms a config switches on, in the order their hooks run."""
from __future__ import annotations

from pretrain.algorithm import Algorithm


def build_algorithms(cfg) -> list[Algorithm]:
    from pretrain.lisa import LisaLayerSampling
    from pretrain.live_forecast import LiveForecast
    from pretrain.memory_ledger import MemoryLedgerLog
    from pretrain.reweighting import LossReweighting
    from pretrain.step_profiler import StepProfiler
    from pretrain.throughput import ThroughputLog

    algorithms: list[Algorithm] = []
    if cfg.lisa.enabled:  # first: it rebuilds DDP and the optimizer that later hooks see
        algorithms.append(LisaLayerSampling(cfg.lisa, cfg.seed))
    if cfg.reweight.enabled:
        algorithms.append(LossReweighting(cfg.reweight))
    if cfg.forecast.every:
        algorithms.append(LiveForecast(cfg.forecast, cfg.schedule))
    if cfg.run.profile_steps:
        algorithms.append(StepProfiler(cfg.run.profile_steps))
    algorithms.append(ThroughputLog(cfg.run.peak_tflops))
    algorithms.append(MemoryLedgerLog())  # last: counts memory after every other hook
    return algorithms
