"""Which accelerators this process found and which fallbacks it runs, said once on rank 0.

Library warnings stay filtered (pretrain.cli.quiet_library_warnings): megatron-core alone warns
about Apex and Transformer Engine a dozen times a start. What those warnings would have told a
person on a first GPU run (fused Adam missing, torch norms instead of fused ones, SDPA instead of
flash-attn, an untested megatron-core) is this one report instead.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util

# megatron-core releases hetron is tested with: LISA and the checkpoint code reach into its
# internals (pretrain/lisa.py, pretrain/checkpoint.py); pyproject.toml pins the same range.
TESTED_MEGATRON_CORE = ("0.16",)


def _version(dist_name: str) -> str | None:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def megatron_core_supported(version: str | None) -> bool:
    return version is not None and any(version == t or version.startswith(t + ".") for t in TESTED_MEGATRON_CORE)


def accelerator_report(*, cuda: bool, backend: str, device_name: str = "") -> list[str]:
    """Lines describing this rank's compute path (pure given what is installed)."""
    import torch

    te = _importable("transformer_engine")
    flash = _importable("flash_attn")
    mcore = _version("megatron-core")
    device = f"CUDA ({device_name}, {torch.cuda.device_count()} visible)" if cuda else "CPU (megatron-core through hetron's CPU backend)"
    lines = [f"compute: {device}, torch {torch.__version__}, {backend} process groups"]
    if megatron_core_supported(mcore):
        lines.append(f"megatron-core {mcore}")
    else:
        lines.append(f"megatron-core {mcore}: NOT a tested release (tested: {', '.join(t + '.x' for t in TESTED_MEGATRON_CORE)}); "
                     "LISA and checkpoint loading rely on its internals")
    if cuda:
        layers = "Transformer Engine layer spec" if te else "megatron-core local spec (no Transformer Engine)"
        attention = "flash-attn varlen (bf16/fp16)" if flash else "torch SDPA per document (no flash-attn)"
    else:
        layers, attention = "megatron-core local spec", "torch SDPA per document"
    # what megatron-core itself picked at import (its fallbacks are what its warnings announce)
    from megatron.core import optimizer as mcore_optimizer
    from megatron.core.models.gpt import gpt_layer_specs

    adam = mcore_optimizer.Adam
    optimizer = f"{adam.__module__.split('.')[0]} {adam.__name__}"
    if getattr(mcore_optimizer, "USING_PYTORCH_OPTIMIZER", False):
        optimizer += " (no Transformer Engine/Apex fused Adam)"
    norms = "fused norms (Apex)" if getattr(gpt_layer_specs, "HAVE_APEX", False) else "torch norms (no Apex)"
    if te and cuda:
        norms = "Transformer Engine norms"
    lines.append(f"layers: {layers}; attention: {attention}; optimizer: {optimizer}; {norms}")
    return lines
