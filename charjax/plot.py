"""Loss curves (training, and held-out when recorded) against epochs, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from charjax.errors import CharjaxError
from charjax.metrics_log import METRICS_FILE, read_metrics


def plot_metrics(directory: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run in `directory` into a PNG (default: `directory/loss.png`); return its path."""
    directory = Path(directory)
    records = read_metrics(directory)
    if not records:
        raise CharjaxError(
            f"no {METRICS_FILE} with epochs in {directory}; train first (charjax-train "
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
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    epochs = [r["epoch"] for r in records]
    ax.plot(epochs, [r["loss"] for r in records], marker="o", label="training loss")
    held_out = [(r["epoch"], r["val_loss"]) for r in records if "val_loss" in r]
    if held_out:
        val_epochs, val_loss = zip(*held_out, strict=True)
        ax.plot(val_epochs, val_loss, marker="s", label="held-out loss")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title(f"charjax · {directory.resolve().name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
