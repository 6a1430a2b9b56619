"""FlexSP's cost model of one sequence-parallel (Ulysses) step, in milliseconds.

T(L, d) = (a1*L^2 + a2*L) / d + V(L, d) / B_d, with V(L, d) = 4*2*l*h*L*bytes / 2^20 / d MB (0 if d = 1):
4 all-to-alls x fwd+bwd x l layers x hidden h x L tokens. B_d is the measured all-to-all bandwidth of
a group of d ranks in GB/s, so V / B_d is in ms (1 MB / 1 GB/s = 1 ms). A group's time in a
micro-batch is the sum of T over its sequences plus the per-group constant beta. Each rank holds at
most `capacity_tokens` tokens of activations, so a sequence of L tokens needs
d >= min_sp(L) = 2^ceil(log2(ceil(L / C))) and a group of d ranks holds at most d*C tokens.

Presets: FlexSP's published 7B/13B/30B constants (arXiv 2412.01523, measured on 64 GPUs). Group sizes
larger than the bandwidth table (128, 256, ...) use the bandwidth of the largest measured size: an
assumption, since inter-node all-to-all bandwidth per rank stays roughly flat at that scale.

A preset describes its own architecture on FlexSP's cluster, so it is refused for another model.
`scaled_to` (sp.cost_model=auto) scales the 7B constants to a model's layers l and hidden size h by
FLOPs: a1 (attention, ~4 L^2 h per layer) by l*h, a2 (the linear layers, ~24 h^2 per token and
layer) and beta (per-group constant: parameter all-gathers, optimizer) by l*h^2. Only a model
written by `hetron calibrate` is `calibrated`: the others predict FlexSP's hardware, not this one,
and their predictions are logged as `sp_predicted_ms_uncalibrated`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pretrain.errors import HetronError

FLEXSP_BANDWIDTH_GBPS = {2: 119.54, 4: 104.07, 8: 96.5, 16: 10.33, 32: 5.94, 64: 4.87}

# capacity_tokens: FlexSP gives C ~ 6000 for 7B (ZeRO-3, 64 GPUs). 13B and 30B are our estimates,
# scaled by 1 / (layers * hidden) from the 7B value (activation bytes per token grow with l*h).
_PRESETS = {
    "7b": {"a1": 5.128e-6, "a2": 0.18396, "beta": 629.36, "layers": 32, "hidden": 4096, "capacity_tokens": 6000},
    "13b": {"a1": 9.2852e-6, "a2": 0.30602, "beta": 1132.56, "layers": 40, "hidden": 5120, "capacity_tokens": 3840},
    "30b": {"a1": 15.4262e-6, "a2": 0.80357, "beta": 2789.36, "layers": 60, "hidden": 6656, "capacity_tokens": 1969},
}


def preset_architecture(name: str) -> tuple[int, int] | None:
    """(layers, hidden) a preset was measured for; None if `name` is no preset."""
    p = _PRESETS.get(name.lower())
    return (p["layers"], p["hidden"]) if p else None


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class CostModel:
    a1: float
    a2: float
    beta: float
    layers: int
    hidden: int
    bandwidth_gbps: dict[int, float] = field(default_factory=lambda: dict(FLEXSP_BANDWIDTH_GBPS), hash=False)
    capacity_tokens: int = 6000
    bytes_per_element: int = 2
    calibrated: bool = False  # measured on this hardware for this model by `hetron calibrate`
    source: str = ""  # where the constants come from, for messages

    def __post_init__(self):
        if self.capacity_tokens <= 0:
            raise HetronError(f"cost model: capacity_tokens must be > 0, got {self.capacity_tokens}")
        if not self.bandwidth_gbps or any(not is_power_of_two(int(d)) or d < 2 or b <= 0
                                          for d, b in self.bandwidth_gbps.items()):
            raise HetronError("cost model: bandwidth_gbps must map power-of-two group sizes >= 2 "
                              f"to positive GB/s, got {self.bandwidth_gbps}")
        # JSON keys are strings; keep ints so lookups work after load().
        object.__setattr__(self, "bandwidth_gbps", {int(d): float(b) for d, b in self.bandwidth_gbps.items()})

    @classmethod
    def preset(cls, name: str, **overrides) -> CostModel:
        key = name.lower()
        if key not in _PRESETS:
            raise HetronError(f"unknown cost-model preset {name!r}; one of: {', '.join(_PRESETS)}")
        return cls(**{**_PRESETS[key], "source": f"FlexSP's {key.upper()} constants (64 GPUs)", **overrides})

    @classmethod
    def scaled_to(cls, layers: int, hidden: int, **overrides) -> CostModel:
        """FlexSP's 7B constants scaled by FLOPs to a model of `layers` x `hidden` (uncalibrated)."""
        base = _PRESETS["7b"]
        attention = layers * hidden / (base["layers"] * base["hidden"])
        linear = layers * hidden**2 / (base["layers"] * base["hidden"] ** 2)
        fields = {"a1": base["a1"] * attention, "a2": base["a2"] * linear, "beta": base["beta"] * linear,
                  "layers": layers, "hidden": hidden, "capacity_tokens": base["capacity_tokens"],
                  "source": f"FlexSP's 7B constants scaled to {layers} layers x hidden {hidden}"}
        return cls(**{**fields, **overrides})

    def bandwidth(self, d: int) -> float:
        """GB/s of an all-to-all in a group of d ranks; sizes past the table use its largest entry."""
        known = [size for size in sorted(self.bandwidth_gbps) if size <= d]
        return self.bandwidth_gbps[known[-1] if known else min(self.bandwidth_gbps)]

    def comm_ms_per_token(self, d: int) -> float:
        if d == 1:
            return 0.0
        megabytes_per_token = 4 * 2 * self.layers * self.hidden * self.bytes_per_element / 2**20 / d
        return megabytes_per_token / self.bandwidth(d)

    def seq_time_ms(self, length: int, d: int) -> float:
        return (self.a1 * length * length + self.a2 * length) / d + length * self.comm_ms_per_token(d)

    def group_time_ms(self, lengths: Iterable[int], d: int) -> float:
        return sum(self.seq_time_ms(length, d) for length in lengths) + self.beta

    def min_sp(self, length: int) -> int:
        ranks = max(1, math.ceil(length / self.capacity_tokens))
        return 1 << (ranks - 1).bit_length()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["bandwidth_gbps"] = {str(d): b for d, b in sorted(self.bandwidth_gbps.items())}
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        path = Path(path)
        if not path.is_file():
            raise HetronError(f"cost model file not found: {path} (write one with `hetron calibrate` "
                              "or use a preset: 7b, 13b, 30b)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HetronError(f"cost model file {path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise HetronError(f"cost model file {path}: expected a JSON object, got {type(raw).__name__}")
        fields = {"a1", "a2", "beta", "layers", "hidden", "bandwidth_gbps", "capacity_tokens",
                  "bytes_per_element", "calibrated", "source"}
        missing = sorted(fields - {"bytes_per_element", "calibrated", "source"} - raw.keys())
        unknown = sorted(raw.keys() - fields)
        if missing or unknown:
            raise HetronError(f"cost model file {path}: missing keys {missing}, unknown keys {unknown}")
        try:
            return cls(a1=float(raw["a1"]), a2=float(raw["a2"]), beta=float(raw["beta"]),
                       layers=int(raw["layers"]), hidden=int(raw["hidden"]),
                       bandwidth_gbps={int(d): float(b) for d, b in dict(raw["bandwidth_gbps"]).items()},
                       capacity_tokens=int(raw["capacity_tokens"]),
                       bytes_per_element=int(raw.get("bytes_per_element", 2)),
                       # a file is what `hetron calibrate` measured unless it says otherwise
                       calibrated=bool(raw.get("calibrated", True)), source=str(raw.get("source") or path))
        except (TypeError, ValueError) as exc:
            raise HetronError(f"cost model file {path}: bad value ({exc})") from None
