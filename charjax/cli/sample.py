"""`charjax-sample`: text from a saved model to stdout (raw, or `--json`), diagnostics to
stderr; the work is `inference`'s."""

from __future__ import annotations

import argparse
import json
import sys

from charjax.cli.common import Parser, checkpoint_dir_flag, finite, floats
from charjax.config import READINGS


def sample_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-sample",
        description="Generate text from a checkpoint. Text goes to stdout, diagnostics to stderr.",
    )
    checkpoint_dir_flag(p, epoch=True)
    p.add_argument(
        "--prime",
        default=None,
        help="text to start from (default: the first maxlen chars of the training text)",
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


def sample(args: argparse.Namespace) -> int:
    from charjax import inference

    saved = inference.load(args.checkpoint_dir, args.epoch, args.best)
    inference.check_temperatures(args.temperature)  # before the prime, as always
    prime_ids, prime, skipped = inference.encode_prime(saved, args.prime, args.unknown)
    if skipped:
        skipped = json.dumps(skipped, ensure_ascii=False)
        print(f"skipping prime characters not in the vocabulary: {skipped}", file=sys.stderr)
    mode = args.mode or saved.reading
    options = dict(
        seed=args.seed,
        temperatures=args.temperature,
        length=args.length,
        mode=mode,
        num_samples=args.num_samples,
        top_k=args.top_k,
        top_p=args.top_p,
    )
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


def _print_streaming(blocks, prime: str, args: argparse.Namespace) -> None:
    """Each text followed by a newline (texts may contain newlines). The first is written as
    it is generated; the others (more temperatures or samples) follow when it is done. On a
    terminal each text comes after its prime, dimmed (`--no-prime`: not shown)."""
    out = sys.stdout
    lead = f"\x1b[2m{prime}\x1b[0m" if out.isatty() and not args.no_prime else ""
    rest = [[] for _ in range(len(args.temperature) * args.num_samples - 1)]
    out.write(lead)
    for texts in blocks:
        out.write(texts[0])
        out.flush()
        for kept, text in zip(rest, texts[1:], strict=True):
            kept.append(text)
    out.write("\n")
    for kept in rest:
        out.write(lead + "".join(kept) + "\n")
    out.flush()
