"""Model FLOP/s per rank and MFU in every step's metrics (`model_tflops_per_rank`, `mfu`).

Model FLOPs count what the model needs per trained token, pretrain.architecture.training_flops_per_token
(6 per matmul parameter, output head included, plus attention's 12 * layers * seq_length * hidden),
whatever a step spends beyond it: reweighting's forward-only pass, LISA's skipped weight gradients and
the document masks change the time, not the count, as in the MFU of PaLM and Megatron-LM. Per rank:
the global batch's model FLOPs over the step time, divided by all ranks (tensor, pipeline and data
parallel). MFU divides that by the device's peak: `run.peak_tflops` when set, else the dense bf16
tensor-core peak of a known GPU (PEAK_BF16_TFLOPS, vendor datasheets) for a bf16 run; otherwise MFU is
null and rank 0 says why once at start (on CPU there is no peak to state).
"""
from __future__ import annotations

import re

from pretrain.algorithm import Algorithm
from pretrain.architecture import padded_vocab_size, training_flops_per_token

# (pattern in torch.cuda.get_device_name(), dense bf16 TFLOP/s per device); first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"B200", 2250.0),
    (r"H200|GH200", 989.4),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100|H800", 989.4),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)


def peak_tflops(configured: float, device_name: str, cuda: bool, bf16: bool) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device, where it comes from) or (None, why MFU is not reported)."""
    if configured > 0:
        return configured, f"run.peak_tflops={configured:g}"
    if not cuda:
        return None, "MFU not reported on CPU (no peak FLOP/s to state; set run.peak_tflops to give one)"
    if not bf16:
        return None, (f"MFU not reported: the known peaks are bf16 and this run is fp32 on {device_name}; "
                      "set run.peak_tflops")
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops, f"{device_name}: {tflops:g} TFLOP/s dense bf16"
    return None, f"MFU not reported: no known peak for {device_name}; set run.peak_tflops"


def model_tflops_per_rank(flops_per_token: float, tokens: int, seconds: float, world_size: int) -> float:
    return flops_per_token * tokens / seconds / world_size / 1e12


class ThroughputLog(Algorithm):
    """Always on: adds model TFLOP/s per rank and MFU (None when there is no peak) to every step."""

    name = "throughput"

    def __init__(self, configured_peak_tflops: float = 0.0):
        self.configured = configured_peak_tflops
        self.flops_per_token = 0.0
        self.peak: float | None = None

    def on_train_start(self, trainer) -> None:
        import torch

        vocab = padded_vocab_size(trainer.manifest.vocab_size, trainer.cfg.parallel.tensor)
        self.flops_per_token = float(training_flops_per_token(trainer.arch, vocab))
        cuda = trainer.info.device.type == "cuda"
        name = torch.cuda.get_device_name(trainer.info.device) if cuda else "CPU"
        self.peak, source = peak_tflops(self.configured, name, cuda, trainer.bf16)
        if trainer.info.is_main:
            print(f"hetron: throughput: {self.flops_per_token / 1e9:.4g} GFLOP per token (model FLOPs); {source}",
                  flush=True)

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        tflops = model_tflops_per_rank(self.flops_per_token, metrics["batch_tokens"], metrics["step_s"],
                                       trainer.info.world_size)
        metrics["model_tflops_per_rank"] = tflops
        metrics["mfu"] = tflops / self.peak if self.peak else None
