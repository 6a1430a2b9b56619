"""Staged (continual) pretraining: the `stages:` and `replay:` config sections and the stage plan.

Pure: a stage plan maps a global step to (stage, step in stage) and to that stage's LR, evaluated at
`step - stage_start` (so a stage of kind `rewarm` re-warms at its first step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pretrain.errors import ConfigError
from pretrain.schedules import ScheduleSpec


@dataclass
class StreamConfig:
    """One source of a stage's mixture: a prepared shards folder, or a corpus (directory, .jsonl,
    'stdlib') prepared with the run's tokenizer. Empty path: the run's own `data` section."""

    path: str = ""
    proportion: float = 1.0
    name: str = ""  # for per-stream eval keys; default: the folder name

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name or "data"


@dataclass
class StageConfig:
    name: str = ""
    data: list[StreamConfig] = field(default_factory=lambda: [StreamConfig()])
    tokens: int | None = None  # token budget; steps = ceil(tokens / data.global_batch_tokens)
    steps: int | None = None
    schedule: ScheduleSpec | None = None


@dataclass
class ReplayConfig:
    """Replay: this fraction of the samples of every global batch after the first stage comes from
    samples consumed in earlier stages (or by the init_from run)."""

    fraction: float = 0.0


@dataclass(frozen=True)
class StageSpan:
    index: int
    name: str
    start: int
    steps: int
    schedule: ScheduleSpec


@dataclass(frozen=True)
class StagePlan:
    spans: tuple[StageSpan, ...]

    @classmethod
    def of(cls, stages: Sequence[StageConfig]) -> "StagePlan":
        spans, start = [], 0
        for i, stage in enumerate(stages):
            spans.append(StageSpan(i, stage.name, start, stage.steps, stage.schedule))
            start += stage.steps
        return cls(tuple(spans))

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.spans)

    def locate(self, step: int) -> tuple[StageSpan, int]:
        """(stage, step within the stage) of a global step; the last stage runs on past its end."""
        if step < 0:
            raise ValueError(f"step {step} is negative")
        for span in self.spans:
            if step < span.start + span.steps:
                return span, step - span.start
        last = self.spans[-1]
        return last, step - last.start

    def lr(self, step: int) -> float:
        span, local = self.locate(step)
        return span.schedule.lr(local)

    def boundaries(self) -> list[int]:
        return [s.start for s in self.spans[1:]]

    def describe(self) -> list[list]:
        return [[s.name, s.steps] for s in self.spans]


# ------------------------------------------------------------------------------------ config


def _whole(value: Any, key: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be an integer") from None
    if number != int(number) or number <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return int(number)


def fill_stage_defaults(tree: dict, default_schedule: dict, default_batch_tokens: int) -> None:
    """Derive each stage's length (steps, or a token budget over data.global_batch_tokens), its
    schedule (the run's `schedule:` keys overridden by the stage's, spanning the stage) and
    train.steps (the sum) in the raw config tree, before it is typed."""
    stages = tree.get("stages")
    if not isinstance(stages, list) or not stages:
        return
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    budget = _whole(data.get("global_batch_tokens", default_batch_tokens), "data.global_batch_tokens")
    top = tree.get("schedule") if isinstance(tree.get("schedule"), dict) else {}
    inherited = {k: v for k, v in top.items() if k not in ("total_steps", "warmup_steps", "stable_steps")}
    total, previous = 0, None
    for i, stage in enumerate(stages):
        key = f"stages[{i}]"
        if not isinstance(stage, dict):
            raise ConfigError(f"{key} must be a mapping (name, data, tokens or steps, schedule)")
        if (stage.get("tokens") is None) == (stage.get("steps") is None):
            raise ConfigError(f"{key} needs exactly one of tokens (a token budget) or steps")
        if stage.get("steps") is not None:
            steps = _whole(stage["steps"], f"{key}.steps")
        else:
            steps = math.ceil(_whole(stage["tokens"], f"{key}.tokens") / budget)
        stage["steps"] = steps
        own = stage.get("schedule") or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{key}.schedule must be a mapping of schedule keys")
        schedule = {**default_schedule, **inherited, **own}
        schedule.setdefault("total_steps", steps)
        if isinstance(schedule["total_steps"], int):
            schedule.setdefault("warmup_steps", schedule["total_steps"] // 10)
        if schedule.get("kind") == "rewarm" and "warmup_init_lr" not in own and previous is not None:
            schedule["warmup_init_lr"] = previous.lr(previous.total_steps)  # where the previous stage ended
        stage["schedule"] = schedule
        previous = ScheduleSpec.from_dict(schedule, f"{key}.schedule")
        total += steps
    train = tree.setdefault("train", {})
    if isinstance(train, dict):
        train.setdefault("steps", total)


def validate_stages(cfg) -> None:
    """Checks across the stage, replay and init_from keys (cfg: pretrain.config.Config)."""
    names = set()
    for i, stage in enumerate(cfg.stages):
        key = f"stages[{i}]"
        if not stage.name:
            raise ConfigError(f"{key}.name is required (it names the stage's eval_loss/<name> metric)")
        if stage.name in names:
            raise ConfigError(f"{key}.name={stage.name!r} is used by another stage")
        if "/" in stage.name:
            raise ConfigError(f"{key}.name={stage.name!r} must not contain '/'")
        names.add(stage.name)
        if not stage.data:
            raise ConfigError(f"{key}.data lists no streams")
        labels = set()
        for j, stream in enumerate(stage.data):
            if not stream.proportion > 0:
                raise ConfigError(f"{key}.data[{j}].proportion={stream.proportion} must be positive")
            if stream.label in labels:
                raise ConfigError(f"{key}.data[{j}]: two streams named {stream.label!r}; set name")
            labels.add(stream.label)
        if stage.schedule.total_steps != stage.steps:
            raise ConfigError(f"{key}.schedule.total_steps={stage.schedule.total_steps} disagrees with the stage's "
                              f"length of {stage.steps} steps; drop it (it defaults to the stage) or fix the stage")
    if cfg.stages:
        plan_total = sum(s.steps for s in cfg.stages)
        if cfg.train.steps > plan_total:
            raise ConfigError(f"train.steps={cfg.train.steps} is longer than the stages ({plan_total} steps); "
                              "leave it out (it defaults to the stages' sum) or lower it to stop early")
    if not 0.0 <= cfg.replay.fraction < 1.0:
        raise ConfigError(f"replay.fraction={cfg.replay.fraction} must lie in [0, 1)")
    if cfg.replay.fraction > 0 and not cfg.stages:
        raise ConfigError("replay.fraction > 0 needs stages (replay mixes earlier stages' samples into later ones)")
    if cfg.replay.fraction > 0 and len(cfg.stages) < 2 and not cfg.init_from:
        raise ConfigError("replay.fraction > 0 needs an earlier stage: a second stage, or init_from=PATH")
    if cfg.init_optimizer not in ("keep", "reset"):
        raise ConfigError(f"init_optimizer={cfg.init_optimizer!r} is not one of keep, reset")
    if cfg.replay.fraction > 0 and len(cfg.stages) < 2 and cfg.init_from.startswith("hf:"):
        raise ConfigError(f"replay.fraction > 0 needs an earlier stage, and init_from={cfg.init_from} brings weights "
                          "only (no hetron data to replay); add a stage before it")
    if cfg.init_from and not cfg.init_from.startswith("hf:") and not Path(cfg.init_from).exists():
        raise ConfigError(f"init_from={cfg.init_from!r}: no such checkpoint or run folder")
