"""Train charjax's char-LSTM; `--help` lists the flags. Same as the `charjax-train` command."""

import sys

from charjax.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
