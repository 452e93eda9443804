"""Benchmark charjax (training, sampling, memory, beside its peers; the device check); `--help`
for flags. The same program as the installed `charjax-bench`; this script runs it from a
checkout (any working directory) without the install."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks.cli import main  # noqa: E402 (after the path is set)

if __name__ == "__main__":
    sys.exit(main())
