"""Export a charjax checkpoint as a web page or JSON; `--help` lists the flags. Same as
`charjax-export`."""

import sys

from charjax.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
