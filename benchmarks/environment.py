"""Where a figure was measured: device, CPU, versions and date (recorded beside every result)."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def versions(*names: str) -> dict:
    """{distribution: its installed version, or None}."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu() -> tuple[str, bool]:
    """(the CPU's model name, whether it has AVX-512), from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or "unknown CPU", ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
        flags = next((ln for ln in lines if ln.startswith("flags")), "")
    except (OSError, StopIteration):
        pass
    return model, " avx512f" in flags


def environment() -> dict:
    import jax  # here: the caller sets the host's device count before jax starts

    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
        "jax_devices": len(jax.devices()),
        "cpu": cpu()[0],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"),
        "date": time.strftime("%Y-%m-%d"),
    }
