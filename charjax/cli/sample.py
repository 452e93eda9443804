"""`charjax-sample`: text from a saved model to stdout (raw, or `--json`), diagnostics to
stderr; the work is `inference`'s."""

from __future__ import annotations

import argparse
import json
import sys

from charjax.cli.common import Parser, checkpoint_dir_flag, finite, floats, note_interrupted
from charjax.config import READINGS


def sample_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-sample",
        description="Generate text from a checkpoint. Text goes to stdout, diagnostics to stderr.",
    )
    checkpoint_dir_flag(p, epoch=True)
    primes = p.add_mutually_exclusive_group()
    primes.add_argument(
        "--prime",
        default=None,
        help="text to start from (default: the first maxlen chars of the training text)",
    )
    primes.add_argument(
        "--prime-file",
        metavar="PATH",
        default=None,
        help="start from the text of this UTF-8 file (a long or multi-line prime)",
    )
    p.add_argument("--length", type=int, default=400, help="chars to generate (default: 400)")
    p.add_argument(
        "--temperature",
        type=floats,
        default=(0.5,),
        help="temperature, or a comma list; 0 = greedy (default: 0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    p.add_argument(
        "--mode",
        choices=READINGS,
        default=None,
        help="window: re-read the last maxlen chars each step, like the original; "
        "stateful: carry the LSTM state (default: how the model was trained: window for "
        "--objective last, stateful for sequence)",
    )
    p.add_argument(
        "--num-samples", type=int, default=1, help="samples per temperature (default: 1)"
    )
    p.add_argument("--top-k", type=int, default=0, help="keep only the k likeliest chars; 0 = off")
    p.add_argument(
        "--top-p",
        type=finite,
        default=1.0,
        help="nucleus: keep the likeliest chars up to this mass; 1 = off (default: 1)",
    )
    p.add_argument(
        "--unknown",
        choices=("error", "skip"),
        default="error",
        help="prime characters outside the vocabulary: error (default) or skip them",
    )
    p.add_argument(
        "--no-prime",
        action="store_true",
        help="on a terminal, do not show the prime (dimmed) before each text; piped, only the "
        "generated text is printed anyway",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON list of {temperature, sample, text} instead of the raw texts",
    )
    return p


def sample_settings(args: argparse.Namespace):
    """The sampling settings the flags give (`sample.Settings`)."""
    from charjax.sample import Settings

    return Settings(tuple(args.temperature), args.length, args.num_samples, args.top_k,
                    args.top_p)  # fmt: skip


def sample(args: argparse.Namespace) -> int:
    from charjax import inference

    saved = inference.load(args.checkpoint_dir, args.epoch, args.best)
    note_interrupted(saved, "charjax-sample")
    inference.check_temperatures(args.temperature)  # before the prime, as always
    given = args.prime if args.prime_file is None else read_prime(args.prime_file)
    prime_ids, prime, skipped = inference.encode_prime(saved, given, args.unknown)
    if skipped:
        skipped = json.dumps(skipped, ensure_ascii=False)
        print(f"skipping prime characters not in the vocabulary: {skipped}", file=sys.stderr)
    mode = args.mode or saved.reading
    settings = sample_settings(args)
    options = dict(seed=args.seed, settings=settings, mode=mode)
    # Both check their arguments before anything is printed (the stream before its first block).
    if args.json:
        texts = inference.sample_texts(saved, prime_ids, **options)
    else:
        blocks = inference.stream_texts(saved, prime_ids, **options)
    shown = json.dumps(prime[-saved.meta.cfg.maxlen :], ensure_ascii=False)
    print(f"epoch {saved.meta.epoch}, mode {mode}, prime {shown}", file=sys.stderr, flush=True)
    if args.json:
        n = args.num_samples
        records = [
            {"temperature": args.temperature[i // n], "sample": i % n, "text": text}
            for i, text in enumerate(texts)
        ]
        print(json.dumps(records, ensure_ascii=False), flush=True)
    else:
        _print_streaming(blocks, prime, args)
    return 0


def read_prime(path: str) -> str:
    """The text of --prime-file, whole (newlines kept); a bad path is one line."""
    from pathlib import Path

    from charjax.errors import CharjaxError

    where = Path(path).expanduser()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharjaxError(f"--prime-file {path} does not exist; pass a UTF-8 text file") from None
    except IsADirectoryError:
        raise CharjaxError(f"--prime-file {path} is a folder; pass a UTF-8 text file") from None
    except UnicodeDecodeError as e:
        raise CharjaxError(
            f"--prime-file {path} is not valid UTF-8 (bad byte at offset {e.start}); convert it "
            "to UTF-8"
        ) from None
    except OSError as e:
        raise CharjaxError(f"cannot read --prime-file {path} ({e.strerror or e})") from None
    if not text:
        raise CharjaxError(f"--prime-file {path} is empty; pass a file with the text to start from")
    return text


def _labels(args: argparse.Namespace) -> list[str]:
    """What tells the texts apart, in their order: their temperature (and sample number)."""
    n = args.num_samples
    return [
        f"temperature {t:g}" + (f", sample {i + 1}" if n > 1 else "")
        for t in args.temperature
        for i in range(n)
    ]


def _print_streaming(blocks, prime: str, args: argparse.Namespace) -> None:
    """Each text followed by a newline (texts may contain newlines). The first is written as
    it is generated; the others (more temperatures or samples) follow when it is done. On a
    terminal each text comes after its prime, dimmed (`--no-prime`: not shown), and several
    are labelled by a header line each; piped, stdout holds the texts alone and stderr says
    their order. Ctrl-C ends the line being written, so the message starts on its own."""
    out = sys.stdout
    terminal = out.isatty()
    lead = f"\x1b[2m{prime}\x1b[0m" if terminal and not args.no_prime else ""
    labels = _labels(args)
    heads = [f"── {label} ──\n" if terminal and len(labels) > 1 else "" for label in labels]
    if not terminal and len(labels) > 1:
        print(f"{len(labels)} texts, in this order: {'; '.join(labels)}", file=sys.stderr)
    rest = [[] for _ in range(len(labels) - 1)]
    out.write(heads[0] + lead)
    try:
        for texts in blocks:
            out.write(texts[0])
            out.flush()
            for kept, text in zip(rest, texts[1:], strict=True):
                kept.append(text)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        raise
    out.write("\n")
    for head, kept in zip(heads[1:], rest, strict=True):
        out.write(head + lead + "".join(kept) + "\n")
    out.flush()
