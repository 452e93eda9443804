"""Train several recipes side by side and tabulate their held-out losses; `--help` for flags.
Same as `charjax-sweep`."""

import sys

from charjax.sweep import main

if __name__ == "__main__":
    sys.exit(main())
