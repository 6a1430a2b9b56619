"""Gantt chart of sequence-parallel plans: ranks up, time across; each micro-batch is a band of
groups (a box per group spanning its ranks, split into its sequences), beta shown hatched."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from parallel.cost_model import CostModel
from parallel.plan import SequenceParallelPlan


def draw_plans(plans: Sequence[tuple[str, SequenceParallelPlan]], lengths: Sequence[int], cost_model: CostModel,
               path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(plans), 1, figsize=(12, 3.2 * len(plans)), squeeze=False, sharex=True)
    palette = plt.get_cmap("tab20")
    for ax, (title, plan) in zip(axes[:, 0], plans):
        clock = 0.0
        for m, mb in enumerate(plan.micro_batches):
            span = mb.time_ms(lengths, cost_model)
            for g in mb.groups:
                if not g.sequences:
                    continue
                t = clock
                for k, i in enumerate(g.sequences):
                    width = cost_model.seq_time_ms(lengths[i], g.size)
                    ax.broken_barh([(t, width)], (g.start, g.size), facecolors=palette((m * 7 + k) % 20),
                                   edgecolor="black", linewidth=0.2)
                    t += width
                ax.broken_barh([(t, cost_model.beta)], (g.start, g.size), facecolors="lightgrey",
                               hatch="//", edgecolor="grey", linewidth=0.2)
            clock += span
            ax.axvline(clock, color="black", linewidth=0.8)
        ax.set_ylim(0, plan.num_ranks)
        ax.invert_yaxis()
        ax.set_ylabel("rank")
        ax.set_title(f"{title}: {len(plan.micro_batches)} micro-batches, {clock / 1000:.2f} s")
    axes[-1, 0].set_xlabel("simulated time (ms); hatched = per-group overhead beta")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
