"""The program arguments of a submission ([CONFIG] key=value ...), validated by the program itself (for
`hetron train`: the trainer's own config loader) before anything is submitted, so a bad key fails now
with the program's message."""
from __future__ import annotations

from dataclasses import dataclass

from launch.program import RunPlan, TrainingProgram
from pretrain.errors import ConfigError


@dataclass(frozen=True)
class TrainArgs:
    program: TrainingProgram
    config: str | None  # absolute path of the YAML file, so the job finds it from any directory
    overrides: tuple[str, ...]  # "dotted.key=value", in order; later ones win

    def argv(self) -> list[str]:
        return ([self.config] if self.config else []) + list(self.overrides)

    def with_overrides(self, chosen: dict[str, str]) -> TrainArgs:
        """These keys set to these values, replacing earlier overrides of the same keys."""
        kept = tuple(o for o in self.overrides if o.split("=", 1)[0] not in chosen)
        return TrainArgs(self.program, self.config, kept + tuple(f"{k}={v}" for k, v in chosen.items()))

    def load(self) -> RunPlan:
        return self.program.plan(self.config, list(self.overrides))

    def prepare(self) -> None:
        self.program.prepare(self.config, list(self.overrides))


def split_train_args(args: list[str], program: TrainingProgram) -> TrainArgs:
    """[CONFIG] key=value ...: a config (file or name under configs/) may come first only."""
    config = None
    for position, arg in enumerate(args):
        if "=" not in arg:
            if position:
                raise ConfigError(f"argument {arg!r}: expected CONFIG first, then key=value overrides")
            config = str(program.resolve_config(arg).resolve())
    return TrainArgs(program, config, tuple(a for a in args if "=" in a))
