"""The config: nonsense values are refused naming their flag; flags come from the fields."""

import pytest

from charjax.config import Config
from charjax.errors import CharjaxError


@pytest.mark.parametrize(
    "change,flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"maxlen": 0}, "--maxlen"),
        ({"step": -1}, "--step"),
        ({"epochs": -1}, "--epochs"),
        ({"learning_rate": float("nan")}, "--learning-rate"),
    ],
)
def test_nonsense_config_is_refused(change, flag):
    with pytest.raises(CharjaxError, match=flag):
        Config(**change).check()
