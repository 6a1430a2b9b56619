"""Metrics out of the trainer: metrics.jsonl (one JSON object per logged step), TensorBoard events,
optionally Weights & Biases, and a PNG of the loss curve. Only rank 0 writes."""
from __future__ import annotations

import json
import math
from pathlib import Path


WANDB_ID_FILE = "wandb/run_id"  # under run.dir: a resumed run continues the same W&B run


def start_wandb(run_dir: Path, mode: str, project: str, config: dict):
    """A W&B run whose files live in run_dir/wandb, with the id kept there so that every resume of
    this run folder logs to the same W&B run."""
    import os
    import secrets

    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from pretrain.errors import HetronError

    id_file = run_dir / WANDB_ID_FILE
    id_file.parent.mkdir(parents=True, exist_ok=True)
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    try:
        run = wandb.init(project=project, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
                         name=run_dir.name, config=config)
    except Exception as exc:  # wandb raises its own types for login, network and permission failures
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HetronError(f"run.wandb=true: wandb.init ({mode}) failed: {first}; "
                          "run `wandb login`, or set run.wandb_mode=offline") from None
    id_file.write_text(run_id + "\n")
    return run


class MetricsWriter:
    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int = 0, wandb_run=None):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self._drop_after(resume_step)
        self._file = self.path.open("a")
        self._tb = None
        self._wandb = wandb_run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def _drop_after(self, step: int) -> None:
        """On resume, lines logged after the checkpoint's step are replaced by the rerun's lines."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        scalars = {key: value for key, value in record.items()
                   if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def histogram(self, tag: str, values, step: int) -> None:
        if self._tb is not None:
            self._tb.add_histogram(tag, values, step)
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Histogram(values.detach().cpu().numpy() if hasattr(values, "detach") else values)},
                            step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def smoothed(values: list[float]) -> list[float]:
    """Exponential moving average of a noisy curve, debiased at the start (as TensorBoard's smoothing),
    spanning about a fifteenth of the points."""
    span = max(2, len(values) // 15)
    keep = 1.0 - 2.0 / (span + 1)
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = keep * average + (1.0 - keep) * value
        out.append(average / (1.0 - keep**i))
    return out


def loss_figure(rows: list[dict], title: str):
    """Loss (raw and smoothed train loss, held-out loss, forecasts) over steps with a tokens axis on top,
    and the LR below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    forecasts = [(r["step"], r["forecast_final_loss"]) for r in rows if "forecast_final_loss" in r]
    lrs = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, label="train loss", lw=0.8, alpha=0.35, color="C0")
        ax.plot(steps, smoothed(list(losses)), label="train loss (smoothed)", lw=1.6, color="C0")
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss", lw=1.5, color="C1")
    if forecasts:
        ax.plot(*zip(*forecasts), ":", label="forecast final loss", color="C2")
    tokens = [(r["step"], r["tokens"]) for r in rows if "tokens" in r]
    if len(tokens) >= 2:
        import numpy as np

        t_steps, t_tokens = (np.asarray(v, dtype=float) for v in zip(*tokens))
        top = ax.secondary_xaxis("top", functions=(lambda x: np.interp(x, t_steps, t_tokens),
                                                   lambda y: np.interp(y, t_tokens, t_steps)))
        top.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if lrs:
        ax_lr.plot(*zip(*lrs), color="C3", lw=1.2, label="lr")
    ax_lr.set_ylabel("LR")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_loss_curve(run_dir: Path, out: Path | None = None) -> Path:
    import matplotlib.pyplot as plt

    fig = loss_figure(read_metrics(run_dir / "metrics.jsonl"), run_dir.name)
    out = out or run_dir / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
