"""Loss curves from metrics.jsonl: one run's (training, and held-out when recorded) against
epochs, and against optimizer steps when the run recorded steps (`--log-every`,
`--eval-every`); or several runs' held-out losses side by side, against wall minutes or
epochs (`plot_runs`)."""

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
    plt = _pyplot()
    import matplotlib.ticker

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


BY = ("minutes", "epoch")  # what `plot_runs` draws the runs against


def plot_runs(directories, out, *, by: str = "minutes", labels=None, title=None) -> Path:
    """Draw the held-out loss of each run in `directories` against the run's wall minutes
    (`wall_s` of each epoch: training, validation and samples; the first epoch's point comes
    after its compile) or its epochs, one line a run labelled by `labels` (default: the
    folders' names), into the PNG `out`; return its path."""
    directories = [Path(d) for d in directories]
    labels = list(labels) if labels else [d.resolve().name for d in directories]
    if len(labels) != len(directories):
        raise CharjaxError(
            f"--labels names {len(labels)} runs and --runs gives {len(directories)}; give one "
            "label a run"
        )
    curves = []
    for directory in directories:
        held = [r for r in read_metrics(directory) if "val_loss" in r]
        if not held:
            raise CharjaxError(
                f"no held-out losses in {directory / METRICS_FILE}; --runs draws runs trained "
                "with validation (--val-fraction > 0)"
            )
        if by == "minutes" and any("wall_s" not in r for r in held):
            raise CharjaxError(
                f"the run in {directory} recorded no wall time (it was trained by an older "
                "charjax); draw it --by epoch"
            )
        xs = [r["wall_s"] / 60 if by == "minutes" else r["epoch"] for r in held]
        curves.append((xs, [r["val_loss"] for r in held]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for (xs, ys), label in zip(curves, labels, strict=True):
        ax.plot(xs, ys, marker=".", label=f"{label} (best {min(ys):.4f})")
    ax.set_xlabel("wall minutes" if by == "minutes" else "epoch")
    ax.set_ylabel("held-out loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"held-out loss by {'wall minutes' if by == 'minutes' else 'epoch'}")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def _pyplot():
    """matplotlib's pyplot drawing into files, or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharjaxError("plotting needs matplotlib: pip install 'charjax[plot]'") from None
    return plt
