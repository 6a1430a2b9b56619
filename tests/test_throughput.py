"""Model FLOPs per token (the standard count, attention included) and the peak MFU is measured against."""
from __future__ import annotations

import pytest

from pretrain.architecture import PRESETS, Architecture, training_flops_per_token
from pretrain.progress import throughput_text
from pretrain.throughput import model_tflops_per_rank, peak_tflops


def test_flops_per_token_is_6n_plus_attention():
    tiny = Architecture(**PRESETS["tiny"])  # 12 x hidden 128, 4 heads = 4 KV groups, FFN 384 (SwiGLU), 1024 context
    per_layer = 128 * (128 + 2 * 128) + 128 * 128 + 3 * 128 * 384  # q, k, v, out; gate, up, down
    matmul = 12 * per_layer + 4096 * 128  # + the output head (the input embedding is a lookup)
    assert training_flops_per_token(tiny, 4096) == 6 * matmul + 12 * 12 * 1024 * 128
    # 7B (LLaMA-1 shape): ~6.7e9 matmul parameters -> ~46 GFLOP per token at 4096 context
    assert training_flops_per_token(Architecture(**PRESETS["7b"]), 32000) / 1e9 == pytest.approx(46.08, rel=1e-3)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA A10", 125.0),
])
def test_known_gpu_peaks(name, tflops):
    assert peak_tflops(0.0, name, cuda=True, bf16=True)[0] == tflops


def test_no_mfu_without_a_peak_and_the_reason_says_how():
    peak, why = peak_tflops(0.0, "CPU", cuda=False, bf16=False)
    assert peak is None and "on CPU" in why and "run.peak_tflops" in why
    assert peak_tflops(0.0, "NVIDIA H100 PCIe", cuda=True, bf16=False)[0] is None  # fp32: not the bf16 peak
    assert peak_tflops(0.0, "Some Future GPU", cuda=True, bf16=True)[0] is None
    assert peak_tflops(50.0, "CPU", cuda=False, bf16=False) == (50.0, "run.peak_tflops=50")


def test_tflops_per_rank_and_progress_text():
    # 1e9 FLOP/token x 1e6 tokens in 2 s over 4 ranks = 125 TFLOP/s per rank
    assert model_tflops_per_rank(1e9, 1_000_000, 2.0, 4) == pytest.approx(125.0)
    assert throughput_text({"model_tflops_per_rank": 125.0, "mfu": 0.4}) == "125 TFLOP/s/rank MFU 40.0%"
    assert throughput_text({"model_tflops_per_rank": 0.0123, "mfu": None}) == "0.0123 TFLOP/s/rank"
