"""Command lines behind `scripts/*.py` and the `charjax-*` entry points: flags -> library calls.

Problems the user can fix (`CharjaxError`, bad flag values) end as one line on stderr and exit
code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from charjax.config import Config
from charjax.errors import CharjaxError, Interrupted

_DEFAULTS = Config()


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the flag, the problem, where to look)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _floats(text: str) -> tuple[float, ...]:
    """'0.2,0.5' -> (0.2, 0.5); '' -> ()."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _config_flag(parser, name: str, help: str, type: Callable, **kw) -> None:
    """A flag for Config field `name`, left out of the namespace unless given (for --resume)."""
    default = getattr(_DEFAULTS, name)
    shown = ",".join(f"{t:g}" for t in default) if isinstance(default, tuple) else default
    parser.add_argument(
        "--" + name.replace("_", "-"),
        dest=name,
        default=argparse.SUPPRESS,
        type=type,
        help=f"{help} (default: {shown})",
        **kw,
    )


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="charjax-train",
        description="Train the char-level LSTM (defaults = the Keras Nietzsche example).",
    )
    _config_flag(
        p, "text", "corpus: 'nietzsche' or a path to a UTF-8 text file", type=str, metavar="PATH"
    )
    _config_flag(
        p, "max_chars", "use only the first N chars of the text; 0 = all", type=int, metavar="N"
    )
    _config_flag(
        p, "epochs", "epochs to train in total (a resumed run counts earlier ones)", type=int
    )
    _config_flag(p, "batch_size", "windows per optimizer step", type=int)
    _config_flag(p, "maxlen", "window length in chars", type=int)
    _config_flag(p, "step", "stride between window starts", type=int)
    _config_flag(p, "hidden", "LSTM units", type=int)
    _config_flag(p, "layers", "stacked LSTM layers", type=int)
    _config_flag(p, "learning_rate", "learning rate", type=float)
    _config_flag(
        p,
        "val_fraction",
        "held-out tail of the text scored after each epoch; 0 = no validation",
        type=_finite,
        metavar="F",
    )
    _config_flag(
        p,
        "objective",
        "last: predict the char after each window (the original); sequence: every next char "
        "(then --step equal to --maxlen is sensible)",
        type=str,
        choices=("last", "sequence"),
    )
    p.add_argument(
        "--carry-state",
        dest="carry_state",
        action="store_true",
        default=argparse.SUPPRESS,
        help="with --objective sequence: read the text as --batch-size contiguous streams and "
        "carry the LSTM state from each window to the next (truncated backpropagation through "
        "time; needs --step equal to --maxlen)",
    )
    _config_flag(p, "dropout", "dropout on each LSTM layer's outputs while training", type=_finite)
    _config_flag(p, "clip_norm", "clip gradients to this global norm; 0 = off", type=_finite)
    _config_flag(p, "optimizer", "update rule", type=str, choices=("rmsprop", "adam"))
    _config_flag(
        p,
        "schedule",
        "learning rate: constant, or cosine decay to 5 %% over the run",
        type=str,
        choices=("constant", "cosine"),
    )
    _config_flag(p, "warmup", "optimizer steps of linear learning-rate warm-up", type=int)
    _config_flag(
        p,
        "guard",
        "divergence guard: an epoch loss above this x the best epoch's (or not finite) restores "
        "the last checkpoint and halves the learning rate; 0 = off",
        type=_finite,
    )
    _config_flag(p, "dtype", "matmul precision: float32, or bfloat16 (for GPU/TPU)", type=str)
    _config_flag(p, "seed", "seed of every PRNG key (init, data order, samples)", type=int)
    _config_flag(p, "keep", "checkpoints to keep on disk", type=int)
    _config_flag(p, "sample_length", "chars generated per temperature after each epoch", type=int)
    _config_flag(
        p, "temperatures", "comma list of sampling temperatures; '' = no samples", type=_floats
    )
    _config_flag(p, "steps_per_call", "optimizer steps per jitted call (speed only)", type=int)
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="where checkpoints go (default: checkpoints/)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --checkpoint-dir from its latest epoch",
    )
    p.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="multi-process run: address of process 0 (default: $JAX_COORDINATOR_ADDRESS; "
        "unset = one process)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help="multi-process run: number of processes (default: $JAX_NUM_PROCESSES)",
    )
    p.add_argument(
        "--process-id",
        type=int,
        default=None,
        help="multi-process run: this process's index (default: $JAX_PROCESS_ID)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar: one plain line per epoch (also when not on a terminal)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def sample_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="charjax-sample",
        description="Generate text from a checkpoint. Text goes to stdout, diagnostics to stderr.",
    )
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="run directory written by charjax-train (default: checkpoints/)",
    )
    p.add_argument("--epoch", type=int, default=None, help="epoch to load (default: latest)")
    p.add_argument(
        "--prime",
        default=None,
        help="text to start from (default: the first maxlen chars of the training text)",
    )
    p.add_argument("--length", type=int, default=400, help="chars to generate (default: 400)")
    p.add_argument(
        "--temperature",
        type=_floats,
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
        type=_finite,
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
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def _run(main: Callable[[argparse.Namespace], int], parser, argv) -> int:
    """Run a command; every failure ends as one line on stderr (`--debug`: the traceback)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code
    try:
        return main(args)
    except Interrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        what = "; the epoch in progress was not saved" if parser.prog == "charjax-train" else ""
        print(f"{parser.prog}: interrupted{what}", file=sys.stderr)
        return 130
    except CharjaxError as e:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an environment problem: still one line, no traceback
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"{parser.prog}: unexpected error: {type(e).__name__}: {first} (rerun with --debug "
            "for the traceback)",
            file=sys.stderr,
        )
        return 1


def _train(args: argparse.Namespace) -> int:
    from charjax import parallel

    parallel.request_cpu_devices()  # before jax starts its backends
    parallel.tune_host_malloc()
    from charjax import runner

    parallel.start_distributed(args.coordinator, args.num_processes, args.process_id)
    given = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    runner.train_run(
        Config(**given),
        args.checkpoint_dir,
        resume=args.resume,
        given=given,
        progress=False if args.quiet else None,
    )
    return 0


def _load_checkpoint(directory: str, epoch: int | None):
    """(meta, config, vocab, params) of a saved epoch (default: the latest)."""
    import jax

    from charjax import checkpoint, data, train

    ckpts = checkpoint.Checkpoints(directory, create=False)
    try:
        meta = ckpts.meta(epoch)
        cfg = checkpoint.config_of(meta)
        vocab = data.Vocab(meta["vocab"])
        like = jax.eval_shape(lambda: train.init_state(jax.random.key(0), vocab.size, cfg))
        params = ckpts.restore(like, meta["epoch"]).params
    finally:
        ckpts.close()
    return meta, cfg, vocab, params


def _sample(args: argparse.Namespace) -> int:
    import jax

    from charjax import sample, score

    meta, cfg, vocab, params = _load_checkpoint(args.checkpoint_dir, args.epoch)
    mode = args.mode or score.default_mode(cfg)
    if not args.temperature:
        raise CharjaxError("--temperature needs at least one number (0 = greedy)")
    prime = meta["prime"] if args.prime is None else args.prime
    prime = prime.lower() if cfg.lower else prime
    unknown = vocab.unknown(prime)
    if unknown and args.unknown == "error":
        raise CharjaxError(
            f"prime characters not in the vocabulary: {unknown!r}; remove them or pass "
            "--unknown skip"
        )
    if unknown:
        print(f"skipping prime characters not in the vocabulary: {unknown!r}", file=sys.stderr)
        prime = "".join(c for c in prime if c not in unknown)
    ids = sample.generate(
        params,
        vocab.encode(prime),
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
    p = _Parser(
        prog="charjax-score",
        description="Bits per char and perplexity of a text under a checkpoint (lower is better).",
    )
    p.add_argument(
        "text",
        nargs="?",
        default=None,
        help="UTF-8 text file to score (default: the run's own held-out tail, --val-fraction)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="run directory written by charjax-train (default: checkpoints/)",
    )
    p.add_argument("--epoch", type=int, default=None, help="epoch to load (default: latest)")
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
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
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
        corpus = start.load_corpus(cfg)
        ids, unknown = corpus.ids[start.split_of(corpus, cfg) :], {}
        source = f"held-out tail of {cfg.text} ({cfg.val_fraction:g})"
    else:
        path = data.resolve_corpus(args.text)
        text = data.read_text(path, lower=cfg.lower)
        ids, unknown = score.encode_known(vocab, text)
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
    return _run(_score, score_parser(), argv)


def plot_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="charjax-plot", description="Plot a run's loss curves from its metrics.jsonl as a PNG."
    )
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="run directory written by charjax-train (default: checkpoints/)",
    )
    p.add_argument("--out", default=None, help="PNG to write (default: <checkpoint-dir>/loss.png)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def _plot(args: argparse.Namespace) -> int:
    from charjax.plot import plot_metrics

    print(plot_metrics(args.checkpoint_dir, args.out))
    return 0


def plot_main(argv=None) -> int:
    return _run(_plot, plot_parser(), argv)


def train_main(argv=None) -> int:
    return _run(_train, train_parser(), argv)


def sample_main(argv=None) -> int:
    return _run(_sample, sample_parser(), argv)
