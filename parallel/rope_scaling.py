"""RoPE frequency scaling: the Llama-3 ("llama3") rule of stretching the long wavelengths.

A pure function of the plain inverse frequencies, the same arithmetic as transformers'
`_compute_llama3_parameters`, so a Llama-3.x model imported from Hugging Face rotates its queries and
keys exactly as it was trained to. `model.rope_scaling` holds the Hugging Face dict unchanged.
"""
from __future__ import annotations

import math

from pretrain.errors import ConfigError

LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_type(scaling: dict | None) -> str:
    """The scaling's kind ('default' when none); Hugging Face spells the key rope_type or type."""
    if not scaling:
        return "default"
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def check_rope_scaling(scaling, key: str = "model.rope_scaling") -> None:
    """One line naming the key when the scaling is not one hetron's attention applies."""
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ConfigError(f"{key}={scaling!r} must be a mapping like Hugging Face's rope_scaling")
    kind = rope_type(scaling)
    if kind == "default":
        return
    if kind != "llama3":
        raise ConfigError(f"{key}.rope_type={kind!r} is not supported (hetron applies: default, llama3)")
    missing = [k for k in LLAMA3_KEYS if k not in scaling]
    if missing:
        raise ConfigError(f"{key} of rope_type llama3 lacks {', '.join(missing)}")
    if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError(f"{key}.high_freq_factor={scaling['high_freq_factor']} must exceed "
                          f"low_freq_factor={scaling['low_freq_factor']}")


def scaled_inverse_frequencies(inv_freq, scaling: dict | None):
    """inv_freq (a float tensor) with the scaling applied (unchanged for 'default'). torch is imported
    here only: config validation uses this module before torch is loaded."""
    import torch

    if rope_type(scaling) == "default":
        return inv_freq
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = context / low, context / high
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, out)
