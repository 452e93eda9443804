"""Using a saved model: its parameters alone are read (never the optimizer), then sampled from
and scored like the commands do."""

import jax
import numpy as np
import pytest
from util import quiet, same_trees

from charjax import cli, epoch, inference, optim, runner, sample
from charjax.errors import CharjaxError


def test_a_model_is_read_without_its_optimizer(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg.replace(epochs=1, temperatures=(), optimizer="adam", clip_norm=1.0)
    state, _ = runner.train_run(cfg, tmp_path, log=quiet)

    def no_optimizer(*args):
        raise AssertionError("reading a model built an optimizer")

    monkeypatch.setattr(optim, "make_optimizer", no_optimizer)
    saved = inference.load(tmp_path)
    assert same_trees(saved.params, state.params) and saved.meta.cfg == cfg
    assert saved.meta.epoch == 1 and saved.reading == "window"
    ids, prime, skipped = inference.encode_prime(saved, "The Quick fox?", unknown="skip")
    assert prime == "the quick fox" and skipped == "?" and len(ids) == len(prime)
    with pytest.raises(CharjaxError, match="--unknown skip"):
        inference.encode_prime(saved, "fox?")
    texts = inference.sample_texts(
        saved, ids, settings=sample.Settings((0.5, 1.0), length=15, num_samples=2), seed=3
    )
    assert len(texts) == 4 and all(len(t) == 15 for t in texts)
    again = inference.sample_texts(
        saved, ids, settings=sample.Settings((0.5, 1.0), length=15, num_samples=2), seed=3
    )
    assert texts == again
    record, unknown = inference.score_text(saved, None, directory=tmp_path)
    assert record["mode"] == "window" and not unknown
    assert np.isfinite(record["bits_per_char"]) and record["chars_scored"] == 92 - cfg.maxlen
    jax.clear_caches()


def test_a_failed_read_is_reported_even_when_closing_the_folder_fails(
    tiny_cfg, tmp_path, monkeypatch
):
    """The read's own error is the one a command reports, not a failure of the close after it;
    after a good read, a failed close is no success."""
    from charjax.checkpoint import Checkpoints, ReadFailed

    runner.train_run(tiny_cfg.replace(epochs=1, temperatures=()), tmp_path, log=quiet)
    closed = []

    def refused_read(self, *args, **kw):
        raise ReadFailed(f"could not read epoch 1 in {self.directory}: Input/output error")

    def failed_close(self):
        closed.append(self.directory)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Checkpoints, "close", failed_close)
    with pytest.raises(OSError, match="Input/output"):
        inference.load(tmp_path)  # the read went well: the close's failure is the news
    monkeypatch.setattr(Checkpoints, "restore_params", refused_read)
    with pytest.raises(ReadFailed, match="could not read epoch 1"):
        inference.load(tmp_path)
    assert closed == [tmp_path.absolute()] * 2  # closed after each read, good or failed


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_an_interrupted_first_epoch_is_read_until_a_whole_one_is_saved(
    tiny_cfg, tmp_path, monkeypatch, capsys
):
    cfg = tiny_cfg.replace(epochs=1, temperatures=(), steps_per_call=1, save_every=1)
    real = epoch.iterate

    def killed(*args, **kw):  # like kill -9 after two steps, each saved by --save-every 1
        for i, done in enumerate(real(*args, **kw)):
            if i == 2:
                raise SystemExit("killed")
            yield done

    monkeypatch.setattr(epoch, "iterate", killed)
    with pytest.raises(SystemExit):
        runner.train_run(cfg, tmp_path, log=quiet)
    saved = inference.load(tmp_path)
    done, total = saved.meta.position.windows, saved.meta.metrics["epoch_windows"]
    assert done == 2 * cfg.batch_size < total
    assert saved.interrupted == f"epoch 1, {100 * done // total} % trained"
    ck = ["--checkpoint-dir", str(tmp_path)]
    for main, argv in [
        (cli.sample_main, ["--length", "20"]),
        (cli.score_main, []),
        (cli.export_main, ["--json", str(tmp_path / "model.json")]),
    ]:
        assert main([*ck, *argv]) == 0
        assert f"using epoch 1, {100 * done // total} % trained" in capsys.readouterr().err
    with pytest.raises(CharjaxError, match="no checkpoint"):
        inference.load(tmp_path, epoch=1)  # an epoch asked for by number is a whole one
    monkeypatch.setattr(epoch, "iterate", real)
    state, _ = runner.train_run(cfg, tmp_path, resume=True, given={}, log=quiet)
    whole = inference.load(tmp_path)
    assert whole.interrupted is None and same_trees(whole.params, state.params)
