"""Backends against the tools people would use instead, side by side in one process, as ratios.

Processes (``WORKERS`` worker processes): the engine (``backend="processes"``) against joblib
``Parallel`` (loky, auto-batching), mpire ``WorkerPool.map`` and loky's ``executor.map`` (chunked).
Dask (a ``LocalCluster`` of ``WORKERS`` single-threaded worker processes, started once): the engine
(``backend="dask", client=client``) against ``client.gather(client.map(...))`` and ``dask.bag``.

Two workloads each: *tiny* (``x * x``: the tool's own overhead is everything) and *5 ms of pure-Python
CPU* per item (the GIL held; the loop count is calibrated here and travels with the function). Every
contender runs in every round, in rotating order; the engine twice: a **new engine per call** (what
``run()`` does; closed after each call) and **one engine reused**. Peers get the same treatment (a new
``Parallel``/``WorkerPool`` per call, or one kept alive). Reported: medians of the times, and the median
of per-round ratios engine / best peer of that round (min-max in brackets).

Stop latency: 10,000 pending 5 ms tasks, ``token.cancel()`` at a random moment 0.2-0.6 s into the run,
the time until ``process_batch`` returns; on threads, processes and Dask.

Run with ``python -m bench backends`` (``--smoke``: tiny sizes, no verdicts).
"""

from __future__ import annotations

import functools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import Table, median, percentile
from procengine_nb import BatchResult, CancellationToken, ProcessingEngine, ResultStatus, SymbolResult

__all__ = ["burn", "main", "square"]

WORKERS = 2


def square(x: int) -> int:
    """The tiny task."""
    return x * x


def burn(x: int, loops: int) -> int:
    """``loops`` iterations of pure-Python arithmetic (about 5 ms once calibrated; holds the GIL)."""
    total = 0
    for i in range(loops):
        total += i * i
    return total + x


def _calibrate(target: float) -> int:
    loops = 20_000
    best = min(_seconds(lambda: burn(0, loops)) for _ in range(7))
    return max(1, int(loops * target / best))


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- contenders: each returns the number of results it got --------------------------------------------
Runner = Callable[[Callable[[Any], Any], Sequence[Any]], int]


def _engine_new(backend: str, **options: Any) -> Runner:
    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
        with ProcessingEngine(fn, backend=backend, max_workers=WORKERS, **options) as engine:
            result = engine.process_batch(items)
        assert not result.errors and not result.cancelled, result
        return len(result)
    return run


class _ReusedEngine:
    def __init__(self, backend: str, **options: Any) -> None:
        self.backend, self.options = backend, options
        self.engines: dict[Any, ProcessingEngine] = {}

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
        engine = self.engines.get(fn)
        if engine is None:
            engine = self.engines[fn] = ProcessingEngine(fn, backend=self.backend, max_workers=WORKERS,
                                                         **self.options)
        result = engine.process_batch(items)
        assert not result.errors and not result.cancelled, result
        return len(result)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def joblib_new(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    from joblib import Parallel, delayed

    return len(Parallel(n_jobs=WORKERS)(delayed(fn)(x) for x in items))


class _JoblibReused:
    def __init__(self) -> None:
        from joblib import Parallel

        self.parallel = Parallel(n_jobs=WORKERS)
        self.parallel.__enter__()

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
        from joblib import delayed

        return len(self.parallel(delayed(fn)(x) for x in items))

    def close(self) -> None:
        self.parallel.__exit__(None, None, None)


def mpire_new(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS) as pool:
        return len(pool.map(fn, items))


class _MpireReused:
    def __init__(self) -> None:
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=WORKERS, keep_alive=True)

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
        return len(self.pool.map(fn, items))

    def close(self) -> None:
        self.pool.terminate()


def loky_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    """loky's reusable executor (warm across calls, as in joblib), ``map`` with 4 chunks per worker."""
    import loky

    executor = loky.get_reusable_executor(max_workers=WORKERS)
    chunksize = max(1, len(items) // (4 * WORKERS))
    return sum(1 for _ in executor.map(fn, items, chunksize=chunksize))


def results_floor(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
    """Not a peer: the least any design that returns one result object per symbol pays in the parent
    (here, with no process at all): call ``fn`` and build a :class:`BatchResult` of
    :class:`SymbolResult` objects the way the engine's decoder does (its garbage-collector work
    included)."""
    from itertools import repeat

    result = BatchResult()
    result.extend(map(SymbolResult, items, repeat(ResultStatus.SUCCESS), map(fn, items), repeat(None), repeat(0.0)))
    return len(result)


def _dask_map(client: Any) -> Runner:
    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
        return len(client.gather(client.map(fn, items, pure=False)))
    return run


def _dask_bag(client: Any) -> Runner:
    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> int:
        import dask.bag as db

        # 4 partitions per worker (from_sequence's default makes one per ~8 items here: 625 for 5,000)
        return len(db.from_sequence(items, npartitions=4 * WORKERS).map(fn).compute(scheduler=client))
    return run


# -- measurement -----------------------------------------------------------------------------------------
def _rounds(contenders: dict[str, Runner], fn: Callable[[Any], Any], items: Sequence[Any], rounds: int,
            engines: Sequence[str], references: Sequence[str] = (),
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every contender once a round in rotating order; return times and per-round ratios to the
    best peer of the round (for the engine rows and the ``references``, which are not peers)."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in (*engines, *references)}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        this_round: dict[str, float] = {}
        for name in order:
            started = time.perf_counter()
            count = contenders[name](fn, items)
            this_round[name] = time.perf_counter() - started
            assert count == len(items), f"{name}: {count} results for {len(items)} items"
            times[name].append(this_round[name])
        best_peer = min(t for name, t in this_round.items() if name not in ratios)
        for name in ratios:
            ratios[name].append(this_round[name] / best_peer)
    return times, ratios


def _table(title: str, times: dict[str, list[float]], ratios: dict[str, list[float]], n: int) -> str:
    table = Table("contender", "median", "per item", "x best peer (median of rounds) [min-max]")
    for name in sorted(times, key=lambda k: median(times[k])):
        t = median(times[name])
        cell = "-"
        if name in ratios:
            values = ratios[name]
            cell = f"**{median(values):.2f}x** [{min(values):.2f}-{max(values):.2f}]"
        table.add(name, f"{t * 1000:,.0f} ms", f"{t / n * 1e6:,.1f} µs", cell)
    return f"#### {title}\n\n{table.render()}"


def _stop_latencies(make: Callable[[], ProcessingEngine], items: Sequence[Any], trials: int,
                    rng: random.Random) -> list[float]:
    out: list[float] = []
    with make() as engine:
        engine.process_batch(items[: 4 * WORKERS])  # warm
        for _ in range(trials):
            token = CancellationToken()
            cancelled_at: list[float] = []

            def cancel(token: CancellationToken = token, cancelled_at: list[float] = cancelled_at) -> None:
                cancelled_at.append(time.perf_counter())
                token.cancel()

            timer = threading.Timer(rng.uniform(0.2, 0.6), cancel)
            timer.start()
            result = engine.process_batch(items, cancellation_token=token)
            returned = time.perf_counter()
            timer.join()
            if result.cancelled and cancelled_at:
                out.append(returned - cancelled_at[0])
    return out


def _stop_row(table: Table, name: str, values: list[float]) -> float:
    if not values:
        table.add(name, 0, "-", "-", "-")
        return float("nan")
    table.add(name, len(values), *(f"{v * 1000:.1f} ms" for v in (
        median(values), percentile(values, 99), max(values))))
    return percentile(values, 99)


def main(smoke: bool = False) -> str:
    """Run the comparison and return a Markdown report."""
    rounds = 1 if smoke else 5
    tiny_n = 500 if smoke else 20_000
    dask_tiny_n = 200 if smoke else 5_000
    slow_n = 20 if smoke else 400
    loops = _calibrate(0.005)
    slow = functools.partial(burn, loops=loops)
    one = median([_seconds(lambda: slow(0)) for _ in range(20)])
    tiny_items = list(range(tiny_n))
    slow_items = list(range(slow_n))
    load = os.getloadavg()
    sections = [
        f"{WORKERS} workers everywhere; {rounds} round(s) ({3 * rounds} for tiny tasks on processes, "
        f"{2 * rounds - 1} for 5 ms tasks on processes, "
        f"{1 if smoke else 3} on Dask), contenders in rotating order; 5 ms task measured "
        f"at {one * 1000:.2f} ms here (ideal for {slow_n}: {slow_n * one / WORKERS:.2f} s). "
        f"Load average at the start of this part: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."
    ]
    verdicts: list[str] = []

    # -- processes ----------------------------------------------------------------------------------
    print("  backends: processes ...", file=sys.stderr, flush=True)
    reused_engine = _ReusedEngine("processes")
    joblib_reused = _JoblibReused()
    mpire_reused = _MpireReused()
    engines = ("engine, new per call", "engine, reused")
    processes: dict[str, Runner] = {
        "engine, new per call": _engine_new("processes"),
        "engine, reused": reused_engine,
        "joblib Parallel, new per call": joblib_new,
        "joblib Parallel, reused": joblib_reused,
        "mpire WorkerPool, new per call": mpire_new,
        "mpire WorkerPool, reused (keep_alive)": mpire_reused,
        "loky executor.map (chunked)": loky_map,
    }
    try:
        for fn, items in ((square, tiny_items[:50]), (slow, slow_items[:4])):  # start every pool once
            for runner in processes.values():
                runner(fn, items)
        floor = "reference, not a peer: the result objects alone, in the parent, no process"
        for title, fn, items, target, repeat in (
            (f"processes, {tiny_n:,} tiny tasks (x*x)", square, tiny_items, 1.5, 3 * rounds),
            (f"processes, {slow_n} tasks of 5 ms CPU", slow, slow_items, 1.05, 2 * rounds - 1),
        ):
            tiny = fn is square
            contenders = {**processes, floor: results_floor} if tiny else processes
            times, ratios = _rounds(contenders, fn, items, repeat, engines, (floor,) if tiny else ())
            sections.append(_table(title, times, ratios, len(items)))
            for name in engines:
                ratio = median(ratios[name])
                verdicts.append(f"- {title}, {name}: {ratio:.2f}x the best peer (target ≤ {target}x) → "
                                f"{'met' if ratio <= target else 'MISSED'}")
    finally:
        reused_engine.close()
        joblib_reused.close()
        mpire_reused.close()

    # -- dask ---------------------------------------------------------------------------------------------
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - without the dask extra
        sections.append(f"dask: skipped ({exc})")
        distributed = None
    cluster = client = None
    if distributed is not None:
        print("  backends: dask ...", file=sys.stderr, flush=True)
        cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None,
                                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                           silence_logs=50)
        client = distributed.Client(cluster, set_as_default=False)
        reused_dask = _ReusedEngine("dask", client=client)
        dask_contenders: dict[str, Runner] = {
            "engine, new per call": _engine_new("dask", client=client),
            "engine, reused": reused_dask,
            "client.map + gather": _dask_map(client),
            "dask.bag (4 partitions per worker)": _dask_bag(client),
        }
        try:
            for fn, items in ((square, tiny_items[:50]), (slow, slow_items[:4])):
                for runner in dask_contenders.values():
                    runner(fn, items)
            dask_rounds = 1 if smoke else 3
            for title, fn, items in (
                (f"dask LocalCluster, {dask_tiny_n:,} tiny tasks (x*x)", square, tiny_items[:dask_tiny_n]),
                (f"dask LocalCluster, {slow_n} tasks of 5 ms CPU", slow, slow_items),
            ):
                times, ratios = _rounds(dask_contenders, fn, items, dask_rounds, engines)
                sections.append(_table(title, times, ratios, len(items)))
                for name in engines:
                    ratio = median(ratios[name])
                    verdicts.append(f"- {title}, {name}: {ratio:.2f}x the best peer (target ≤ 1.1x) → "
                                    f"{'met' if ratio <= 1.1 else 'MISSED'}")
        finally:
            reused_dask.close()

    # -- Stop latency ---------------------------------------------------------------------------------------
    print("  backends: Stop latency ...", file=sys.stderr, flush=True)
    rng = random.Random(14)
    stop_items = list(range(200 if smoke else 10_000))
    trials = 2 if smoke else 20
    stop = Table("backend", "trials", "median", "p99", "max")
    p99s = {
        "threads": _stop_row(stop, "threads", _stop_latencies(
            lambda: ProcessingEngine(slow, max_workers=WORKERS), stop_items, trials, rng)),
        "processes": _stop_row(stop, "processes", _stop_latencies(
            lambda: ProcessingEngine(slow, backend="processes", max_workers=WORKERS), stop_items, trials, rng)),
    }
    if client is not None:
        p99s["dask"] = _stop_row(stop, "dask (LocalCluster)", _stop_latencies(
            lambda: ProcessingEngine(slow, backend="dask", client=client), stop_items, max(2, trials // 2), rng))
        client.close()
        cluster.close()
    sections.append(f"#### Stop: `token.cancel()` → `process_batch` returns, {len(stop_items):,} pending 5 ms "
                    f"tasks, cancel 0.2-0.6 s into the run\n\n{stop.render()}")
    verdicts.extend(f"- Stop p99 on {name}: {value * 1000:.1f} ms" for name, value in p99s.items())
    return "\n\n".join(sections) + "\n\nTargets:\n" + "\n".join(verdicts)


if __name__ == "__main__":
    print(main(smoke="--smoke" in sys.argv[1:]))
