"""LR schedules as pure functions of the step (issue 7), reused by the scaling-law fitter."""
from pretrain.schedules.spec import KINDS, ScheduleSpec, parse_spec_text, stage_lr, staged_lrs

__all__ = ["KINDS", "ScheduleSpec", "parse_spec_text", "stage_lr", "staged_lrs"]
