"""A whole training run, top to bottom: set up (fresh or resumed), then for each epoch iterate
its chunks, save on a stop request, ask the divergence guard, and finish the epoch (validate,
sample, save, log). `train_run` is what `charjax-train` calls; the side effects live here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from charjax import epoch, evaluate, guard, intervals, parallel, run, sample, step
from charjax.checkpoint import SaveFailed
from charjax.config import Config
from charjax.errors import CharjaxError, Interrupted
from charjax.report import Reporter
from charjax.run_dir import RunDir
from charjax.signals import StopRequest
from charjax.step import TrainState


def train_run(
    cfg: Config,
    checkpoint_dir: str | Path,
    *,
    resume: bool = False,
    given: dict | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> tuple[TrainState, list[dict]]:
    """Train epochs up to `cfg.epochs`, saving a checkpoint after each -> (state, metrics list).

    `given` holds the flags the user set explicitly; on resume they are checked against and
    applied to the saved config. Lines go to `log` (default: stdout); `progress` turns the live
    progress bar on or off (default: on when stdout is a terminal and `log` is not given).
    Ctrl-C saves the epoch so far and raises `Interrupted`.
    """
    cfg.check()
    primary = parallel.is_primary()
    if not primary:  # in a multi-process run only process 0 talks
        log, progress = (lambda line: None), False
    if resume and not Path(checkpoint_dir).expanduser().is_dir():
        raise CharjaxError(
            f"no run to resume in {Path(checkpoint_dir).expanduser().absolute()}: the folder "
            "does not exist; check --checkpoint-dir, or drop --resume to start a new run there"
        )
    report, mesh, folder = Reporter(progress=progress, log=log), parallel.data_mesh(), None
    failed = True  # until a return: a failed start removes the folder it made (`RunDir.close`)
    try:
        folder = RunDir(checkpoint_dir, cfg.keep, lock=primary, primary=primary)
        replicated = parallel.replicated(mesh)
        if resume:
            this = run.resume(given or {}, folder, report.log, replicated)
        else:
            this = run.fresh(cfg, folder)
        folder.keep(this.cfg.keep)  # a resumed run's own --keep
        if resume and this.epoch > this.cfg.epochs:
            report.nothing_to_train(this, folder.directory)
            failed = False
            return this.state, []
        report.started(this, mesh.size, mesh.devices.flat[0].platform, folder.directory)
        cfg, ids = this.cfg, this.corpus.ids
        earlier = [m["loss"] for m in folder.metrics() if m["epoch"] < this.epoch]
        best, cuts, history = min(earlier, default=math.inf), 0, []
        with StopRequest(report.log) as stop:
            while this.epoch <= cfg.epochs:
                if cfg.patience and _stalled(folder.metrics(), cfg.patience, report):
                    break
                done, seconds = _train_epoch(this, ids, mesh, folder, report, stop)
                means, state = done.position.means(), done.state
                loss = means["loss"]
                finite = guard.all_finite(state)
                verdict = guard.judge(this.epoch, loss, finite, best, cfg.guard, cuts)
                if verdict.action != guard.KEEP:
                    report.epoch_finished(None, cfg.epochs)
                    if verdict.action == guard.GIVE_UP:
                        raise CharjaxError(verdict.message)
                    _retry(this, folder, state, verdict, report, replicated)
                    cuts += 1
                    continue
                metrics = {
                    "epoch": this.epoch,
                    **means,
                    "seconds": seconds,
                    report.rate_key: report.rate(_trained(this, done), seconds),
                    "lr_scale": float(state.lr_scale),
                    "steps": int(state.step),
                }
                _finish_epoch(this, folder, state, metrics, report, stop)
                cuts, best = 0, min(best, loss)
                history.append(metrics)
                if stop.requested and this.epoch < cfg.epochs:
                    raise Interrupted(
                        f"interrupted after epoch {this.epoch}. Continue with: {_hint(folder)}"
                    )
                this.state, this.epoch, this.position = state, this.epoch + 1, epoch.Position()
        report.finished(folder.metrics(), folder.directory)
        failed = False
        return this.state, history
    except SaveFailed as e:  # a full disk, a read-only or unwritable folder
        report.close()
        raise SaveFailed(
            f"{e}. Free space (or make the folder writable), then continue with: {_hint(folder)}"
        ) from e
    finally:
        report.close()
        if folder is not None:
            folder.close(discard=failed)


def _train_epoch(this: run.Run, ids, mesh, folder: RunDir, report, stop):
    """Iterate the epoch's chunks, showing progress and doing what `--log-every`,
    `--eval-every` and `--save-every` ask for; a stop request saves the epoch so far and ends
    the run. -> (the last chunk's `Progress`, seconds)."""
    report.epoch_started(this.epoch, this.cfg.epochs)
    t0 = time.perf_counter()
    chunks = epoch.iterate(
        this.state,
        ids,
        this.split,
        this.keys.data,
        this.epoch,
        this.cfg,
        mesh,
        this.position,
        this.context,
    )
    # the run's optimizer steps at the epoch's start: every chunk before the last is K steps
    now = int(this.state.step)
    first_step = now - this.position.chunks * this.cfg.steps_per_call
    ticks = intervals.Ticks(this.cfg, now, this.position)
    for done in chunks:
        batches = min(done.position.chunks * this.cfg.steps_per_call, done.batches)
        seconds = time.perf_counter() - t0
        report.chunk_done(
            batches, done.batches, _trained(this, done), done.position.means(), seconds
        )
        due = ticks.due(first_step + batches)
        if stop.requested and not done.finished:
            if due - {intervals.SAVE} and done.position.finite:  # the record, then the save
                _on_steps(this, folder, done, ticks, due - {intervals.SAVE}, report, stop)
            report.epoch_finished(None, this.cfg.epochs)
            _save_interrupted(this, folder, done, stop)
        if due and done.position.finite:
            _on_steps(this, folder, done, ticks, due, report, stop)
    return done, time.perf_counter() - t0


def _on_steps(this: run.Run, folder: RunDir, done, ticks, due: set, report, stop) -> None:
    """Mid-epoch work that fell due: a step record in metrics.jsonl (the training loss since
    the last, and with `eval` the held-out slice's loss), and with `save` the epoch so far."""
    if intervals.LOG in due or intervals.EVAL in due:
        record = ticks.record(this.epoch, done.position)
        if intervals.EVAL in due and this.held_out is not None:
            params = parallel.local(step.eval_params(done.state))
            score = _held_out_score(params, this.eval_ids, this.cfg)
            record["val_loss"] = score.nats_per_char
            report.log(
                f"step {record['step']:,} (epoch {this.epoch}): loss {record['loss']:.4f}, "
                f"held-out {score.nats_per_char:.4f} nats/char on {len(this.eval_ids):,} chars"
            )
        folder.log_step(record)
    if intervals.SAVE in due and not done.finished and guard.all_finite(done.state):
        with stop.protect():
            folder.save_partial(done.state, this.meta(this.epoch, position=done.position))


def _trained(this: run.Run, done: epoch.Progress) -> int:
    """Windows this process trained in the epoch so far (a resumed epoch counts from where it
    resumed): what the throughput in the bar, the epoch line and metrics.jsonl counts."""
    return done.position.windows - this.position.windows


def _hint(folder: RunDir) -> str:
    return f"charjax-train --resume --checkpoint-dir {folder.directory}"


def _save_interrupted(this: run.Run, folder: RunDir, done: epoch.Progress, stop) -> None:
    """Save the epoch so far (its state and position), then end the run with `Interrupted`."""
    if not guard.all_finite(done.state):
        raise Interrupted(
            f"interrupted in epoch {this.epoch}; its parameters were not finite, so nothing was "
            f"saved for it. Resume from the last epoch: {_hint(folder)}"
        )
    with stop.protect():
        folder.save_partial(done.state, this.meta(this.epoch, position=done.position))
    raise Interrupted(
        f"interrupted: saved epoch {this.epoch} after {done.position.windows:,} of "
        f"{this.windows:,} windows. Continue with: {_hint(folder)}"
    )


def _retry(this: run.Run, folder: RunDir, state, verdict, report, sharding) -> None:
    """The epoch diverged: restore the last saved epoch (or the initial state) at half the
    learning rate, to train the epoch again from its start."""
    scale = float(state.lr_scale) / 2
    have = folder.epochs()
    if have:
        restored = folder.restore(this.state_shape(), have[-1], sharding)
        origin = f"epoch {have[-1]}"
    else:
        restored, origin = this.initial_state(), "the initial state"
    folder.clear_partial()  # an older interruption of this epoch is superseded
    report.log(
        f"epoch {this.epoch}: {verdict.reason}. Divergence guard: restored {origin}, learning "
        f"rate x{scale:g} (now {this.cfg.learning_rate * scale:.4g}); training epoch "
        f"{this.epoch} again"
    )
    this.state = restored._replace(lr_scale=jnp.asarray(scale, jnp.float32))
    this.position = epoch.Position()


def _finish_epoch(this: run.Run, folder: RunDir, state, metrics: dict, report, stop) -> None:
    """Validate, sample, show, save and log a kept epoch (`metrics` gains the results); under
    --keep-best an epoch that beats every earlier held-out loss is also kept as the best."""
    params = parallel.local(step.eval_params(state))
    improved = False
    if this.held_out is not None:
        val = _held_out_score(params, this.held_out, this.cfg)
        metrics["val_loss"], metrics["val_bits"] = val.nats_per_char, val.bits_per_char
        earlier = [r["val_loss"] for r in folder.metrics() if "val_loss" in r]
        improved = val.nats_per_char < min(earlier, default=math.inf)
        if this.cfg.ema:  # what the average buys: the trained parameters' score beside it
            raw = _held_out_score(parallel.local(state.params), this.held_out, this.cfg)
            metrics["val_loss_raw"] = raw.nats_per_char
    if this.cfg.temperatures and this.cfg.sample_length:
        metrics["samples"] = sample.epoch_samples(
            params, this.corpus, this.keys.sample, this.epoch, this.cfg
        )
    report.epoch_finished(metrics, this.cfg.epochs)
    meta = this.meta(this.epoch, metrics)
    with stop.protect():
        folder.save_epoch(state, meta)
        if this.cfg.keep_best and improved:
            folder.save_best(state, meta)


def _held_out_score(params, ids, cfg) -> evaluate.Score:
    """`evaluate.validate` over this host's training devices (their cores share the held-out
    windows), on one device in a multi-process run (each process scores its own copy)."""
    mesh = parallel.data_mesh() if jax.process_count() == 1 else None
    return evaluate.validate(params, ids, cfg, mesh=mesh)


def _stalled(records: list[dict], patience: int, report) -> bool:
    """--patience: whether the held-out loss has not improved for `patience` epochs (then
    says so)."""
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
