"""GPU checks (`pytest -m gpu`), run by scripts/gpu-check.sh on a lent GPU: bf16 training whose loss
falls and whose resume continues it, document attention against a per-document reference on the
device, LISA's memory ledger against CUDA's allocator, two-pass reweighting's peak memory against the
micro-batch count.

Without CUDA they skip, unless HETRON_GPU_DRY=1 (the check script's dry mode, which make test runs):
then they run on the CPU at tiny sizes, so that the checks themselves stay runnable for the first GPU
that appears; the CUDA-only comparisons are then left out."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import run_hetron

ON_GPU = torch.cuda.is_available()
DRY = os.environ.get("HETRON_GPU_DRY") == "1" and not ON_GPU
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (ON_GPU or DRY),
                                                  reason="needs CUDA (HETRON_GPU_DRY=1 runs it on the CPU at tiny sizes)")]

if ON_GPU:
    MODEL = ["model.preset=125m", "model.seq_length=1024", "data.global_batch_tokens=16384", "train.precision=bf16",
             "data.vocab_size=512"]
    STEPS = 20
else:
    MODEL = ["model.num_layers=4", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
             "model.seq_length=256", "data.global_batch_tokens=1024", "data.vocab_size=512"]
    STEPS = 6
COMMON = [*MODEL, "train.eval_every=0", "run.tensorboard=false", "run.plot=false", "--no-progress",
          "schedule.warmup_steps=2", f"schedule.total_steps={STEPS}"]


@pytest.fixture(scope="module")
def shards(request):
    # documents up to 1024 tokens on a GPU (its sequences are 1024 long), up to 256 in the dry mode
    return request.getfixturevalue("long_shards" if ON_GPU else "small_shards")


def train(run: Path, shards: Path, *extra: str) -> list[dict]:
    proc = run_hetron(["train", f"run.dir={run}", f"data.shards={shards}", *COMMON, *extra], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shards) -> tuple[Path, list[dict]]:
    run = tmp_path_factory.mktemp("gpu-full") / "run"
    return run, train(run, shards, f"train.steps={STEPS}")


def test_trains_and_the_loss_falls(full_run):
    _, rows = full_run
    losses = [r["loss"] for r in rows]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1, losses
    if ON_GPU:
        assert rows[-1]["mem_cuda_max_allocated_bytes"] > 0
        assert rows[-1]["mfu"] is not None and 0 < rows[-1]["mfu"] < 1


def test_resume_continues_the_same_losses(full_run, shards, tmp_path):
    _, full = full_run
    run = tmp_path / "split"
    half = STEPS // 2
    train(run, shards, f"train.steps={half}", f"checkpoint.every={half}")
    split = train(run, shards, f"train.steps={STEPS}", f"checkpoint.every={half}")
    assert [r["step"] for r in split] == [r["step"] for r in full]
    got, want = [r["loss"] for r in split], [r["loss"] for r in full]
    if ON_GPU:
        # The attention backward kernels (flash-attn, SDPA's memory-efficient one) accumulate with
        # atomics, so two runs of the same steps differ in the last bits, and bf16 compounds it.
        assert got == pytest.approx(want, rel=2e-2)
    else:
        assert got == want


def test_document_attention_matches_a_per_document_reference_on_the_device():
    from parallel.document_attention import document_causal_attention

    device = torch.device("cuda" if ON_GPU else "cpu")
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    lengths = [1, 7, 300, 1024, 33, 512] if ON_GPU else [1, 7, 60, 33]
    heads, groups, dim = (16, 4, 64) if ON_GPU else (4, 2, 16)
    total = sum(lengths)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(total, heads, dim, generator=gen).to(device, dtype)
    k = torch.randn(total, groups, dim, generator=gen).to(device, dtype)
    v = torch.randn(total, groups, dim, generator=gen).to(device, dtype)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    got = document_causal_attention(q, k, v, cu, dim ** -0.5, max_seqlen=max(lengths)).float()
    pieces = []
    for lo, hi in zip(cu.tolist()[:-1], cu.tolist()[1:]):
        qs, ks, vs = (x[lo:hi].float().transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(heads // groups, 0), vs.repeat_interleave(heads // groups, 0)
        pieces.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                                       scale=dim ** -0.5).transpose(0, 1))
    want = torch.cat(pieces)
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert (got - want).abs().max().item() <= tolerance


def test_document_attention_makes_no_host_sync_on_the_device(monkeypatch):
    """RoPE positions, the mask and both SDPA paths (and flash-attn when importable) with the host's
    boundaries: CUDA's sync debug mode raises on any device-to-host sync."""
    from parallel import document_attention as da

    device = torch.device("cuda" if ON_GPU else "cpu")
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    lengths = [5, 700, 64, 1024] if ON_GPU else [5, 70, 64]
    bounds = tuple([0, *torch.tensor(lengths).cumsum(0).tolist()])
    total, heads, dim = bounds[-1], 8, 64
    cu = torch.tensor(bounds, dtype=torch.int32).to(device)
    q, k, v = (torch.randn(total, heads, dim).to(device, dtype) for _ in range(3))
    inv_freq = da.rotary_inverse_frequencies(dim, 10000.0, device=device)
    outs = []
    for mask_limit in (da.DENSE_MASK_MAX_TOKENS, 0):
        monkeypatch.setattr(da, "DENSE_MASK_MAX_TOKENS", mask_limit)
        if ON_GPU:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            positions = da.document_positions(cu, total)
            outs.append(da.document_causal_attention(da.apply_rotary(q, positions, inv_freq),
                                                     da.apply_rotary(k, positions, inv_freq), v, cu, dim ** -0.5,
                                                     max_seqlen=max(lengths), bounds=bounds))
        finally:
            if ON_GPU:
                torch.cuda.set_sync_debug_mode(0)
    assert (outs[0].float() - outs[1].float()).abs().max().item() <= (3e-2 if ON_GPU else 1e-5)


def test_lisa_ledger_agrees_with_the_cuda_allocator(full_run, shards, tmp_path):
    _, full = full_run
    lisa = train(tmp_path / "lisa", shards, "train.steps=3", "lisa.layers=2", "lisa.interval=1000")
    held = lambda r: r["mem_grad_bytes"] + r["mem_optim_bytes"]  # noqa: E731
    saved_by_ledger = held(full[-1]) - held(lisa[-1])
    assert saved_by_ledger > 0
    if ON_GPU:
        # the same steps differ by the gradient buffers and optimizer state of the frozen layers
        saved_by_cuda = full[-1]["mem_cuda_max_allocated_bytes"] - lisa[-1]["mem_cuda_max_allocated_bytes"]
        assert saved_by_cuda == pytest.approx(saved_by_ledger, rel=0.2), (saved_by_cuda, saved_by_ledger)


def test_two_pass_reweighting_peak_memory_is_flat_in_the_micro_batch_count(shards, tmp_path):
    seq = int(next(o for o in MODEL if o.startswith("model.seq_length=")).split("=")[1])
    reweight = ["reweight.strategy=linupper", "reweight.burn_in_steps=1", "train.steps=3"]
    peaks = {}
    for count in (2, 8):
        rows = train(tmp_path / f"mb{count}", shards, *reweight, f"data.global_batch_tokens={count * seq}",
                     "schedule.total_steps=3")
        assert "weight_max" in rows[-1]  # a weighted, two-pass step
        peaks[count] = rows[-1].get("mem_cuda_max_allocated_bytes")
    if ON_GPU:
        assert peaks[8] <= peaks[2] * 1.10, peaks


def test_te_attention_trains_like_the_document_attention(shards, tmp_path):
    """model.attention=te (megatron's TE core attention, fused RoPE on the thd pack) against
    hetron's document attention: the same first losses within bf16 noise."""
    pytest.importorskip("transformer_engine")
    if not ON_GPU:
        pytest.skip("Transformer Engine's attention runs on CUDA only")
    te = train(tmp_path / "te", shards, "train.steps=3", "model.attention=te", "model.spec=te")
    ours = train(tmp_path / "document", shards, "train.steps=3", "model.attention=document", "model.spec=te")
    for a, b in zip(te, ours):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)
