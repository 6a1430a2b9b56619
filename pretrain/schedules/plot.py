"""PNG of one or more LR schedules."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pretrain.schedules.spec import ScheduleSpec


def plot_schedules(specs: Sequence[ScheduleSpec], labels: Sequence[str], num_steps: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.arange(num_steps)
    for spec, label in zip(specs, labels):
        short = label if len(label) <= 60 else label[:57] + "..."
        ax.plot(steps, spec.lrs(num_steps), label=f"{spec.kind}: {short}", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
