"""The contenders: procengine_nb and the usual ways to run a function over many items on threads.

Each runner takes ``(fn, symbols, workers)``, processes every symbol, and returns how many results it
got (checked by the caller, so a runner cannot silently skip work). Progress bars write to ``os.devnull``
so the terminal is not part of the measurement; they still do all their bookkeeping and formatting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingProgress

__all__ = ["BASELINES", "ENGINE_RUNNERS", "RUNNERS", "Runner"]

Runner = Callable[[Callable[[Any], Any], Sequence[Any], int], int]


def _devnull() -> Any:
    return open(os.devnull, "w")  # closed by the caller's with-block


def bare_executor(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """Submit everything, loop over ``as_completed``: the floor every library builds on."""
    count = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, s) for s in symbols]
        for future in as_completed(futures):
            future.result()
            count += 1
    return count


def tqdm_as_completed(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """The bare executor with ``tqdm`` wrapped around ``as_completed``."""
    from tqdm.std import tqdm

    count = 0
    with _devnull() as out, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, s) for s in symbols]
        for future in tqdm(as_completed(futures), total=len(futures), file=out):
            future.result()
            count += 1
    return count


def tqdm_thread_map(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """``tqdm.contrib.concurrent.thread_map`` (a ThreadPoolExecutor.map with a bar)."""
    from tqdm.contrib.concurrent import thread_map
    from tqdm.std import tqdm

    with _devnull() as out:
        return len(thread_map(fn, symbols, max_workers=workers, tqdm_class=tqdm, file=out))


def mpire_threads(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """mpire ``WorkerPool`` on threads with its progress bar (default chunking)."""
    from mpire import WorkerPool

    with _devnull() as out, WorkerPool(n_jobs=workers, start_method="threading") as pool:
        return len(pool.map(fn, symbols, progress_bar=True, progress_bar_options={"file": out}))


def joblib_threads(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """joblib ``Parallel(prefer="threads", return_as="generator")``."""
    from joblib import Parallel, delayed

    count = 0
    for _ in Parallel(n_jobs=workers, prefer="threads", return_as="generator")(delayed(fn)(s) for s in symbols):
        count += 1
    return count


class _LastSnapshot:
    """A realistic cheap progress callback: keeps the latest snapshot."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: ProcessingProgress | None = None

    def __call__(self, progress: ProcessingProgress) -> None:
        self.last = progress


def engine_callback(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """``process_batch`` with a progress callback (called for every symbol) and a token: the target."""
    callback = _LastSnapshot()
    engine = ProcessingEngine(fn, max_workers=workers)
    result = engine.process_batch(symbols, progress_callback=callback, cancellation_token=CancellationToken())
    assert callback.last is not None and callback.last.finished
    return len(result)


def engine_unchunked(fn: Callable[[Any], Any], symbols: Sequence[Any], workers: int) -> int:
    """The same with ``chunk_size=1``: one executor task per symbol (what chunking saves)."""
    callback = _LastSnapshot()
    engine = ProcessingEngine(fn, max_workers=workers, chunk_size=1)
    return len(engine.process_batch(symbols, progress_callback=callback, cancellation_token=CancellationToken()))


BASELINES: dict[str, Runner] = {
    "bare ThreadPoolExecutor + as_completed": bare_executor,
    "tqdm around as_completed": tqdm_as_completed,
    "tqdm thread_map": tqdm_thread_map,
    "mpire WorkerPool (threads, bar)": mpire_threads,
    "joblib Parallel (threads, generator)": joblib_threads,
}
ENGINE_RUNNERS: dict[str, Runner] = {
    "procengine_nb process_batch (callback + token)": engine_callback,
    "procengine_nb, chunk_size=1": engine_unchunked,
}
RUNNERS: dict[str, Runner] = {**ENGINE_RUNNERS, **BASELINES}
