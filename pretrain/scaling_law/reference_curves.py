"""The public mpl-25M loss curves (multi-power-law paper, 25M model, nine LR schedules) with the
exact per-step schedule of each as a ScheduleSpec, and the authors' fit/test split. Used by the
benchmark and the tests; the CSVs live in shared/data/loss-curves/mpl-25M."""
from __future__ import annotations

from pathlib import Path

from pretrain.scaling_law.curves import LossCurve, load_curve

_BASE = "peak_lr=3e-4,min_lr=3e-5,warmup_steps=2160"
_WSDCON = "kind=piecewise,total_steps=16000,points=[[2160,3e-4],[8000,{lr}]],interpolate=previous"
MPL_25M_SPECS = {
    "cosine_24000": f"kind=cosine,total_steps=24000,{_BASE}",
    "constant_24000": f"kind=constant,total_steps=24000,{_BASE}",
    "wsdcon_9": f"{_WSDCON.format(lr='9e-5')},{_BASE}",
    "cosine_72000": f"kind=cosine,total_steps=72000,{_BASE}",
    "constant_72000": f"kind=constant,total_steps=72000,{_BASE}",
    "wsd_20000_24000": f"kind=wsd,total_steps=24000,cooldown_steps=4000,decay_shape=exponential,{_BASE}",
    "wsdld_20000_24000": f"kind=wsd,total_steps=24000,cooldown_steps=4000,decay_shape=linear,{_BASE}",
    "wsdcon_3": f"{_WSDCON.format(lr='3e-5')},{_BASE}",
    "wsdcon_18": f"{_WSDCON.format(lr='1.8e-4')},{_BASE}",
}
MPL_25M_FIT = ("cosine_24000", "constant_24000", "wsdcon_9")
MPL_25M_TEST = tuple(n for n in MPL_25M_SPECS if n not in MPL_25M_FIT)
# the authors' multi-power-law result on the six test curves (averages of per-curve metrics)
MPL_25M_PUBLISHED = {"mean_rel_err": 0.00110, "max_rel_err": 0.00409, "r2": 0.9988}


def load_mpl_25m(directory: str | Path) -> dict[str, LossCurve]:
    return {name: load_curve(f"{Path(directory) / name}.csv@{spec}") for name, spec in MPL_25M_SPECS.items()}
