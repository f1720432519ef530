"""Backends: threads vs processes (loky) vs Dask (a LocalCluster) on ~1 ms CPU-bound tasks, as ratios.

Each symbol burns about 1 ms of pure-Python arithmetic (holds the GIL, calibrated here; the loop count
travels with the function so worker processes burn the same). Every backend gets ``WORKERS`` workers
(the machine's cores); its pool or cluster is started and warmed up first, and that start-up is
reported separately. Timings are the median of ``rounds`` runs. Ratios: against the plain serial
loop (speed-up) and against the ideal ``n x 1 ms / WORKERS``. A Stop line per backend gives the time
from ``token.cancel()`` to ``process_batch`` returning, in the middle of a run.

Run it with ``python -m bench backends`` (or ``python -m bench.bench_backends [--smoke]``).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.common import Table, median
from procengine_nb import CancellationToken, ProcessingEngine

__all__ = ["burn", "main"]

WORKERS = max(2, os.cpu_count() or 1)


def burn(symbol: Any, loops: int) -> int:
    """About 1 ms of pure-Python arithmetic once ``loops`` is calibrated (holds the GIL)."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def _calibrate(target: float = 0.001) -> int:
    loops = 20_000
    best = min(_time(lambda: burn(None, loops)) for _ in range(5))
    return max(1, int(loops * target / best))


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stop_latency(engine: ProcessingEngine, items: list[str], after: float) -> float:
    token = CancellationToken()
    cancelled_at: list[float] = []

    def cancel() -> None:
        cancelled_at.append(time.perf_counter())
        token.cancel()

    timer = threading.Timer(after, cancel)
    timer.start()
    result = engine.process_batch(items, cancellation_token=token)
    returned = time.perf_counter()
    timer.join()
    if not result.cancelled or not cancelled_at:
        return float("nan")  # finished before the cancel (tiny smoke sizes)
    return returned - cancelled_at[0]


def main(smoke: bool = False) -> str:
    """Run the comparison and return a Markdown report (also printed when run as a script)."""
    n = 200 if smoke else 4000
    rounds = 1 if smoke else 3
    loops = _calibrate()
    processor = functools.partial(burn, loops=loops)
    items = [f"SYM{i:07d}" for i in range(n)]
    one = median([_time(lambda: processor(None)) for _ in range(50)])
    serial = median([_time(lambda: [processor(s) for s in items]) for _ in range(rounds)])
    ideal = n * one / WORKERS

    table = Table("backend", "start-up", f"{n} symbols", "symbols/s", "speed-up vs serial",
                  "vs ideal", "Stop → return")
    table.add("serial loop", "-", f"{serial:.2f} s", f"{n / serial:,.0f}", "1.00x",
              f"{serial / ideal:.2f}x", "-")
    notes: list[str] = []
    for name in ("threads", "processes", "dask"):
        started = time.perf_counter()
        try:
            engine = ProcessingEngine(processor, backend=name, max_workers=WORKERS)
            engine.process_batch(items[: WORKERS * 4])  # start the pool / cluster, warm it up
        except ImportError as exc:
            notes.append(f"{name}: skipped ({exc})")
            continue
        startup = time.perf_counter() - started
        try:
            times = []
            for _ in range(rounds):
                result = None

                def run(engine: ProcessingEngine = engine) -> None:
                    nonlocal result
                    result = engine.process_batch(items)

                times.append(_time(run))
                assert result is not None and len(result) == n and not result.errors, f"{name}: wrong result"
            elapsed = median(times)
            stop = _stop_latency(engine, items, after=min(elapsed / 2, 1.0))
        finally:
            engine.close()
        stop_text = "n/a" if stop != stop else f"{stop * 1000:.1f} ms"
        table.add(name, f"{startup:.2f} s", f"{elapsed:.2f} s", f"{n / elapsed:,.0f}",
                  f"{serial / elapsed:.2f}x", f"{elapsed / ideal:.2f}x", stop_text)
    report = (
        f"{n} symbols of {one * 1000:.2f} ms pure-Python CPU each (GIL held), {WORKERS} workers per backend, "
        f"median of {rounds} run(s); ideal = n x task / workers = {ideal:.2f} s. Start-up = creating the "
        "engine's pool or LocalCluster plus a first small batch (not in the timed runs).\n\n"
        + table.render()
    )
    if notes:
        report += "\n\n" + "\n".join(f"- {note}" for note in notes)
    return report


if __name__ == "__main__":
    print(main(smoke="--smoke" in sys.argv[1:]))
