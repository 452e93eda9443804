"""The divergence guard as a pure decision: keep an epoch, retry it from the last good state
at half the learning rate, or give up, with the reason. `judge` never trains or touches files.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

MAX_CUTS = 8  # divergences in a row (each halving the learning rate) before a run gives up
KEEP, RETRY, GIVE_UP = "keep", "retry", "give up"


class Verdict(NamedTuple):
    action: str  # KEEP, RETRY or GIVE_UP
    reason: str | None = None  # what went wrong (None when kept)
    message: str | None = None  # GIVE_UP: the one line that ends the run


def all_finite(tree) -> bool:
    """Whether every float in a pytree (parameters and optimizer state) is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return all(bool(jnp.isfinite(x).all()) for x in leaves)


def divergence(loss: float, state_finite: bool, best: float, guard: float) -> str | None:
    """Why an epoch's result must not be kept (None: it may): a non-finite loss or state, or,
    with the guard on, a loss above `guard` x the best epoch's."""
    if not math.isfinite(loss):
        return f"the loss became {loss:.4g}"
    if not state_finite:
        return "the parameters became non-finite"
    if guard > 0 and math.isfinite(best) and loss > guard * best:
        return f"the loss {loss:.4f} is above {guard:g} x the best epoch's {best:.4f}"
    return None


def judge(epoch: int, loss: float, state_finite: bool, best: float, guard: float, cuts: int):
    """The verdict on epoch `epoch` (mean loss `loss`, after `cuts` retries in a row)."""
    reason = divergence(loss, state_finite, best, guard)
    if reason is None:
        return Verdict(KEEP)
    if guard == 0:
        return Verdict(
            GIVE_UP,
            reason,
            f"epoch {epoch}: {reason}; nothing was saved for this epoch. Start a new run with a "
            "lower --learning-rate in another --checkpoint-dir (or keep the divergence guard "
            "on: --guard 1.2)",
        )
    if cuts >= MAX_CUTS:
        return Verdict(
            GIVE_UP,
            reason,
            f"epoch {epoch}: {reason}, still after {MAX_CUTS} restarts with the learning rate "
            "halved each time; nothing was saved for it. Start a new run with a much lower "
            "--learning-rate",
        )
    return Verdict(RETRY, reason)
