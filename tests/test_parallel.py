"""Data parallelism: training on 1 or 4 (virtual CPU) devices gives the same numbers."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax import data

TRAIN = """
import sys
from charjax import parallel
parallel.request_cpu_devices(int(sys.argv[1]))
import jax, numpy as np
from charjax import runner
from charjax.config import Config
cfg = Config(text=sys.argv[2], maxlen=10, hidden=16, batch_size=int(sys.argv[3]), epochs=2,
             steps_per_call=3, temperatures=())
state, history = runner.train_run(cfg, sys.argv[4], log=lambda *a: None)
assert len(jax.devices()) == int(sys.argv[1])
flat = {"/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
np.savez(sys.argv[5], losses=[m["loss"] for m in history], **flat)
"""


def _train_on(devices: int, text, batch_size: int, tmp_path):
    out = tmp_path / f"params{devices}_{batch_size}.npz"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAIN,
            str(devices),
            str(text),
            str(batch_size),
            str(tmp_path / f"ckpt{devices}_{batch_size}"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("batch_size", [32, 30])  # 30 does not split over 4: padded to 32
def test_four_devices_match_one(tiny_text, tmp_path, batch_size):
    one = _train_on(1, tiny_text, batch_size, tmp_path)
    four = _train_on(4, tiny_text, batch_size, tmp_path)
    assert set(one) == set(four)
    for name in one:
        np.testing.assert_allclose(four[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert not np.allclose(one["dense/kernel"], 0)


def test_plan_pads_batches_to_the_device_width():
    starts = jnp.arange(50, dtype=jnp.int32)
    plan, weights = data.epoch_plan(
        jax.random.key(0), 1, starts, batch_size=6, steps_per_call=4, width=8
    )
    assert plan.shape == (3, 4, 8)
    w = np.asarray(weights)
    assert (w[..., 6:] == 0).all()  # the padding columns never count
    assert w.sum(axis=-1).tolist() == [[6, 6, 6, 6], [6, 6, 6, 6], [2, 0, 0, 0]]
    real = np.asarray(plan)[w > 0]
    assert sorted(real.tolist()) == list(range(50))
