"""The `hetron train` arguments of a submission ([CONFIG] key=value ...), validated by the trainer's own
config loader before anything is submitted, so a bad key fails now with the trainer's message."""
from __future__ import annotations

from dataclasses import dataclass

from pretrain.config import Config, load_config, resolve_config_path
from pretrain.errors import ConfigError


@dataclass(frozen=True)
class TrainArgs:
    config: str | None  # absolute path of the YAML file, so the job finds it from any directory
    overrides: tuple[str, ...]  # "dotted.key=value", in order; later ones win

    def argv(self) -> list[str]:
        return ([self.config] if self.config else []) + list(self.overrides)

    def with_overrides(self, chosen: dict[str, str]) -> TrainArgs:
        """These keys set to these values, replacing earlier overrides of the same keys."""
        kept = tuple(o for o in self.overrides if o.split("=", 1)[0] not in chosen)
        return TrainArgs(self.config, kept + tuple(f"{k}={v}" for k, v in chosen.items()))

    def load(self) -> Config:
        return load_config(self.config, list(self.overrides))


def split_train_args(args: list[str]) -> TrainArgs:
    """[CONFIG] key=value ...: a config (file or name under configs/) may come first only."""
    config = None
    for position, arg in enumerate(args):
        if "=" not in arg:
            if position:
                raise ConfigError(f"argument {arg!r}: expected CONFIG first, then key=value overrides")
            config = str(resolve_config_path(arg).resolve())
    return TrainArgs(config, tuple(a for a in args if "=" in a))
