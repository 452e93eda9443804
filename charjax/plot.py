"""Loss curves (training, and held-out when recorded) against epochs, and against optimizer
steps when the run recorded steps (`--log-every`, `--eval-every`), from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from charjax.errors import CharjaxError
from charjax.metrics_log import METRICS_FILE, read_metrics, read_steps


def plot_metrics(directory: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run in `directory` into a PNG (default: `directory/loss.png`); return its path."""
    directory = Path(directory)
    records, steps = read_metrics(directory), read_steps(directory)
    if not records and not steps:
        raise CharjaxError(
            f"no {METRICS_FILE} with epochs or steps in {directory}; train first (charjax-train "
            f"--checkpoint-dir {directory})"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise CharjaxError("plotting needs matplotlib: pip install 'charjax[plot]'") from None
    out = Path(out) if out else directory / "loss.png"
    panels = [p for p, have in (("epoch", records), ("step", steps)) if have]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 3.5 * len(panels), 4.2), dpi=120)
    axes = dict(zip(panels, list(axes) if len(panels) > 1 else [axes], strict=True))
    if records:  # the epoch axis: the epochs' means and whole-tail scores
        _curves(axes["epoch"], records, "epoch", "held-out loss")
        axes["epoch"].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes["epoch"].set_xlabel("epoch")
    if steps:  # step records, and the epoch ends' whole-tail scores at their "steps"
        ends = [{**r, "step": r["steps"]} for r in records if "steps" in r]
        _curves(axes["step"], steps, "step", "held-out loss (--eval-chars slice)")
        _curves(axes["step"], ends, "step", "held-out loss (whole tail)", training=False)
        axes["step"].set_xlabel("optimizer step")
    for ax in axes.values():
        ax.set_ylabel("cross-entropy (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"charjax · {directory.resolve().name}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _curves(ax, records: list[dict], x: str, held_out_label: str, training: bool = True):
    """Training loss, and held-out loss where recorded, of `records` against their `x`."""
    if training:
        xs, losses = [r[x] for r in records], [r["loss"] for r in records]
        ax.plot(xs, losses, marker=".", label="training loss")
    held_out = [(r[x], r["val_loss"]) for r in records if "val_loss" in r]
    if held_out:
        xs, val_loss = zip(*held_out, strict=True)
        ax.plot(xs, val_loss, marker="s", label=held_out_label)
