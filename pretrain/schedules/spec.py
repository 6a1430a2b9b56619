"""ScheduleSpec: the `schedule:` section of a run config, one field per YAML key.

Steps are counted from the start of the schedule. A continual-pretraining stage restarts its own
schedule at the stage boundary: its spec (typically kind "rewarm") is evaluated at
`global_step - stage_start_step`; see `staged_lrs` for a whole multi-stage run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pretrain.errors import ConfigError
from pretrain.schedules import shapes

KINDS = ("constant", "cosine", "wsd", "infinite", "rewarm", "piecewise")
DEFAULT_DECAY_SHAPE = {"cosine": "cosine", "wsd": "1-sqrt", "rewarm": "cosine", "infinite": "inv-sqrt"}


@dataclass
class ScheduleSpec:
    """An LR schedule. Fields not used by `kind` are ignored (and not validated).

    constant:  warmup, then peak_lr.
    cosine:    warmup, then decay_shape (default cosine) from peak_lr to min_lr at total_steps.
    wsd:       warmup, stable at peak_lr, cooldown of cooldown_steps (linear|cosine|1-sqrt|exponential|
               megatron-exponential) ending at min_lr at total_steps (shapes.decay gives the formulas). stable_steps is derived; if given it must agree.
    infinite:  warmup, cooldown over cooldown_steps to constant_lr (inv-sqrt with `timescale`, or
               cosine), constant phase, then exponential anneal to min_lr over the last anneal_steps.
    rewarm:    a new stage: warmup from warmup_init_lr (typically the previous stage's final LR)
               to peak_lr, then re-decay (decay_shape, default cosine) to min_lr at total_steps.
    piecewise: warmup, then through `points` [[step, lr], ...] (interpolate: linear | previous).
    """

    kind: str = "cosine"
    peak_lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    warmup_init_lr: float = 0.0
    decay_shape: str | None = None
    stable_steps: int | None = None
    cooldown_steps: int = 0
    constant_lr: float | None = None
    timescale: float = 1.0
    anneal_steps: int = 0
    points: list[list[float]] | None = None
    interpolate: str = "linear"

    @classmethod
    def from_dict(cls, values: dict[str, Any], prefix: str = "schedule") -> "ScheduleSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]} is not a schedule key; known keys: {', '.join(sorted(known))}")
        spec = cls(**{k: _coerce(k, v, prefix) for k, v in values.items()})
        spec.validate(prefix)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def shape(self) -> str:
        return self.decay_shape or DEFAULT_DECAY_SHAPE.get(self.kind, "cosine")

    def validate(self, prefix: str = "schedule") -> "ScheduleSpec":
        def bad(msg: str) -> ConfigError:
            return ConfigError(msg)

        p = prefix
        if self.kind not in KINDS:
            raise bad(f"{p}.kind={self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("warmup_steps", "total_steps", "cooldown_steps", "anneal_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise bad(f"{p}.{name}={value!r} must be a non-negative integer")
        if self.total_steps <= 0:
            raise bad(f"{p}.total_steps={self.total_steps} must be positive")
        if not self.peak_lr > 0:
            raise bad(f"{p}.peak_lr={self.peak_lr} must be positive")
        if not self.min_lr >= 0:
            raise bad(f"{p}.min_lr={self.min_lr} must be >= 0")
        if self.min_lr > self.peak_lr and self.kind != "piecewise":
            raise bad(f"{p}.min_lr={self.min_lr} is above {p}.peak_lr={self.peak_lr}")
        if self.warmup_init_lr < 0 or self.warmup_init_lr > self.peak_lr:
            raise bad(f"{p}.warmup_init_lr={self.warmup_init_lr} must be in [0, {p}.peak_lr={self.peak_lr}]")
        if self.warmup_steps > self.total_steps:
            raise bad(f"{p}.warmup_steps={self.warmup_steps} is longer than the run ({p}.total_steps={self.total_steps})")
        if self.kind in DEFAULT_DECAY_SHAPE:
            allowed = shapes.INFINITE_COOLDOWN_SHAPES if self.kind == "infinite" else shapes.DECAY_SHAPES
            if self.shape not in allowed:
                raise bad(f"{p}.decay_shape={self.shape!r} is not one of {', '.join(allowed)} for kind {self.kind!r}")
            if self.shape == "exponential" and self.min_lr <= 0:
                raise bad(f"{p}.min_lr={self.min_lr} must be positive for decay_shape 'exponential'")
        if self.kind == "wsd":
            self._validate_wsd(p)
        elif self.kind == "infinite":
            self._validate_infinite(p)
        elif self.kind == "piecewise":
            self._validate_piecewise(p)
        return self

    def _validate_wsd(self, p: str) -> None:
        if self.cooldown_steps > self.total_steps:
            raise ConfigError(f"{p}.cooldown_steps={self.cooldown_steps} is longer than the run ({p}.total_steps={self.total_steps})")
        if self.warmup_steps + self.cooldown_steps > self.total_steps:
            raise ConfigError(f"{p}.warmup_steps={self.warmup_steps} + {p}.cooldown_steps={self.cooldown_steps} "
                              f"exceed the run ({p}.total_steps={self.total_steps})")
        if self.stable_steps is not None:
            derived = self.total_steps - self.warmup_steps - self.cooldown_steps
            if self.stable_steps != derived:
                raise ConfigError(f"{p}.stable_steps={self.stable_steps} disagrees with total - warmup - cooldown = "
                                  f"{derived}; drop it or fix {p}.total_steps")

    def _validate_infinite(self, p: str) -> None:
        if self.constant_lr is None:
            raise ConfigError(f"{p}.constant_lr is required for kind 'infinite'")
        if not self.min_lr <= self.constant_lr <= self.peak_lr:
            raise ConfigError(f"{p}.constant_lr={self.constant_lr} must lie between {p}.min_lr={self.min_lr} "
                              f"and {p}.peak_lr={self.peak_lr}")
        if self.anneal_steps > 0 and not (self.min_lr > 0 and self.constant_lr > 0):
            raise ConfigError(f"{p}.min_lr={self.min_lr} must be positive when {p}.anneal_steps > 0 (exponential anneal)")
        if not self.timescale > 0:
            raise ConfigError(f"{p}.timescale={self.timescale} must be positive")
        used = self.warmup_steps + self.cooldown_steps + self.anneal_steps
        if used > self.total_steps:
            raise ConfigError(f"{p}.warmup_steps + {p}.cooldown_steps + {p}.anneal_steps = {used} exceed the run "
                              f"({p}.total_steps={self.total_steps})")

    def _validate_piecewise(self, p: str) -> None:
        if not self.points:
            raise ConfigError(f"{p}.points is required for kind 'piecewise' (a list of [step, lr])")
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ConfigError(f"{p}.points must be a list of [step, lr] pairs")
        if np.any(np.diff(pts[:, 0]) <= 0):
            raise ConfigError(f"{p}.points steps must be strictly increasing")
        if np.any(pts[:, 1] < 0) or not np.all(np.isfinite(pts)):
            raise ConfigError(f"{p}.points LRs must be finite and >= 0")
        if self.interpolate not in ("linear", "previous"):
            raise ConfigError(f"{p}.interpolate={self.interpolate!r} is not one of linear, previous")

    def lrs_at(self, steps: np.ndarray) -> np.ndarray:
        """The LR of every step in `steps` (integers >= 0)."""
        s = np.asarray(steps)
        if np.any(s < 0):
            raise ValueError("schedule steps must be >= 0")
        s = s.astype(np.float64)
        common = dict(peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, init_lr=self.warmup_init_lr)
        if self.kind == "constant":
            return shapes.with_warmup(s, self.warmup_steps, self.warmup_init_lr, self.peak_lr,
                                      np.full(s.shape, float(self.peak_lr)))
        if self.kind in ("cosine", "rewarm"):
            return shapes.warmup_decay_lrs(s, min_lr=self.min_lr, total_steps=self.total_steps, shape=self.shape, **common)
        if self.kind == "wsd":
            return shapes.wsd_lrs(s, min_lr=self.min_lr, total_steps=self.total_steps,
                                  cooldown_steps=self.cooldown_steps, shape=self.shape, **common)
        if self.kind == "infinite":
            return shapes.infinite_lrs(s, constant_lr=self.constant_lr, min_lr=self.min_lr,
                                       cooldown_steps=self.cooldown_steps, anneal_steps=self.anneal_steps,
                                       total_steps=self.total_steps, shape=self.shape, timescale=self.timescale,
                                       **common)
        if self.kind == "piecewise":
            return shapes.piecewise_lrs(s, points=np.asarray(self.points, dtype=np.float64),
                                        interpolate=self.interpolate, **common)
        raise ConfigError(f"schedule.kind={self.kind!r} is not one of {', '.join(KINDS)}")

    def lrs(self, num_steps: int | None = None) -> np.ndarray:
        """LRs of steps 0..num_steps-1 (default: total_steps)."""
        n = self.total_steps if num_steps is None else int(num_steps)
        return self.lrs_at(np.arange(n))

    def lr(self, step: int) -> float:
        return float(self.lrs_at(np.asarray([step]))[0])


_FLOAT_KEYS = {"peak_lr", "min_lr", "warmup_init_lr", "constant_lr", "timescale"}
_INT_KEYS = {"warmup_steps", "total_steps", "stable_steps", "cooldown_steps", "anneal_steps"}


def _coerce(key: str, value: Any, prefix: str) -> Any:
    """YAML reads `1e-4` as a string and users write `2e3` for steps: accept numbers written either way."""
    if value is None or (key not in _FLOAT_KEYS and key not in _INT_KEYS):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}.{key}={value!r} is not a number") from None
    if key in _INT_KEYS:
        if number != int(number):
            raise ConfigError(f"{prefix}.{key}={value!r} must be a whole number of steps")
        return int(number)
    return number


def staged_lrs(stages: Sequence[ScheduleSpec]) -> np.ndarray:
    """Per-step LRs of a staged run: stage i runs for its total_steps, starting where stage i-1 ended,
    each evaluated on its own local step (global_step - stage_start)."""
    return np.concatenate([stage.lrs() for stage in stages]) if stages else np.zeros(0)


def stage_lr(stages: Sequence[ScheduleSpec], step: int) -> float:
    """LR of a global step in a staged run (the last stage keeps going past its end)."""
    start = 0
    for i, stage in enumerate(stages):
        if step < start + stage.total_steps or i == len(stages) - 1:
            return stage.lr(step - start)
        start += stage.total_steps
    raise ValueError("no stages")


def parse_spec_text(text: str, prefix: str = "schedule") -> ScheduleSpec:
    """A spec from `key=value,key=value` (values parsed as YAML scalars) or from a YAML file path
    holding the keys directly or under `schedule:`."""
    import os

    import yaml

    if os.path.isfile(text):
        with open(text) as fh:
            data = yaml.safe_load(fh) or {}
        if isinstance(data, dict) and isinstance(data.get("schedule"), dict):
            data = data["schedule"]
        if not isinstance(data, dict):
            raise ConfigError(f"{text}: expected a mapping of schedule keys")
        return ScheduleSpec.from_dict(data, prefix)
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_top_level(text))):
        if "=" not in item:
            raise ConfigError(f"schedule spec {text!r}: {item!r} is not key=value (or a YAML file that exists)")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    return ScheduleSpec.from_dict(values, prefix)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so points=[[0,1e-3],[100,1e-4]] stays whole."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts
