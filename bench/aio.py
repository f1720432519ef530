"""Async processors (part ``async``): the engine against the bare ways to await many coroutines.

Async W0: every symbol is ``await asyncio.sleep(0)`` (one trip through the loop, no work), so the
numbers are the machinery's cost per symbol. Side by side in one process, rounds in rotating order:

- bare ``asyncio.gather`` over all symbols with an ``asyncio.Semaphore(workers)`` (one task each), in
  ``asyncio.run``: the floor an asyncio user writes by hand;
- the same under ``tqdm.asyncio.tqdm.gather`` (its bar writes to ``os.devnull``);
- ``ProcessingEngine(async_fn, max_workers=workers).process_batch`` with a callback and a token (its
  own loop thread, started and stopped per batch, is part of the time).

Then the cancel latency with an async processor: ``token.cancel()`` to ``process_batch`` returning, with
coroutines of 1 ms (``await asyncio.sleep(0.001)``) cancelled at their next ``await``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.cancel import engine_latency, wake_latency
from bench.common import Table, median, percentile, ratio_cell, ratios, rotating, symbols
from procengine_nb import CancellationToken, ProcessingEngine, ProcessingProgress

__all__ = ["RUNNERS", "aw0", "aw1", "run"]

AsyncFn = Callable[[Any], Awaitable[Any]]
Runner = Callable[[AsyncFn, Sequence[Any], int], int]

BARE = "bare asyncio.gather + Semaphore"
TQDM = "tqdm.asyncio.tqdm.gather + Semaphore"
ENGINE = "procengine_nb process_batch (callback + token)"


async def aw0(symbol: Any) -> Any:
    """Async W0: nothing but one trip through the event loop."""
    await asyncio.sleep(0)
    return symbol


async def aw1(symbol: Any) -> Any:
    """Async W1: 1 ms of waiting."""
    await asyncio.sleep(0.001)
    return symbol


def bare_gather(fn: AsyncFn, items: Sequence[Any], workers: int) -> int:
    async def main() -> list[Any]:
        semaphore = asyncio.Semaphore(workers)

        async def one(symbol: Any) -> Any:
            async with semaphore:
                return await fn(symbol)

        return await asyncio.gather(*(one(s) for s in items))

    return len(asyncio.run(main()))


def tqdm_gather(fn: AsyncFn, items: Sequence[Any], workers: int) -> int:
    from tqdm.asyncio import tqdm

    async def main() -> list[Any]:
        semaphore = asyncio.Semaphore(workers)

        async def one(symbol: Any) -> Any:
            async with semaphore:
                return await fn(symbol)

        with open(os.devnull, "w") as out:
            return await tqdm.gather(*(one(s) for s in items), file=out)  # type: ignore[no-any-return]

    return len(asyncio.run(main()))


def engine(fn: AsyncFn, items: Sequence[Any], workers: int) -> int:
    seen = [0]

    def callback(progress: ProcessingProgress) -> None:
        seen[0] += 1

    result = ProcessingEngine(fn, max_workers=workers).process_batch(
        items, progress_callback=callback, cancellation_token=CancellationToken())
    if result.errors:
        raise RuntimeError(f"the engine failed {len(result.errors)} symbols: {result.errors[0].error!r}")
    return len(result)


RUNNERS: dict[str, Runner] = {BARE: bare_gather, TQDM: tqdm_gather, ENGINE: engine}


def measure(n: int, repeat: int, workers: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per run for each runner; round ``r`` runs them rotated by ``r`` places."""
    items = symbols(n)
    runs = {name: (lambda runner=runner: runner(aw0, items, workers)) for name, runner in RUNNERS.items()}
    return rotating(runs, repeat, n)


def _ratios(times: dict[str, list[float]], name: str) -> list[float]:
    return ratios(times, name, BARE)


def _cell(times: dict[str, list[float]], name: str) -> str:
    return ratio_cell(times, name, BARE)


def cancel_latency(items: list[str], delay: float, workers: int) -> float:
    """Seconds from ``token.cancel()`` to ``process_batch`` returning, async 1 ms coroutines."""
    return engine_latency(items, delay, processor=aw1, workers=workers)


def run(*, smoke: bool, repeat: int, workers: int = 32) -> str:
    n = 300 if smoke else 10_000
    print(f"  async W0, N={n}, {repeat} rounds ...", file=sys.stderr, flush=True)
    wall, cpu = measure(n, repeat, workers)
    table = Table("runner", "wall µs/symbol", "wall x bare gather", "CPU µs/symbol", "CPU x bare gather")
    for name in sorted(RUNNERS, key=lambda k: median(_ratios(wall, k))):
        table.add(name, f"{median(wall[name]) / n * 1e6:.2f}", _cell(wall, name),
                  f"{median(cpu[name]) / n * 1e6:.2f}", _cell(cpu, name))

    cancel_n = 10_000 if smoke else 100_000  # long enough at 32 at once (≥ 0.3 s) to be cancelled
    trials = 2 if smoke else 30
    rng = random.Random(12)
    items = symbols(cancel_n)
    latencies: dict[int, list[float]] = {}
    for at_once in (4, workers):  # 4: as the threads cancel part; then the W0 width
        print(f"  async cancel: {at_once} at once, {trials} trials, N={cancel_n} ...", file=sys.stderr, flush=True)
        latencies[at_once] = [cancel_latency(items, rng.uniform(0.02, 0.15), at_once) for _ in range(trials)]
    print(f"  async cancel: wake-up floor, {trials} trials ...", file=sys.stderr, flush=True)
    floor = [wake_latency(items, rng.uniform(0.02, 0.15)) for _ in range(trials)]
    cancel_table = Table("runner", "trials", "median", "p90", "p99", "max")
    rows = [(f"procengine_nb process_batch, async processor, {k} coroutines at once", v)
            for k, v in latencies.items()]
    rows.append(("floor: Event.set() to a waiting thread waking, under a thread batch", floor))
    for label, values in rows:
        cancel_table.add(label, len(values), *(f"{v * 1000:.2f} ms" for v in (
            median(values), percentile(values, 90), percentile(values, 99), max(values))))

    ratio = median(_ratios(wall, ENGINE))
    cpu_ratio = median(_ratios(cpu, ENGINE))
    tqdm_ratio = median(_ratios(wall, TQDM))
    p99 = percentile(latencies[4], 99) * 1000
    wide99 = percentile(latencies[workers], 99) * 1000
    verdicts = [
        f"- async W0: engine {ratio:.3f}x bare gather in wall time (target ≤ 1.5x; CPU {cpu_ratio:.3f}x; "
        f"tqdm.gather {tqdm_ratio:.3f}x) → {'met' if ratio <= 1.5 else 'MISSED'}",
        f"- async cancel p99, 4 coroutines at once: {p99:.2f} ms (target ≤ 10 ms, as on threads; "
        f"{workers} at once: {wide99:.2f} ms; the machine's own wake-up p99 under load: "
        f"{percentile(floor, 99) * 1000:.2f} ms) → {'met' if p99 <= 10 else 'MISSED'}",
    ]
    return (f"Async W0 (`await asyncio.sleep(0)`), N={n:,}, {workers} coroutines at once; {repeat} rounds, "
            "runners in rotating order. Times are medians; ratios are medians of per-round ratios to the bare "
            "gather (min-max in brackets). CPU = process CPU time over all threads.\n\n"
            f"{table.render()}\n\n"
            f"Cancel: `token.cancel()` to `process_batch` returning; N={cancel_n:,} coroutines of 1 ms "
            f"(`await asyncio.sleep(0.001)`), cancelled at a random moment 20-150 ms into the run.\n\n"
            f"{cancel_table.render()}\n\n"
            "Targets:\n" + "\n".join(verdicts))
