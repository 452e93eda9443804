"""Step-based intervals: which actions fall due after a chunk, and the step records' means."""

from charjax import intervals
from charjax.config import Config
from charjax.epoch import Position


def test_an_interval_fires_once_per_multiple_crossed_by_a_chunk():
    assert [intervals.crossed(4, s, s + 3) for s in (0, 1, 3, 4, 5)] == [
        False, True, True, False, True
    ]  # fmt: skip
    assert not intervals.crossed(0, 0, 100)  # 0 = off
    ticks = intervals.Ticks(Config(log_every=2, eval_every=6, save_every=5), step=0)
    fired = [ticks.due(step) for step in (3, 6, 9, 12)]
    assert fired == [{"log"}, {"log", "eval", "save"}, {"log"}, {"log", "eval", "save"}]


def test_a_step_record_holds_the_means_since_the_last():
    ticks = intervals.Ticks(Config(log_every=1), step=10, since=Position(1, 10, {"loss": 30.0}))
    ticks.due(12)
    first = ticks.record(3, Position(3, 30, {"loss": 50.0}))
    assert first == {"epoch": 3, "step": 12, "loss": 1.0}  # (50 - 30) / (30 - 10)
    ticks.due(13)
    assert ticks.record(3, Position(4, 40, {"loss": 80.0}))["loss"] == 3.0
