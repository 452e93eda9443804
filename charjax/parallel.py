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

from charjax.errors import CharjaxError

AXIS = "data"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(count: int | None = None) -> None:
    """Ask XLA for `count` host (CPU) devices; call before jax starts its backends.

    Measured on 2-core AMD EPYC hosts (BENCHMARKS.md), the answer depends on the recipe. The
    original recipe trained faster on two devices with the batch split between them than on one
    two-threaded device: 2,410-2,800 -> 3,480-3,710 windows/s (2026-11-26, "What made it
    fast"). The LSTM recipe (`--preset quality --cell lstm`, host without AVX-512, 2026-11-28)
    trained faster on one device: +2.5 % in one process, +9 % in whole epochs of separate
    processes. Default: $CHARJAX_CPU_DEVICES, else min(2, cores). A count the user already put
    in XLA_FLAGS wins; GPUs and TPUs are not affected; once jax has started its backends the
    request has no effect.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_COUNT_FLAG in flags:
        return
    if count is None:
        wanted = os.environ.get("CHARJAX_CPU_DEVICES", "")
        if wanted and not (wanted.isdigit() and int(wanted) > 0):
            raise CharjaxError(f"CHARJAX_CPU_DEVICES must be a whole number >= 1, got {wanted!r}")
        count = int(wanted) if wanted else min(2, os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()


def tune_host_malloc() -> bool:
    """Make glibc keep freed memory instead of returning it to the kernel after every step.

    XLA's CPU runtime allocates and frees the same buffers every training step; with glibc's
    defaults each cycle goes through mmap/munmap and page faults. Raising the mmap and trim
    thresholds (the same as MALLOC_MMAP_THRESHOLD_=32M, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_)
    took the original recipe from 3,480-3,710 to 3,700-4,060 windows/s on a 2-core AMD EPYC
    (2026-11-26, BENCHMARKS.md). Returns False where it does not apply (non-glibc).
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


def start_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    peer_timeout: float = 60.0,
) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) when a coordinator is given.

    Flags win over the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. On CPU the processes talk through gloo collectives. JAX's own heartbeat
    timeout is set past `peer_timeout`, so that charjax's watch (`peers`) names a lost peer
    first. Returns whether it did.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return False
    if num_processes is None:
        num_processes = int(os.environ.get("JAX_NUM_PROCESSES", 1))
    if process_id is None:
        process_id = int(os.environ.get("JAX_PROCESS_ID", 0))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=int(max(100, peer_timeout + 60)),
    )
    return True


def is_primary() -> bool:
    """Process 0 prints, writes metrics and holds the directory lock; all processes save."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process of a multi-process run gets here (nothing with one process):
    e.g. none renames a checkpoint folder that another is still reading."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def from_process_0(values: np.ndarray) -> np.ndarray:
    """Process 0's `values` in every process of a multi-process run (as they are with one):
    e.g. timings that every process must act on alike."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(values))


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (AXIS,))


def put(tree, sharding: NamedSharding):
    """Place a pytree on `sharding`; every process passes the same full values.

    Host (numpy) values are what `device_put` accepts across processes: each process then
    transfers only the shards its own devices hold (its share of each batch).
    """

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(one, tree)


def local(tree):
    """This process's copy of a replicated pytree, on one of its devices (for sampling)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def device_width(batch_size: int, mesh: Mesh) -> int:
    """The batch padded (with weight-0 slots) to split evenly over the mesh's devices."""
    return -(-batch_size // mesh.size) * mesh.size


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Shard the batch axis of a chunk's batches [K, batch, ...] over the mesh."""
    return NamedSharding(mesh, P(None, AXIS))
