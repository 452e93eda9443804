"""A whole training run, top to bottom: set up (fresh or resumed), then for each epoch iterate
its chunks, save on a stop request, ask the divergence guard, and finish the epoch (validate,
sample, save, log). `train_run` is what `charjax-train` calls; the side effects live here.
The `run.Run` is what was set up; `Loop` is the loop's own state (epoch, state, best loss,
retries, history).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp

from charjax import budget, epoch, evaluate, guard, intervals, parallel, run, sample, step
from charjax.checkpoint import SaveFailed
from charjax.config import Config
from charjax.epoch import Position
from charjax.errors import CharjaxError, Interrupted
from charjax.report import Reporter
from charjax.run_dir import RunDir
from charjax.signals import StopRequest
from charjax.step import TrainState


@dataclass
class Loop:
    """The training loop's own state (the `Run` is what was set up, and stays so): where the
    loop is, and what the divergence guard weighs an epoch against."""

    state: TrainState  # what the next epoch trains from
    epoch: int  # the epoch to train next
    position: Position  # where in it (inside it when a resume continues an interruption)
    best: float  # the lowest training loss of a kept epoch (earlier runs' included)
    began: float  # time.perf_counter() when the run began (less the wall time before a resume)
    cuts: int = 0  # learning-rate halvings since the last kept epoch
    history: list[dict] = field(default_factory=list)  # metrics of the epochs kept in this call

    @classmethod
    def start(cls, this: run.Run, folder: RunDir, started: float) -> Loop:
        """The loop where the run starts (`started`: its time.perf_counter()), its best loss
        that of the epochs saved before, its wall clock going on from theirs."""
        earlier = [m for m in folder.metrics() if m["epoch"] < this.epoch]
        best = min((m["loss"] for m in earlier), default=math.inf)
        return cls(this.state, this.epoch, this.position, best,
                   started - max((m.get("wall_s", 0.0) for m in earlier), default=0.0))  # fmt: skip

    def wall(self) -> float:
        """Seconds of wall time the run has taken so far (its earlier calls' included)."""
        return time.perf_counter() - self.began

    def keep(self, state: TrainState, metrics: dict) -> None:
        """The epoch is kept: the next one starts from its state."""
        self.best, self.cuts = min(self.best, metrics["loss"]), 0
        self.history.append(metrics)
        self.state, self.epoch, self.position = state, self.epoch + 1, Position()

    def again(self, state: TrainState) -> None:
        """The epoch diverged: train it again from its start, from `state`."""
        self.state, self.position, self.cuts = state, Position(), self.cuts + 1


def train_run(
    cfg: Config,
    checkpoint_dir: str | Path,
    *,
    resume: bool = False,
    given: dict | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    started: float | None = None,
) -> tuple[TrainState, list[dict]]:
    """Train epochs up to `cfg.epochs`, saving a checkpoint after each -> (state, metrics list).

    `given` holds the flags the user set explicitly; on resume they are checked against and
    applied to the saved config. Lines go to `log` (default: stdout); `progress` turns the live
    progress bar on or off (default: on when stdout is a terminal and `log` is not given).
    Ctrl-C saves the epoch so far and raises `Interrupted`. `started`: when the command began,
    on time.perf_counter()'s clock (default: now), what --minutes and `wall_s` count from.
    """
    started = time.perf_counter() if started is None else started
    cfg.check()
    primary = parallel.is_primary()
    if not primary:  # in a multi-process run only process 0 talks
        log, progress = (lambda line: None), False
    if resume:
        _check_resumable(Path(checkpoint_dir).expanduser())
    report, mesh, folder = Reporter(progress=progress, log=log), parallel.data_mesh(), None
    try:
        folder = RunDir(checkpoint_dir, cfg.keep, lock=primary, primary=primary)
        this = _set_up(cfg, folder, resume, given or {}, report, mesh)
        if not resume and cfg.minutes:
            this = _fit_minutes(this, mesh, folder, report, started)
        if resume and this.epoch > this.cfg.epochs:
            report.nothing_to_train(this, folder.directory)
            return this.state, []
        report.started(this, mesh.size, mesh.devices.flat[0].platform, folder.directory)
        loop = Loop.start(this, folder, started)
        with StopRequest(report.log) as stop:
            while loop.epoch <= this.cfg.epochs and not _stalled(this.cfg.patience, folder, report):
                _run_epoch(this, loop, mesh, folder, report, stop)
        report.finished(folder.metrics(), folder.directory)
        return loop.state, loop.history
    except SaveFailed as e:  # a full disk, a read-only or unwritable folder
        report.close()
        raise SaveFailed(
            f"{e}. Free space (or make the folder writable), then continue with: {_hint(folder)}"
        ) from e
    finally:
        report.close()
        if folder is not None:
            folder.close()  # after a failed start, removes the folder it made


def _check_resumable(directory: Path) -> None:
    """--resume names a folder that exists (it is never created for a resume)."""
    if not directory.is_dir():
        raise CharjaxError(
            f"no run to resume in {directory.absolute()}: the folder does not exist; check "
            "--checkpoint-dir, or drop --resume to start a new run there"
        )


def _set_up(cfg: Config, folder: RunDir, resume: bool, given: dict, report, mesh) -> run.Run:
    """The run, fresh or resumed; the folder keeps the run's own --keep."""
    if resume:
        this = run.resume(given, folder, report.log, parallel.replicated(mesh), report.note)
    else:
        this = run.fresh(cfg, folder)
    folder.keep(this.cfg.keep)
    return this


def _fit_minutes(this: run.Run, mesh, folder: RunDir, report, started: float) -> run.Run:
    """--minutes: the run with the epoch count that fits its budget here (`budget`), said in
    one line; its config records the count."""
    timings = budget.probe(this, mesh, folder, started, _held_out_score)
    n = budget.fitted(this.cfg.minutes, timings)
    report.log(budget.message(this.cfg.minutes, n, timings))
    return dataclasses.replace(this, cfg=this.cfg.replace(epochs=n))


def _run_epoch(this: run.Run, loop: Loop, mesh, folder: RunDir, report, stop) -> None:
    """Train `loop.epoch`, ask the divergence guard, then keep the epoch (validate, sample,
    save, log) or set it up again; a stop request ends the run after a kept epoch."""
    cfg = this.cfg
    done, seconds = _train_epoch(this, loop, mesh, folder, report, stop)
    means, state = done.position.means(), done.state
    finite = guard.all_finite(state)
    verdict = guard.judge(loop.epoch, means["loss"], finite, loop.best, cfg.guard, loop.cuts)
    if verdict.action != guard.KEEP:
        report.epoch_finished(None, cfg.epochs)
        if verdict.action == guard.GIVE_UP:
            raise CharjaxError(verdict.message)
        loop.again(_restore_for_retry(this, loop, folder, state, verdict, report, mesh))
        return
    metrics = {
        "epoch": loop.epoch,
        **means,
        "seconds": seconds,
        report.rate_key: report.rate(_trained(loop, done), seconds),
        "lr_scale": float(state.lr_scale),
        "steps": int(state.step),
    }
    if loop.position.windows:  # resumed inside the epoch: the figures are of the rest
        metrics["resumed_after"] = loop.position.windows
    _finish_epoch(this, loop.epoch, folder, state, metrics, report, stop, loop.wall)
    if stop.requested and loop.epoch < cfg.epochs:
        raise Interrupted(f"interrupted after epoch {loop.epoch}. Continue with: {_hint(folder)}")
    loop.keep(state, metrics)


def _train_epoch(this: run.Run, loop: Loop, mesh, folder: RunDir, report, stop):
    """Iterate the epoch's chunks, showing progress and doing what `--log-every`,
    `--eval-every` and `--save-every` ask for; a stop request saves the epoch so far and ends
    the run. -> (the last chunk's `Progress`, seconds)."""
    cfg, number = this.cfg, loop.epoch
    report.epoch_started(number, cfg.epochs)
    t0 = time.perf_counter()
    chunks = epoch.iterate(
        loop.state,
        this.corpus.ids,
        this.split,
        this.keys.data,
        number,
        cfg,
        mesh,
        loop.position,
        this.context,
    )
    # the run's optimizer steps at the epoch's start: every chunk before the last is K steps
    now = int(loop.state.step)
    first_step = now - loop.position.chunks * cfg.steps_per_call
    ticks = intervals.Ticks(cfg, now, loop.position)
    for done in chunks:
        batches = min(done.position.chunks * cfg.steps_per_call, done.batches)
        seconds = time.perf_counter() - t0
        means = done.position.means()
        report.chunk_done(batches, done.batches, _trained(loop, done), means, seconds)
        due = ticks.due(first_step + batches)
        if stop.requested and not done.finished:
            if due - {intervals.SAVE} and done.position.finite:  # the record, then the save
                _on_steps(this, number, folder, done, ticks, due - {intervals.SAVE}, report, stop)
            report.epoch_finished(None, cfg.epochs)
            _save_interrupted(this, number, folder, done, stop)
        if due and done.position.finite:
            _on_steps(this, number, folder, done, ticks, due, report, stop)
    return done, time.perf_counter() - t0


def _on_steps(this: run.Run, number: int, folder: RunDir, done, ticks, due: set, report,
              stop) -> None:  # fmt: skip
    """Mid-epoch work that fell due in epoch `number`: a step record in metrics.jsonl (the
    training loss since the last, and with `eval` the held-out slice's loss), and with `save`
    the epoch so far."""
    if intervals.LOG in due or intervals.EVAL in due:
        record = ticks.record(number, done.position)
        if intervals.EVAL in due and this.held_out is not None:
            net = this.bind(parallel.local(step.eval_params(done.state)))
            score = _held_out_score(net, this.eval_ids, this.cfg)
            record["val_loss"] = score.nats_per_char
            report.log(
                f"step {record['step']:,} (epoch {number}): loss {record['loss']:.4f}, "
                f"held-out {score.nats_per_char:.4f} nats/char on {len(this.eval_ids):,} chars"
            )
        folder.log_step(record)
    if intervals.SAVE in due and not done.finished and guard.all_finite(done.state):
        _save_partial(this, number, folder, done, stop)


def _trained(loop: Loop, done: epoch.Progress) -> int:
    """Windows this process trained in the epoch so far (a resumed epoch counts from where it
    resumed): what the throughput in the bar, the epoch line and metrics.jsonl counts."""
    return done.position.windows - loop.position.windows


def _hint(folder: RunDir) -> str:
    return f"charjax-train --resume --checkpoint-dir {folder.directory}"


def _save_partial(this: run.Run, number: int, folder: RunDir, done: epoch.Progress, stop):
    """Save epoch `number` so far: its state and position (what a resume continues from)."""
    with stop.protect():
        folder.save_partial(done.state, this.meta(number, position=done.position))


def _save_interrupted(this: run.Run, number: int, folder: RunDir, done: epoch.Progress, stop):
    """Save the epoch so far (its state and position), then end the run with `Interrupted`."""
    if not guard.all_finite(done.state):
        raise Interrupted(
            f"interrupted in epoch {number}; its parameters were not finite, so nothing was "
            f"saved for it. Resume from the last epoch: {_hint(folder)}"
        )
    _save_partial(this, number, folder, done, stop)
    raise Interrupted(
        f"interrupted: saved epoch {number} after {done.position.windows:,} of "
        f"{this.windows:,} windows. Continue with: {_hint(folder)}"
    )


def _restore_for_retry(this: run.Run, loop: Loop, folder: RunDir, state, verdict, report,
                       mesh) -> TrainState:  # fmt: skip
    """The epoch diverged: the last saved epoch (or the initial state) at half the learning
    rate, to train the epoch again from its start."""
    scale = float(state.lr_scale) / 2
    have = folder.epochs()
    if have:
        restored = folder.restore(this.state_shape(), have[-1], parallel.replicated(mesh))
        origin = f"epoch {have[-1]}"
    else:
        restored, origin = this.initial_state(), "the initial state"
    folder.clear_partial()  # an older interruption of this epoch is superseded
    report.log(
        f"epoch {loop.epoch}: {verdict.reason}. Divergence guard: restored {origin}, learning "
        f"rate x{scale:g} (now {this.cfg.learning_rate * scale:.4g}); training epoch "
        f"{loop.epoch} again"
    )
    return restored._replace(lr_scale=jnp.asarray(scale, jnp.float32))


def _finish_epoch(this: run.Run, number: int, folder: RunDir, state, metrics: dict, report,
                  stop, wall) -> None:  # fmt: skip
    """Validate, sample, show, save and log kept epoch `number` (`metrics` gains the results,
    and `wall_s`, the run's wall seconds by `wall()` before the save); under --keep-best an
    epoch that beats every earlier held-out loss is also kept as the best."""
    net = this.bind(parallel.local(step.eval_params(state)))
    improved = False
    if this.held_out is not None:
        val = _held_out_score(net, this.held_out, this.cfg)
        metrics["val_loss"], metrics["val_bits"] = val.nats_per_char, val.bits_per_char
        earlier = [r["val_loss"] for r in folder.metrics() if "val_loss" in r]
        improved = val.nats_per_char < min(earlier, default=math.inf)
        if this.cfg.ema:  # what the average buys: the trained parameters' score beside it
            raw = this.bind(parallel.local(state.params))
            raw = _held_out_score(raw, this.held_out, this.cfg)
            metrics["val_loss_raw"] = raw.nats_per_char
    if this.cfg.temperatures and this.cfg.sample_length:
        metrics["samples"] = sample.epoch_samples(
            net, this.corpus, this.keys.sample, number, this.cfg
        )
    report.epoch_finished(metrics, this.cfg.epochs)
    metrics["wall_s"] = wall()
    meta = this.meta(number, metrics)
    with stop.protect():
        folder.save_epoch(state, meta)
        if this.cfg.keep_best and improved:
            folder.save_best(state, meta)


def _held_out_score(net, ids, cfg) -> evaluate.Score:
    """`evaluate.validate` over this host's training devices (their cores share the held-out
    windows), on one device in a multi-process run (each process scores its own copy)."""
    mesh = parallel.data_mesh() if jax.process_count() == 1 else None
    return evaluate.validate(net, ids, cfg, mesh=mesh)


def _stalled(patience: int, folder: RunDir, report) -> bool:
    """--patience: whether the held-out loss has not improved for `patience` epochs (then
    says so); never with patience 0."""
    if not patience:
        return False
    records = folder.metrics()
    held = [r for r in records if "val_loss" in r]
    if not held:
        return False
    best = min(held, key=lambda r: r["val_loss"])
    if held[-1]["epoch"] - best["epoch"] < patience:
        return False
    report.log(
        f"stopping after epoch {held[-1]['epoch']}: the held-out loss has not improved for "
        f"{patience} epochs (--patience); the best was {best['val_loss']:.4f} nats/char at "
        f"epoch {best['epoch']}"
    )
    return True
