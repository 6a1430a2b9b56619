"""PNG of a law against loss curves: data, fit (curves it was fitted on) and prediction (the others),
with the relative error underneath."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pretrain.scaling_law.curves import LossCurve


def plot_fit(law: str, fitted: Sequence[LossCurve], predicted: Sequence[LossCurve],
             predictions: dict[str, np.ndarray], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_err) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (curve, role) in enumerate([(c, "fit") for c in fitted] + [(c, "predicted") for c in predicted]):
        color = colors[i % len(colors)]
        pred = predictions[curve.name]
        ax.plot(curve.steps, curve.loss, ".", ms=2.5, color=color, alpha=0.6)
        ax.plot(curve.steps, pred, "-" if role == "fit" else "--", color=color, lw=1.2,
                label=f"{curve.name} ({role})")
        ax_err.plot(curve.steps, (pred - curve.loss) / curve.loss, "-" if role == "fit" else "--", color=color, lw=1)
    ax.set_ylabel("loss")
    ax.set_title(title or f"{law}: data (dots), fit (solid), prediction (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    low = min(min(float(np.percentile(c.loss, 1)), float(np.min(predictions[c.name])))
              for c in list(fitted) + list(predicted))
    high = max(float(np.percentile(c.loss, 5)) for c in list(fitted) + list(predicted))
    ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low))
    ax_err.axhline(0, color="k", lw=0.6)
    ax_err.set_ylabel("relative error")
    ax_err.set_xlabel("step")
    ax_err.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_schedule_choice(lrs: np.ndarray, baselines: dict[str, np.ndarray], losses: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(lrs, lw=2, label=f"optimised (pred. final loss {losses['optimised']:.4f})")
    for name, values in baselines.items():
        ax.plot(values, lw=1.2, ls="--", label=f"{name} ({losses[name]:.4f})")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
