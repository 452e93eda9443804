"""Bits/char and perplexity of a text under a charjax checkpoint; `--help` lists the flags.
Same as `charjax-score`."""

import sys

from charjax.cli import score_main

if __name__ == "__main__":
    sys.exit(score_main())
