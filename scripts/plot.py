"""Plot a run's loss curves as a PNG; `--help` for flags. Same as `charjax-plot`."""

import sys

from charjax.cli import plot_main

if __name__ == "__main__":
    sys.exit(plot_main())
