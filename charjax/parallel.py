"""Devices as an argument: the data-parallel mesh, and how many CPU devices to ask XLA for.

Training always runs through a 1-D mesh with axis "data" (one device is a mesh of one): each
device takes an equal slice of every batch and gradients are summed with `psum`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
_FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(count: int | None = None) -> None:
    """Ask XLA for `count` host (CPU) devices; call before jax starts its backends.

    On the 2-core CPU measured here, two single-threaded devices with the batch split between
    them train ~1.4x faster than one two-threaded device (less thread synchronisation around
    the small per-step ops). Default: $CHARJAX_CPU_DEVICES, else min(2, cores). A count the user
    already put in XLA_FLAGS wins; GPUs and TPUs are not affected; once jax has started its
    backends the request has no effect.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        return
    if count is None:
        count = int(os.environ.get("CHARJAX_CPU_DEVICES", 0)) or min(2, os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={count}".strip()


def tune_host_malloc() -> bool:
    """Make glibc keep freed memory instead of returning it to the kernel after every step.

    XLA's CPU runtime allocates and frees the same buffers every training step; with glibc's
    defaults each cycle goes through mmap/munmap and page faults. Raising the mmap and trim
    thresholds (the same as MALLOC_MMAP_THRESHOLD_=32M, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_)
    measured ~10 % faster training here. Returns False where it does not apply (non-glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return all(
            (
                libc.mallopt(m_mmap_threshold, 32 << 20) == 1,
                libc.mallopt(m_trim_threshold, 2**31 - 1) == 1,
                libc.mallopt(m_top_pad, 256 << 20) == 1,
            )
        )
    except (OSError, AttributeError):
        return False


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all local devices of the default backend)."""
    return Mesh(np.array(devices if devices is not None else jax.local_devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Shard the last (batch) axis of an epoch plan [chunks, K, batch] over the mesh."""
    return NamedSharding(mesh, P(None, None, AXIS))
