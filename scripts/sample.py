"""Generate text from a charjax checkpoint; `--help` lists the flags. Same as `charjax-sample`."""

import sys

from charjax.cli import sample_main

if __name__ == "__main__":
    sys.exit(sample_main())
