"""Run unmodified megatron-core on CPU-only machines (gloo), for development, tests and CI.

megatron-core assumes CUDA throughout: it allocates on 'cuda', calls `.cuda()`, asks
`torch.cuda.current_device()`, forks CUDA RNG states, records streams and events. On a machine
without CUDA we enter, once per process, a TorchFunctionMode that sends every 'cuda' device to
the CPU and answers `Tensor.type()` with the 'torch.cuda.*' name megatron asserts on, and we put
small stand-ins in place of the torch.cuda calls that would otherwise raise. The CUDA RNG state is
the CPU default generator, so megatron's RNG tracker forks the generator CPU ops really use.

`enable_cpu_backend()` does nothing when CUDA is available: GPU runs use megatron-core unmodified.
"""
from __future__ import annotations

import contextlib
import functools
import types

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_STATE = {"mode": None}


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return False


def _cpu_device(device):
    # An int device means a CUDA ordinal in megatron's calls (`device=torch.cuda.current_device()`).
    if _is_cuda_device(device) or (isinstance(device, int) and not isinstance(device, bool)):
        return _CPU
    return device


_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


class CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA placement requests to the CPU and keeps megatron's CUDA type checks happy."""

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, "torch.cuda.FloatTensor")
        if func is torch.Tensor.to:
            args = tuple(_cpu_device(a) if _is_cuda_device(a) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return func(*args, **kwargs)


class _Stream:
    """Stand-in for torch.cuda.Stream / Event: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _Stream()

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def wait(self, *args, **kwargs):
        pass

    def elapsed_time(self, other):
        return 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _noop_fn():
    # A new function each time: torch._dynamo keys its rules by object identity and rejects one
    # object registered under two torch.cuda names.
    def noop(*args, **kwargs):
        return None

    return noop


def _cpu_rng_state(device=None, *args, **kwargs):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, *args, **kwargs):
    torch.set_rng_state(new_state)


def _patch_torch_cuda():
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.set_device = _noop_fn()
    cuda.synchronize = _noop_fn()
    cuda.empty_cache = _noop_fn()
    cuda.Stream = _Stream
    cuda.Event = _Stream
    cuda.current_stream = lambda *a, **k: _Stream()
    cuda.default_stream = lambda *a, **k: _Stream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = _cpu_rng_state
    cuda.set_rng_state = _set_cpu_rng_state
    cuda.random.get_rng_state = _cpu_rng_state
    cuda.random.set_rng_state = _set_cpu_rng_state
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = _noop_fn()
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.reset_peak_memory_stats = _noop_fn()
    cuda.nvtx = types.SimpleNamespace(range_push=_noop_fn(), range_pop=_noop_fn(), range=lambda *a, **k: contextlib.nullcontext(), mark=_noop_fn())


def _patch_megatron_rng():
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = functools.partial(_cpu_rng_state)
    mcore_random._set_cuda_rng_state = _set_cpu_rng_state


def cpu_backend_active() -> bool:
    return _STATE["mode"] is not None


def enable_cpu_backend() -> bool:
    """Enter the CPU backend for the rest of this process if CUDA is absent. Returns True if active."""
    if torch.cuda.is_available():
        return False
    if _STATE["mode"] is None:
        _patch_torch_cuda()
        _patch_megatron_rng()
        mode = CudaToCpuMode()
        mode.__enter__()
        _STATE["mode"] = mode
    return True
