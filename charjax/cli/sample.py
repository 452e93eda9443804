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
        "--json",
        action="store_true",
        help="print one JSON list of {temperature, sample, text} instead of the raw texts",
    )
    return p


def sample(args: argparse.Namespace) -> int:
    from charjax import inference

    saved = inference.load(args.checkpoint_dir, args.epoch)
    inference.check_temperatures(args.temperature)  # before the prime, as always
    prime_ids, prime, skipped = inference.encode_prime(saved, args.prime, args.unknown)
    if skipped:
        print(f"skipping prime characters not in the vocabulary: {skipped!r}", file=sys.stderr)
    mode = args.mode or saved.reading
    texts = inference.sample_texts(
        saved,
        prime_ids,
        seed=args.seed,
        temperatures=args.temperature,
        length=args.length,
        mode=mode,
        num_samples=args.num_samples,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    maxlen = saved.meta.cfg.maxlen
    print(f"epoch {saved.meta.epoch}, mode {mode}, prime {prime[-maxlen:]!r}", file=sys.stderr)
    if args.json:
        n = args.num_samples
        records = [
            {"temperature": args.temperature[i // n], "sample": i % n, "text": text}
            for i, text in enumerate(texts)
        ]
        print(json.dumps(records, ensure_ascii=False), flush=True)
    else:  # raw text, each sample followed by a newline (samples may contain newlines)
        for text in texts:
            print(text, flush=True)
    return 0
