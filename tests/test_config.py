"""The config: nonsense values are refused naming their flag; flags come from the fields."""

import dataclasses

import pytest

from charjax.config import GROUPS, MATH_FIELDS, Config
from charjax.errors import CharjaxError


@pytest.mark.parametrize(
    "change,flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"maxlen": 0}, "--maxlen"),
        ({"step": -1}, "--step"),
        ({"epochs": -1}, "--epochs"),
        ({"epochs": 0}, "--epochs must be >= 1, got 0"),  # a run of no epochs makes nothing
        ({"learning_rate": float("nan")}, "--learning-rate"),
        ({"vary_length": 2}, "--vary-length .* needs --carry-state"),
        (
            dict(objective="sequence", carry_state=True, maxlen=10, step=10, vary_length=5),
            "--vary-length 5 would make windows of 10 chars empty .* below 5",
        ),
        ({"vary_length": -1}, "--vary-length must be >= 0"),
    ],
)
def test_nonsense_config_is_refused(change, flag):
    with pytest.raises(CharjaxError, match=flag):
        Config(**change).check()


def test_every_field_describes_its_flag():
    for f in dataclasses.fields(Config):
        assert f.metadata["help"] and f.metadata["group"] in GROUPS, f.name
        if f.metadata.get("choices"):
            assert getattr(Config(), f.name) in f.metadata["choices"]
    assert "hidden" in MATH_FIELDS and "seed" in MATH_FIELDS and "lower" in MATH_FIELDS
    assert not {"epochs", "keep", "temperatures", "steps_per_call", "guard"} & set(MATH_FIELDS)


def test_choices_come_from_the_field():
    with pytest.raises(CharjaxError, match="--optimizer must be one of rmsprop, adam"):
        Config(optimizer="sgd").check()
    with pytest.raises(CharjaxError, match="--schedule must be one of constant, cosine, linear"):
        Config(schedule="step").check()


def test_to_dict_and_back():
    cfg = Config(temperatures=(0.5,), layers=2, text="x.txt")
    d = cfg.to_dict()
    assert d["temperatures"] == [0.5] and Config.from_dict({**d, "newer": 1}) == cfg
