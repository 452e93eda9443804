"""Benchmark charjax (training, sampling, memory); `--help` for flags. Same as `charjax-bench`."""

import sys

from charjax.bench import main

if __name__ == "__main__":
    sys.exit(main())
