"""The asyncio backend: an async processor's coroutines, awaited on an event loop the batch owns.

``ProcessingEngine(async_fn)`` picks it for an ``async def`` processor (a ``functools.partial`` of one,
or an object whose ``__call__`` is ``async def``) when no other backend is asked for; pass
``backend="asyncio"`` for a sync callable that returns awaitables. Each batch starts a thread running
its own event loop and stops it at the end (no thread outlives the batch), so it also runs from a
notebook whose kernel loop is already running.

- At most ``max_workers`` coroutines run at once (an ``asyncio.Semaphore``). A chunk of symbols (tiny
  tasks are grouped, as on threads) is one task on the loop that awaits its symbols one after another.
- A cancel of the batch's token cancels every running coroutine at its next ``await``: that symbol is
  CANCELLED; the chunk's later symbols and the chunks waiting for a slot never start (unprocessed).
  ``process_batch`` returns as soon as the cancelled coroutines have unwound (bounded by
  ``CANCEL_GRACE_SECONDS``; one that swallows the cancel is counted unprocessed and left on the loop,
  which abandons it ``LEFTOVER_GRACE_SECONDS`` later). Tasks a processor spawned and never awaited never
  hold the batch either: see :class:`~procengine_nb.backends._loop.LoopThread`.
- ``timeout=`` counts from the moment the symbol's own coroutine starts (never while it waits for a
  slot): past it the coroutine is cancelled and the symbol is an ERROR with a ``TimeoutError`` at once
  (a coroutine that swallows the cancel is left on the loop, never waited for).

Blocking (non-``await``) code inside a coroutine holds the whole loop, as in any asyncio program.
Objects bound to another loop (say an ``aiohttp.ClientSession`` made in a notebook cell) cannot be
used from this one: create them inside the coroutine, or per batch.

>>> import asyncio
>>> from procengine_nb import ProcessingEngine
>>> async def double(x):
...     await asyncio.sleep(0)
...     return 2 * x
>>> engine = ProcessingEngine(double, max_workers=4)
>>> engine.backend.name, sorted(r.value for r in engine.process_batch([1, 2, 3]))
('asyncio', [2, 4, 6])
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from procengine_nb._validation import check_int, check_seconds
from procengine_nb.backends._loop import LoopThread
from procengine_nb.backends.base import Backend, BatchExecutor, Chunk
from procengine_nb.backends.runner import run_chunk_async
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

__all__ = ["CANCEL_GRACE_SECONDS", "DEFAULT_ASYNC_WORKERS", "AsyncBackend", "is_async_callable"]

DEFAULT_ASYNC_WORKERS = 32
"""Coroutines at once when ``max_workers`` is not given (they wait on I/O, not on a core)."""

CANCEL_GRACE_SECONDS = 0.1
"""How long a cancel waits for the cancelled coroutines to unwind before the batch returns anyway."""


def is_async_callable(fn: object) -> bool:
    """True when calling ``fn`` makes a coroutine by construction: an ``async def`` function or method,
    a ``functools.partial`` of one, or an object whose ``__call__`` is ``async def``.

    A sync callable that merely returns an awaitable is not detected here; the engine notices it when
    it runs (see :mod:`procengine_nb.backends._loop`).

    >>> async def f(x): return x
    >>> is_async_callable(f), is_async_callable(functools.partial(f, 1)), is_async_callable(len)
    (True, True, False)
    """
    return inspect.iscoroutinefunction(_underlying(fn))


def is_async_generator_callable(fn: object) -> bool:
    """True for an ``async def`` with ``yield`` (or a partial of one): it returns no awaitable."""
    return inspect.isasyncgenfunction(_underlying(fn))


def _underlying(fn: object) -> object:
    """The function a call of ``fn`` runs: through partials, and to ``__call__`` for an instance."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, type):
        return fn
    call = inspect.getattr_static(type(fn), "__call__", None)
    return call if call is not None else fn


class _AsyncBatch(BatchExecutor):
    """One batch on its own loop thread. ``submit_chunk`` runs on the batch thread; everything whose name
    says *loop* runs on the loop thread, the only one that touches ``_tasks`` and the semaphore."""

    def __init__(self, max_workers: int, token: CancellationToken, timeout: float | None) -> None:
        self.worker_token = token
        self._timeout = timeout
        self._unresolved: set[Future[list[SymbolResult]]] = set()  # handed over, not finished
        self._unresolved_lock = threading.Lock()
        self._loop_thread = LoopThread("procengine-asyncio", on_exit=self._loop_ended)
        self._semaphore = asyncio.Semaphore(max_workers)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel_asked = False
        self._cancel_lock = threading.Lock()
        self._settled = threading.Event()  # set once a cancel has unwound every chunk task
        self._registration = token.register(self._ask_cancel)
        # a chunk is claimed by the loop when it gets a slot, or taken back (a pause) before: never both
        self._claim_lock = threading.Lock()
        self._taken_back: set[Future[list[SymbolResult]]] = set()

    # -- batch thread -----------------------------------------------------------------------------
    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        future: Future[list[SymbolResult]] = Future()
        with self._unresolved_lock:
            self._unresolved.add(future)
        future.add_done_callback(self._resolved)
        if not self._loop_thread.call_soon(self._loop_start, future, chunk):
            future.cancel()
            raise RuntimeError("the batch's event loop has ended (its thread could not go on)")
        return future

    def take_back(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """The chunks still waiting for a slot (none of their symbols started); each ends with no result
        when it gets one."""
        taken: list[Future[Any]] = []
        with self._claim_lock:
            for future in futures:
                if not getattr(future, "claimed", False) and not future.done():
                    self._taken_back.add(future)
                    taken.append(future)
        return taken

    def _claim(self, future: Future[Any]) -> bool:
        """On the loop, once the chunk has a slot: False if a pause took it back first."""
        with self._claim_lock:
            if future in self._taken_back:
                self._taken_back.discard(future)
                return False
            future.claimed = True  # type: ignore[attr-defined]
            return True

    def _resolved(self, future: Future[list[SymbolResult]]) -> None:
        with self._unresolved_lock:
            self._unresolved.discard(future)

    def _loop_ended(self) -> None:
        """The loop thread is ending: a chunk handed over and never finished (it swallowed every cancel
        until the end, or the loop ended some other way) fails rather than hangs."""
        with self._unresolved_lock:
            futures = list(self._unresolved)
        error = RuntimeError("the batch's event loop ended before this chunk finished")
        for future in futures:
            try:
                future.set_exception(error)
            except InvalidStateError:  # cancelled or finished meanwhile
                pass
        self._settled.set()

    def stop_running(self, futures: Iterable[Future[Any]]) -> None:
        """Drop the chunks the loop has not started, cancel the running coroutines (the token's own
        callback may not have run yet) and wait, at most ``CANCEL_GRACE_SECONDS``, until they have
        unwound, so the symbols they were on are reported CANCELLED rather than lost in flight."""
        for future in futures:
            future.cancel()
        self._ask_cancel()
        self._settled.wait(CANCEL_GRACE_SECONDS)

    def close(self, *, cancelled: bool) -> None:
        self._registration.unregister()
        self._loop_thread.stop(wait=not cancelled)

    def _ask_cancel(self) -> None:
        """On the token's cancel (any thread), once: have the loop cancel every chunk task."""
        with self._cancel_lock:
            if self._cancel_asked:
                return
            self._cancel_asked = True
        if not self._loop_thread.call_soon(self._loop_cancel):
            self._settled.set()

    # -- loop thread --------------------------------------------------------------------------------
    def _loop_start(self, future: Future[list[SymbolResult]], chunk: Chunk) -> None:
        if not future.set_running_or_notify_cancel():
            return
        if self._cancel_asked or self._loop_thread.stopping:
            future.set_result([])
            return
        task = asyncio.get_running_loop().create_task(self._loop_chunk(future, chunk))
        self._tasks.add(task)

    def _loop_cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        if not self._tasks:
            self._settled.set()

    async def _loop_chunk(self, future: Future[list[SymbolResult]], chunk: Chunk) -> None:
        results: list[SymbolResult] = []
        try:
            async with self._semaphore:
                if not self._claim(future):  # taken back at a pause while it waited: runs nothing
                    return
                await run_chunk_async(chunk.processor, chunk.symbols, self.worker_token, chunk.pass_token,
                                      self._timeout, chunk.on_start, chunk.on_symbol, results)
        except asyncio.CancelledError:  # cancelled while waiting for a slot: its symbols never started
            pass
        finally:
            # The chunk's done-callbacks (the batch's completion queue) run in set_result, before a
            # cancel can see this chunk settled; settled at once, not a loop turn later (a task's own
            # done-callbacks are only scheduled): the cancel returns that much sooner.
            future.set_result(results)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            if self._cancel_asked and not self._tasks:
                self._settled.set()


class AsyncBackend(Backend):
    """Awaits each symbol's coroutine on an event loop the batch owns, ``max_workers`` at once.

    Args:
        max_workers: coroutines at once (default ``DEFAULT_ASYNC_WORKERS``).
        timeout: seconds a symbol's coroutine may run, from its own start; ``ProcessingEngine(...,
            timeout=)`` sets it when the engine builds this backend.

    >>> AsyncBackend(8).max_workers
    8
    """

    name = "asyncio"
    shares_memory = True
    runs_coroutines = True
    times_symbols = True

    def __init__(self, max_workers: int | None = None, *, timeout: float | None = None) -> None:
        check_int(max_workers, "max_workers", minimum=1, allow_none=True)
        check_seconds(timeout, "timeout", strict=True, allow_none=True)
        self._max_workers = max_workers if max_workers is not None else DEFAULT_ASYNC_WORKERS
        self.timeout = timeout

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _AsyncBatch(self._max_workers, token, self.timeout)
