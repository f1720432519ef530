"""The small interface every backend implements, and the task that runs on it.

A *backend* is configuration (how many workers, which pool); for each batch it opens a
:class:`BatchExecutor`, which submits tasks, cancels the ones not started, and closes at the end of the
batch. Backends say honestly what they can do (``shares_memory``) so the engine
never assumes a capability a backend lacks.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from procengine_nb._tracebacks import detach, release
from procengine_nb.backends._loop import _NOT_AWAITABLE, awaiter_for, cannot_await, is_awaitable
from procengine_nb.cancellation import CancellationToken, ProcessingCancelledException
from procengine_nb.models import ResultStatus, SymbolResult

__all__ = ["Backend", "BatchExecutor", "failed_result", "returned_result", "run_chunk"]


def run_chunk(
    processor: Callable[..., Any],
    symbols: Sequence[Any],
    token: CancellationToken | None,
    pass_token: bool,
) -> list[SymbolResult]:
    """Process ``symbols`` one after another and return one :class:`SymbolResult` each.

    Runs on a worker. Stops early (returning only the results of the symbols it ran) when ``token``
    is cancelled between two symbols; the engine counts the rest as unprocessed. Every exception a
    processor raises, ``KeyboardInterrupt`` and ``SystemExit`` included, becomes that symbol's ERROR
    result; :class:`ProcessingCancelledException` becomes CANCELLED. A result keeps the exception and
    (ERROR) its formatted traceback, never its frames: a failed call's locals are freed at once.

    A value that is an awaitable (a sync callable that returned a coroutine) is awaited on the batch's
    event loop when the batch has one for its workers (the threads backends, see ``_loop.Awaiter``), else it
    is that symbol's ERROR (a ``TypeError`` saying so): never a coroutine object as a value.
    """
    results: list[SymbolResult] = []
    append = results.append
    clock = time.perf_counter
    not_awaitable = _NOT_AWAITABLE
    for symbol in symbols:
        if token is not None and token.is_cancelled:
            break
        start = clock()
        try:
            value = processor(symbol, cancellation_token=token) if pass_token else processor(symbol)
            while type(value) not in not_awaitable and is_awaitable(value):  # (it may resolve to another)
                awaiter = awaiter_for(token)
                if awaiter is None:
                    raise cannot_await(value)
                value = awaiter.wait(value)
        except BaseException as exc:
            append(failed_result(symbol, exc, (clock() - start) * 1000.0))
        else:
            append(SymbolResult(symbol, ResultStatus.SUCCESS, value, None, (clock() - start) * 1000.0))
    return results


def failed_result(symbol: Any, exc: BaseException, duration_ms: float) -> SymbolResult:
    """The result of a call that raised ``exc``: CANCELLED for :class:`ProcessingCancelledException`,
    else ERROR with the formatted traceback; the exception keeps no frames (nor their locals)."""
    if isinstance(exc, ProcessingCancelledException):
        release(exc)
        return SymbolResult(symbol, ResultStatus.CANCELLED, None, exc, duration_ms)
    return SymbolResult(symbol, ResultStatus.ERROR, None, exc, duration_ms, traceback=detach(exc))


def returned_result(symbol: Any, value: Any, token: CancellationToken | None, start: float) -> SymbolResult:
    """The result of a call that returned ``value`` at ``start`` (``time.perf_counter()``): an awaitable
    is awaited as :func:`run_chunk` does (or is an ERROR where nothing can await it)."""
    clock = time.perf_counter
    try:
        while type(value) not in _NOT_AWAITABLE and is_awaitable(value):
            awaiter = awaiter_for(token)
            if awaiter is None:
                raise cannot_await(value)
            value = awaiter.wait(value)
    except BaseException as exc:
        return failed_result(symbol, exc, (clock() - start) * 1000.0)
    return SymbolResult(symbol, ResultStatus.SUCCESS, value, None, (clock() - start) * 1000.0)


class BatchExecutor(abc.ABC):
    """One batch's view of a backend: submit tasks, drop pending ones, close at the end."""

    #: the token given to processors that accept one (None where the workers cannot see it)
    worker_token: CancellationToken | None = None

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Schedule ``fn(*args)``; return a future supporting ``add_done_callback``/``result``/``cancel``."""

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel the given futures that have not started (best effort; running ones keep running)."""
        for future in futures:
            future.cancel()

    def stop_running(self, futures: Iterable[Future[Any]]) -> None:  # noqa: B027 - optional hook
        """After the batch's token is cancelled, before the batch collects what finished: stop the
        given tasks that already run, where the backend can, and return once their outcomes are out
        (briefly: a cancel must stay prompt). Default: nothing (running tasks keep running)."""

    def abandon(self, futures: Iterable[Future[Any]]) -> None:  # noqa: B027 - optional hook
        """Tasks the batch gave up on (past their ``timeout=``) that may still be running: a backend may
        give their workers' places to the tasks queued behind them. Default: nothing."""

    def started(self, future: Future[Any]) -> bool:
        """True once the task began running on a worker (``timeout=`` counts from then; asked only by
        batches with a timeout, on backends whose workers do not share memory). Default: what the
        future says (``running()`` or ``done()``)."""
        return future.running() or future.done()

    @abc.abstractmethod
    def close(self, *, cancelled: bool) -> None:
        """End of the batch: release what this batch opened. Must not wait for running tasks when
        ``cancelled`` is True."""


class Backend(abc.ABC):
    """Where a batch's tasks run. Subclasses: threads (default), processes (loky), dask."""

    #: short name used in errors and views
    name: str = "backend"
    #: True when workers share this process's memory (the cancellation token reaches processors)
    shares_memory: bool = False
    #: True when the backend awaits coroutines itself (an ``async def`` processor may run on it)
    runs_coroutines: bool = False
    #: True when the backend enforces the per-symbol ``timeout`` itself, from each symbol's own start
    #: (the engine then gives it the timeout instead of timing tasks from their submission)
    times_symbols: bool = False
    #: seconds of work the engine groups into one task when symbols are tiny (adaptive chunking);
    #: larger where handing a task over costs more (processes, a Dask cluster)
    target_task_seconds: float = 0.002

    @property
    @abc.abstractmethod
    def max_workers(self) -> int:
        """How many tasks run at once."""

    @abc.abstractmethod
    def open(self, token: CancellationToken) -> BatchExecutor:
        """Get ready for one batch whose cancellation token is ``token``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release long-lived resources (a cluster the backend started, a reusable pool)."""
