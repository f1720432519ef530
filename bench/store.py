"""The cost of ``store=``: the same batch with and without a result store, side by side in one process.

Variants, run in rotating order each round (per-round ratios to "no store", so drift cancels out):

- no store: ``process_batch(job)``;
- store, new batch name each round: ``process_batch(job, store=store)`` on one store file, timed until it
  returns (the batch hands its results to the store's writer thread; keys, pickling and commits run there);
- the same, until the writer has written every result (``ResultStore.flush``): what durability costs;
- store, new file each round: the same on a fresh file (adds creating the file and its schema);
- rerun, all from the store: the same call again with the name of a finished batch (nothing runs).

Workloads: W1 (1 ms sleep: the target, store ≤ +3%) and W0 (returns at once: the driver's cost per
symbol, where the store is most visible).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable

from bench.common import Table, median, ratio_cell, ratios, rotating, symbols
from bench.workloads import w0, w1
from procengine_nb import ProcessingEngine, ProcessingJob, ResultStatus, ResultStore, SymbolResult
from procengine_nb.store import default_key

__all__ = ["run"]

NONE = "no store"
NAMED = "store, new batch name each round"
WRITTEN = "the same, until the writer has written every result"
FILE = "store, new file each round"
RERUN = "rerun: all from the store"


def _measure(fn: Callable[[object], object], n: int, repeat: int, workers: int, folder: str
             ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    items = symbols(n)
    engine = ProcessingEngine(fn, max_workers=workers)
    shared = ResultStore(os.path.join(folder, f"shared-{fn.__name__}-{n}.db"))
    done_name = "finished"
    engine.process_batch(ProcessingJob(items, name=done_name), store=shared)  # what the rerun reads
    counter = iter(range(10**9))

    def no_store() -> int:
        return len(engine.process_batch(ProcessingJob(items, name="x")))

    def named() -> int:
        return len(engine.process_batch(ProcessingJob(items, name=f"round {next(counter)}"), store=shared))

    def named_written() -> int:
        count = len(engine.process_batch(ProcessingJob(items, name=f"round {next(counter)}"), store=shared))
        if not shared.flush(120):
            raise RuntimeError("the store's writer did not finish")
        return count

    def new_file() -> int:
        path = os.path.join(folder, f"fresh-{next(counter)}.db")
        return len(engine.process_batch(ProcessingJob(items, name="fresh"), store=path))

    def rerun() -> int:
        result = engine.process_batch(ProcessingJob(items, name=done_name), store=shared)
        if not all(r.from_store for r in result):
            raise RuntimeError("the rerun ran symbols again")
        return len(result)

    return rotating({NONE: no_store, NAMED: named, WRITTEN: named_written, FILE: new_file, RERUN: rerun}, repeat, n)


def _driver_cost(folder: str, n: int, rounds: int) -> tuple[float, float]:
    """What storing one result costs, with no worker running: the minimum over rounds, which a loaded
    machine inflates least. Returns (µs per result until the writer thread wrote all of it: the hand-off,
    keys, pickling and SQLite; µs per result of the batch thread's hand-off alone)."""
    results = [SymbolResult(s, ResultStatus.SUCCESS, s, None, 1.0) for s in symbols(n)]
    best_total = best_add = float("inf")
    for r in range(rounds):
        store = ResultStore(os.path.join(folder, f"driver-{r}.db"), commit_seconds=3600)
        session = store._session("b", default_key).open()
        added = 0.0
        start = time.perf_counter()
        for i in range(0, n, 2):  # completions arrive a chunk of ~2 at a time on 1 ms tasks
            t = time.perf_counter()
            session.add(results[i:i + 2])
            added += time.perf_counter() - t
        session.close()
        if not session.flush(120):
            raise RuntimeError("the store's writer did not finish")
        best_total = min(best_total, (time.perf_counter() - start) / n * 1e6)
        best_add = min(best_add, added / n * 1e6)
    return best_total, best_add


def _cell(times: dict[str, list[float]], name: str) -> str:
    return ratio_cell(times, name, NONE)


def _ratio(times: dict[str, list[float]], name: str) -> float:
    return median(ratios(times, name, NONE))


def run(*, smoke: bool, repeat: int, workers: int = 4) -> str:
    lines = [f"{workers} workers; {repeat} rounds, variants in rotating order. Times are medians; ratios are "
             "medians of per-round ratios to the same batch without a store (min-max in brackets). "
             "CPU = process CPU time over all threads."]
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        for label, fn, n in (("W1", w1, 40 if smoke else 4_000), ("W0", w0, 300 if smoke else 100_000)):
            print(f"  store: {label}, N={n} ...", file=sys.stderr, flush=True)
            wall, cpu = _measure(fn, n, repeat, workers, folder)
            table = Table("variant", "wall µs/symbol", "wall x no store", "CPU µs/symbol", "CPU x no store")
            for name in wall:
                table.add(name, f"{median(wall[name]) / n * 1e6:.2f}", _cell(wall, name),
                          f"{median(cpu[name]) / n * 1e6:.2f}", _cell(cpu, name))
            description = "1 ms sleep" if label == "W1" else "returns at once"
            lines.append(f"\n### {label}: {description}, N={n:,}\n\n{table.render()}")
            if label == "W1":
                cost, buffering = _driver_cost(folder, 4_000, max(3, repeat))
                rate = n / median(wall[NONE])
                lines.append(f"\nStoring a result, no worker running (minimum of {max(3, repeat)} rounds of 4,000): "
                             f"{cost:.1f} µs until written, of which {buffering:.1f} µs on the batch thread (the "
                             f"hand-off to the writer thread; keys, pickling and SQLite run there). At this W1 "
                             f"batch's rate without a store ({rate:,.0f} symbols/s) the hand-off is "
                             f"{buffering * rate / 1e4:.2f}% of the batch thread's time.")
                wall_ratio, cpu_ratio = _ratio(wall, NAMED), _ratio(cpu, NAMED)
                of_medians = median(wall[NAMED]) / median(wall[NONE])
                extra_cpu = (median(cpu[NAMED]) - median(cpu[NONE])) / n * 1e6
                verdicts.append(f"- W1 with a store: {(wall_ratio - 1) * 100:+.1f}% wall (median of per-round "
                                f"ratios; ratio of the median times {(of_medians - 1) * 100:+.1f}%), "
                                f"{(cpu_ratio - 1) * 100:+.1f}% CPU ({extra_cpu:+.1f} µs a symbol) vs no store "
                                f"(target ≤ +3% wall) → {'met' if wall_ratio <= 1.03 else 'MISSED'}; until "
                                f"every result is written: {(_ratio(wall, WRITTEN) - 1) * 100:+.1f}% wall")
    if not smoke:  # a smoke run's tiny batches say nothing about cost: no verdicts
        lines.append("\nTargets:\n" + "\n".join(verdicts))
    return "\n".join(lines)
