"""``python -m procengine_nb [demo]`` (or ``procengine-demo``): a demo batch with a progress line in the terminal.

    python -m procengine_nb demo --symbols 200 --fail-rate 0.05 --delay-ms 20 --workers 4 --seed 1

With no command, the demo runs with its defaults.

Which symbols fail and how long each takes are decided by ``--seed`` (random without it). Exit status:
0 when the batch ends (even with failed symbols), 130 after Ctrl-C, which cancels the batch and prints
the partial summary. The summary line goes to stdout; the progress line to stderr.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

from procengine_nb.cancellation import CancellationToken
from procengine_nb.one_liner import run

__all__ = ["demo_processor", "main"]

EXIT_INTERRUPTED = 130


def demo_processor(fail_rate: float, delay_ms: float, seed: int | None) -> Callable[..., Any]:
    """A processor that sleeps about ``delay_ms`` (stopping early on cancel) and fails for a share
    ``fail_rate`` of symbols; with a ``seed`` both are a pure function of (seed, symbol)."""
    salt = seed if seed is not None else random.SystemRandom().randrange(2**32)

    def process(symbol: str, cancellation_token: CancellationToken) -> int:
        rng = random.Random(f"{salt}:{symbol}")
        fails = rng.random() < fail_rate
        seconds = delay_ms * (0.5 + rng.random()) / 1000.0
        if cancellation_token.wait(seconds):
            cancellation_token.throw_if_cancelled()
        if fails:
            raise ValueError(f"no data for {symbol}")
        return rng.randrange(1000)

    return process


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m procengine_nb", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="run a demo batch with a progress line (Ctrl-C stops it)")
    demo.add_argument("--symbols", type=_at_least(0), default=200, help="how many symbols (default 200)")
    demo.add_argument("--fail-rate", type=_fraction, default=0.05, help="share of symbols that fail (0.05)")
    demo.add_argument("--delay-ms", type=_non_negative, default=20.0, help="mean time per symbol in ms (20)")
    demo.add_argument("--workers", type=_at_least(1), default=4, help="worker threads (4)")
    demo.add_argument("--seed", type=int, default=None, help="make failures and delays reproducible")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 done, 130 interrupted, 2 bad arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "demo")  # no command: the demo (its options may follow)
    args = _parser().parse_args(argv)
    symbols = [f"SYM{i:05d}" for i in range(args.symbols)]
    processor = demo_processor(args.fail_rate, args.delay_ms, args.seed)
    try:
        handle = run(processor, symbols, name="demo", max_workers=args.workers)
    except KeyboardInterrupt:  # while run() set up its views: it cancelled the job, the line shows it
        return EXIT_INTERRUPTED
    try:
        result = handle.result()
    except KeyboardInterrupt:  # the handle cancelled the job; the console view printed the summary
        print(handle.result().summary(), flush=True)
        return EXIT_INTERRUPTED
    print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    sys.exit(main())
