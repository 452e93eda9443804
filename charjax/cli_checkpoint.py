"""The commands that read a saved run: `charjax-sample` (generate text) and `charjax-score`
(bits/char of a text)."""

from __future__ import annotations

import argparse
import json
import sys

from charjax.cli_common import Parser, checkpoint_flags, finite, floats, run
from charjax.errors import CharjaxError


def _load_checkpoint(directory: str, epoch: int | None):
    """(meta, config, vocab, params) of a saved epoch (default: the latest)."""
    from charjax import checkpoint, data, train

    ckpts = checkpoint.Checkpoints(directory, create=False)
    try:
        meta = ckpts.meta(epoch)
        cfg = checkpoint.config_of(meta)
        vocab = data.Vocab(meta["vocab"])
        params = ckpts.restore(train.state_shape(vocab.size, cfg), meta["epoch"]).params
    finally:
        ckpts.close()
    return meta, cfg, vocab, params


def sample_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-sample",
        description="Generate text from a checkpoint. Text goes to stdout, diagnostics to stderr.",
    )
    checkpoint_flags(p)
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
        choices=("window", "stateful"),
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
        help="prime chars outside the vocabulary: error (default) or skip them",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON list of {temperature, sample, text} instead of the raw texts",
    )
    return p


def _sample(args: argparse.Namespace) -> int:
    import jax

    from charjax import sample, score

    meta, cfg, vocab, params = _load_checkpoint(args.checkpoint_dir, args.epoch)
    mode = args.mode or score.default_mode(cfg)
    if not args.temperature:
        raise CharjaxError("--temperature needs at least one number (0 = greedy)")
    prime = meta["prime"] if args.prime is None else args.prime
    prime = prime.lower() if cfg.lower else prime
    prime_ids, unknown = vocab.encode_known(prime)
    unknown = "".join(sorted(unknown))
    if unknown and args.unknown == "error":
        raise CharjaxError(
            f"prime characters not in the vocabulary: {unknown!r}; remove them or pass "
            "--unknown skip"
        )
    if unknown:
        print(f"skipping prime characters not in the vocabulary: {unknown!r}", file=sys.stderr)
        prime = vocab.decode(prime_ids)
    ids = sample.generate(
        params,
        prime_ids,
        jax.random.key(args.seed),
        list(args.temperature),
        length=args.length,
        mode=mode,
        maxlen=cfg.maxlen,
        num_samples=args.num_samples,
        top_k=args.top_k,
        top_p=args.top_p,
    ).reshape(len(args.temperature) * args.num_samples, args.length)
    print(f"epoch {meta['epoch']}, mode {mode}, prime {prime[-cfg.maxlen :]!r}", file=sys.stderr)
    texts = [vocab.decode(row) for row in ids]
    if args.json:
        temps = [t for t in args.temperature for _ in range(args.num_samples)]
        samples = [i % args.num_samples for i in range(len(texts))]
        records = [
            {"temperature": t, "sample": k, "text": text}
            for t, k, text in zip(temps, samples, texts, strict=True)
        ]
        print(json.dumps(records, ensure_ascii=False), flush=True)
    else:  # raw text, each sample followed by a newline (samples may contain newlines)
        for text in texts:
            print(text, flush=True)
    return 0


def score_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-score",
        description="Bits per char and perplexity of a text under a checkpoint (lower is better).",
    )
    p.add_argument(
        "text",
        nargs="?",
        default=None,
        help="UTF-8 text file to score (default: the run's own held-out tail, --val-fraction)",
    )
    checkpoint_flags(p)
    p.add_argument(
        "--mode",
        choices=("window", "stateful"),
        default=None,
        help="window: each char from the maxlen chars before it (the original objective); "
        "stateful: one pass carrying the LSTM state (default: how the model was trained)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=1,
        help="window mode: score every N-th char only (faster; default: 1 = every char)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from charjax import data, score, start

    if args.stride < 1:
        raise CharjaxError(f"--stride must be >= 1, got {args.stride}")
    meta, cfg, vocab, params = _load_checkpoint(args.checkpoint_dir, args.epoch)
    mode = args.mode or score.default_mode(cfg)
    if args.text is None:
        if cfg.val_fraction == 0:
            raise CharjaxError(
                "this run held nothing out (--val-fraction 0); pass a text file to score"
            )
        corpus = start.saved_corpus(cfg, meta, args.checkpoint_dir)
        ids, unknown = corpus.ids[start.split_of(corpus, cfg) :], {}
        source = f"held-out tail of {cfg.text} ({cfg.val_fraction:g})"
    else:
        path = data.resolve_corpus(args.text)
        text = data.read_text(path, lower=cfg.lower)
        ids, unknown = vocab.encode_known(text)
        source = str(Path(args.text))
    result = score.score_ids(
        params, ids, mode=mode, maxlen=cfg.maxlen, stride=args.stride, dtype=cfg.dtype
    )
    record = {
        "text": source,
        "epoch": meta["epoch"],
        "mode": mode,
        "chars_scored": result.chars,
        "nats_per_char": result.nats_per_char,
        "bits_per_char": result.bits_per_char,
        "perplexity": result.perplexity,
        "unknown_chars": dict(unknown),
    }
    if args.json:
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return 0
    print(
        f"{source}: {result.bits_per_char:.4f} bits/char, {result.nats_per_char:.4f} nats/char, "
        f"perplexity {result.perplexity:.3f} ({result.chars:,} chars scored, {mode} mode, "
        f"epoch {meta['epoch']})"
    )
    if unknown:
        listed = ", ".join(f"{ch!r} x{n}" for ch, n in unknown.most_common())
        print(
            f"skipped {sum(unknown.values()):,} chars not in the model's vocabulary: {listed}",
            file=sys.stderr,
        )
    return 0


def score_main(argv=None) -> int:
    return run(_score, score_parser(), argv)


def sample_main(argv=None) -> int:
    return run(_sample, sample_parser(), argv)
