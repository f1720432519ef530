"""Cancel latency: from ``token.cancel()`` to ``process_batch`` returning, 100,000 symbols of 1 ms tasks.

A timer thread cancels at a random moment of the run and notes the time just before ``cancel()``; the
caller notes the time ``process_batch`` returned. The baseline is the bare submit-all loop stopped the
only way it can be: an ``Event`` checked at each completion of ``as_completed``, then ``shutdown(cancel_futures=True)``.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from bench.common import Table, median, percentile, symbols
from bench.workloads import w1
from procengine_nb import CancellationToken, ProcessingEngine

__all__ = ["bare_latency", "engine_latency", "run", "wake_latency"]


def engine_latency(items: list[str], delay: float, *, processor: Callable[..., Any] = w1, workers: int = 4) -> float:
    """Seconds from ``token.cancel()`` (a timer fires it after ``delay``) to ``process_batch`` returning."""
    token = CancellationToken()
    cancelled_at: list[float] = []

    def cancel() -> None:
        cancelled_at.append(time.perf_counter())
        token.cancel()

    timer = threading.Timer(delay, cancel)
    timer.start()
    result = ProcessingEngine(processor, max_workers=workers).process_batch(items, cancellation_token=token)
    returned = time.perf_counter()
    timer.join()
    if not result.cancelled:
        raise RuntimeError("the batch finished before the cancel: use more symbols or a shorter delay")
    return returned - cancelled_at[0]


def wake_latency(items: list[str], delay: float) -> float:
    """The machine's floor under the same load: a batch runs in the background while this thread waits
    on an Event that a timer sets. Whatever the OS and the GIL add to any thread's wake-up shows here."""
    background = CancellationToken()
    engine = ProcessingEngine(w1, max_workers=4)
    job = threading.Thread(target=engine.process_batch, args=(items,), kwargs={"cancellation_token": background})
    job.start()
    event = threading.Event()
    set_at: list[float] = []

    def fire() -> None:
        set_at.append(time.perf_counter())
        event.set()

    timer = threading.Timer(delay, fire)
    timer.start()
    event.wait()
    woke = time.perf_counter()
    timer.join()
    background.cancel()
    job.join()
    return woke - set_at[0]


def bare_latency(items: list[str], delay: float) -> float:
    stop = threading.Event()
    cancelled_at: list[float] = []

    def cancel() -> None:
        cancelled_at.append(time.perf_counter())
        stop.set()

    pool = ThreadPoolExecutor(max_workers=4)
    pending = {pool.submit(w1, s) for s in items}
    timer = threading.Timer(delay, cancel)
    timer.start()
    for _ in as_completed(pending):  # tasks of 1 ms complete every ~0.25 ms: the Event is seen at once
        if stop.is_set():
            break
    pool.shutdown(wait=False, cancel_futures=True)
    returned = time.perf_counter()
    timer.join()
    return returned - cancelled_at[0]


def run(*, smoke: bool, repeat: int = 1) -> str:
    n = 2_000 if smoke else 100_000
    trials = 3 if smoke else 60
    bare_trials = 1 if smoke else 5
    rng = random.Random(6)
    items = symbols(n)
    print(f"  cancel: engine, {trials} trials, N={n} ...", file=sys.stderr, flush=True)
    engine = [engine_latency(items, rng.uniform(0.02, 0.15)) for _ in range(trials)]
    print(f"  cancel: wake-up floor, {trials} trials ...", file=sys.stderr, flush=True)
    floor = [wake_latency(items, rng.uniform(0.02, 0.15)) for _ in range(trials)]
    print(f"  cancel: bare submit-all, {bare_trials} trials ...", file=sys.stderr, flush=True)
    bare = [bare_latency(items, rng.uniform(0.02, 0.15)) for _ in range(bare_trials)]
    table = Table("runner", "trials", "median", "p90", "p99", "max")
    rows = (("procengine_nb process_batch", engine),
            ("floor: Event.set() to a waiting thread waking, same load", floor),
            ("bare submit-all + shutdown(cancel_futures)", bare))
    for label, values in rows:
        table.add(label, len(values), *(f"{v * 1000:.2f} ms" for v in (
            median(values), percentile(values, 90), percentile(values, 99), max(values))))
    p99 = percentile(engine, 99) * 1000
    floor99 = percentile(floor, 99) * 1000
    verdict = (f"- cancel p99: {p99:.2f} ms (target ≤ 10 ms; the machine's own wake-up p99 under the same load: "
               f"{floor99:.2f} ms) → {'met' if p99 <= 10 else 'MISSED'}"
               + (" (smoke run: meaningless)" if smoke else ""))
    return (f"N={n:,} symbols of 1 ms (sleep), 4 workers, cancel at a random moment 20-150 ms into the run.\n\n"
            f"{table.render()}\n\nTargets:\n{verdict}")
