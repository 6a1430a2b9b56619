"""Validate a submission's training config before it is queued, so a bad key fails now, not in the job."""
from __future__ import annotations

from launch.run_config import TrainArgs, lookup, merged_config, positive_int
from pretrain.errors import ConfigError

PRESETS = ("tiny", "125m", "1b", "7b")


def validate_train_config(train_args: TrainArgs) -> None:
    config = merged_config(train_args)
    for key in ("train.steps", "checkpoint.every", "launch.nproc"):
        positive_int(config, key, None)
    preset = lookup(config, "model.preset")
    if preset is not None and str(preset) not in PRESETS:
        raise ConfigError(f"model.preset={preset!r}: one of {', '.join(PRESETS)}")
