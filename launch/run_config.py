"""The `hetron train` arguments of a submission ([CONFIG.yaml] key=value ...) and the few config values
the launcher itself needs (run folder, steps, checkpoint interval, local ranks, preset), read before
anything is submitted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pretrain.errors import ConfigError


@dataclass(frozen=True)
class TrainArgs:
    config_path: Path | None
    overrides: tuple[str, ...]  # "key=value", in order; later ones win

    def argv(self) -> list[str]:
        head = [str(self.config_path)] if self.config_path else []
        return head + list(self.overrides)

    def with_overrides(self, *extra: str) -> TrainArgs:
        return TrainArgs(self.config_path, self.overrides + tuple(extra))


def split_train_args(args: list[str]) -> TrainArgs:
    config_path = None
    overrides = []
    for position, arg in enumerate(args):
        if "=" in arg:
            key = arg.split("=", 1)[0]
            if not key or not all(part.isidentifier() for part in key.split(".")):
                raise ConfigError(f"override {arg!r}: expected dotted.key=value")
            overrides.append(arg)
        elif position == 0:
            config_path = Path(arg).resolve()
        else:
            raise ConfigError(f"argument {arg!r}: expected CONFIG.yaml first, then key=value overrides")
    if config_path is not None and not config_path.is_file():
        raise ConfigError(f"config file {config_path} not found")
    return TrainArgs(config_path, tuple(overrides))


def merged_config(train_args: TrainArgs) -> dict[str, Any]:
    """The YAML file with the overrides applied, as nested dicts (values typed as YAML would type them)."""
    tree: dict[str, Any] = {}
    if train_args.config_path is not None:
        try:
            loaded = yaml.safe_load(train_args.config_path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {train_args.config_path}{line}: not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {train_args.config_path}: expected a mapping of keys at the top")
        tree = loaded or {}
    for override in train_args.overrides:
        key, raw = override.split("=", 1)
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part} is a value, not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return tree


def lookup(tree: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def positive_int(tree: dict[str, Any], key: str, default: int | None) -> int | None:
    value = lookup(tree, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r}: must be a positive integer")
    return value
