"""Benchmark charjax (training, sampling, memory; the device check); `--help` for flags.

The benchmarks live in the repository's `benchmarks/` folder, not in the installed package:
run this script from a checkout (any working directory)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks.cli import main  # noqa: E402 (after the path is set)

if __name__ == "__main__":
    sys.exit(main())
