"""`charjax-export`: a saved model as one self-contained web page (`--html`) or as JSON
(`--json`); the work is `export`'s."""

from __future__ import annotations

import argparse
import json
import sys

from charjax.cli.common import Parser, checkpoint_dir_flag, note_interrupted
from charjax.errors import CharjaxError


def export_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-export",
        description="Export a checkpoint: a web page that writes in the browser (offline, one "
        "file), or its weights, vocabulary and recipe as JSON for other runtimes.",
    )
    checkpoint_dir_flag(p, epoch=True)
    p.add_argument(
        "--html",
        metavar="PAGE",
        help="write the web page here (e.g. model.html); its address sets its form and "
        "generates once as it loads (model.html#temperature=0.8&length=400&seed=3&generate; "
        "docs/export.md)",
    )
    p.add_argument("--json", metavar="FILE", help="write the JSON export here (docs/export.md)")
    p.add_argument("--title", default=None, help="the page's title (default: the run's folder)")
    return p


def export(args: argparse.Namespace) -> int:
    if not (args.html or args.json):
        raise CharjaxError("nothing to write: pass --html PAGE and/or --json FILE")
    from pathlib import Path

    from charjax import export, inference

    saved = inference.load(args.checkpoint_dir, args.epoch)
    note_interrupted(saved, "charjax-export")
    if args.json:
        path = export.write(args.json, json.dumps(export.to_json(saved)), "JSON export")
        print(f"wrote {path} (epoch {saved.meta.epoch})", file=sys.stderr)
    if args.html:
        title = args.title or f"charjax · {Path(args.checkpoint_dir).resolve().name}"
        size = export.write_page(saved, args.html, title)
        print(
            f"wrote {args.html} ({size / 1024:,.0f} KB, epoch {saved.meta.epoch}); open it in "
            "a browser",
            file=sys.stderr,
        )
    return 0
