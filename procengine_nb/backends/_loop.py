"""An event loop a batch owns: a thread running its own asyncio loop, started for the batch and
stopped at its end (no thread outlives it), plus what sync workers use to await on it.

Two users:

- the asyncio backend (:mod:`procengine_nb.backends.asyncio`) runs every chunk of an async processor
  as a task on a :class:`LoopThread`;
- the threads backends hand it the awaitables a *sync* processor returns (a callable that returns a
  coroutine is only detected when it runs): the worker thread that got one waits for it on the batch's
  loop (:class:`Awaiter`), started at the first awaitable only, so a plain sync batch starts no loop.
  Workers find their batch's awaiter by the batch token they are given (``awaiter_for``), so the
  tasks handed to an executor stay exactly ``run_chunk(...)``.

Running on our own loop, never on the caller's, is what lets a batch run from a notebook whose
kernel loop is already running, and what lets ``process_batch`` block without deadlocking it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import Any

from procengine_nb._safe import describe, guarded, logger
from procengine_nb.cancellation import CancellationToken, ProcessingCancelledException

__all__ = ["Awaiter", "Escaped", "LoopThread", "awaiter_for", "cannot_await", "is_awaitable", "register_awaiter",
           "resolve", "unregister_awaiter"]

LEFTOVER_GRACE_SECONDS = 0.5
"""How long the end of a batch waits for the tasks still on its loop (a task a processor spawned and
never awaited, a coroutine that swallows the cancel) to unwind once cancelled; past it they are
abandoned: the loop is closed with them on it and its thread ends (a thread the loop cannot leave,
blocked in sync code, is a daemon and is no longer waited for)."""
_RECANCEL_SECONDS = 0.1  # a task that swallowed the cancel is cancelled again this often, within the grace
_CLEANUP_SECONDS = 0.25  # async generators' aclose() and the default executor's threads: at most this each
_JOIN_SECONDS = LEFTOVER_GRACE_SECONDS + 2 * _CLEANUP_SECONDS + 0.5  # stop(wait=True) waits at most this
_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)


def is_awaitable(value: object) -> bool:
    """True when ``value`` can be awaited (a coroutine, a future, anything with ``__await__``).

    Cheaper than ``inspect.isawaitable`` for the plain values a sync processor returns (one type lookup).

    >>> async def f(): pass
    >>> coro = f(); is_awaitable(coro), is_awaitable("x")
    (True, False)
    >>> coro.close()
    """
    kind = type(value)
    if kind in _NOT_AWAITABLE:
        return False
    if getattr(kind, "__await__", None) is not None:
        return True
    if len(_NOT_AWAITABLE) < 1024:  # plain value types seen so far (a missed lookup costs ~0.8 us a call)
        _NOT_AWAITABLE.add(kind)
    return False


_NOT_AWAITABLE: set[type] = {str, int, float, bool, bytes, type(None), tuple, list, dict}


class Escaped(Exception):
    """Carries a ``SystemExit`` or ``KeyboardInterrupt`` an awaitable raised across the loop.

    asyncio re-raises those two out of ``run_forever`` (a task's as well as a callback's), which would
    end the loop under every other coroutine on it. Wrapped in this, the task ends with an ordinary
    exception; the side that waits for it re-raises the original (``exception``), so it is that
    symbol's ERROR as from a sync processor.
    """

    def __init__(self, exception: BaseException) -> None:
        super().__init__(type(exception).__name__)
        self.exception = exception


async def resolve(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` (and what it resolves to, while that is awaitable too); a ``SystemExit`` or
    ``KeyboardInterrupt`` it raises comes out wrapped in :class:`Escaped` (see there)."""
    value: Any = awaitable
    try:
        while is_awaitable(value):
            value = await value
    except (SystemExit, KeyboardInterrupt) as exc:
        raise Escaped(exc) from None
    return value


class LoopThread:
    """A daemon thread running a fresh asyncio event loop until :meth:`stop`.

    Nothing else ends it: a processor's ``loop.stop()`` (the loop is started again), a ``SystemExit`` or
    ``KeyboardInterrupt`` out of a callback or a task left on it (asyncio re-raises those two out of
    ``run_forever``) cost a logged line each and the loop goes on.
    ``stop()`` cancels every task still on the loop and waits for them, re-cancelling a task that
    swallows the cancel, for at most ``LEFTOVER_GRACE_SECONDS`` (then they are abandoned); shuts down
    the loop's async generators and default executor (``asyncio.to_thread`` threads), each bounded
    too; closes the loop, and the thread ends.

    >>> loop = LoopThread("doc-loop")
    >>> async def double(x): return 2 * x
    >>> loop.submit(double(21)).result(timeout=5)
    42
    >>> loop.stop(wait=True); loop.is_alive()
    False
    """

    def __init__(self, name: str = "procengine-loop", on_exit: Callable[[], Any] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self._lock = threading.Lock()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_exception_handler)
        try:
            self._run_until_stopped(loop)
            self._refuse_new_work()
            deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
            while True:
                pending = asyncio.all_tasks(loop)
                if not pending:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _abandon(pending)
                    break
                for task in pending:
                    task.cancel()
                _run_guarded(loop, asyncio.wait(pending, timeout=min(_RECANCEL_SECONDS, remaining)))
            _run_guarded(loop, _bounded(loop.shutdown_asyncgens(), _CLEANUP_SECONDS))
            _shutdown_default_executor(loop, _CLEANUP_SECONDS)
        except BaseException:  # our own clean-up failed: close the loop as it is
            _log.debug("the batch's event loop could not be cleaned up; closed as it is", exc_info=True)
        finally:
            self._refuse_new_work()
            asyncio.set_event_loop(None)
            try:
                loop.close()
            except BaseException:  # a loop closed by a processor, or one still marked running
                _log.debug("the batch's event loop could not be closed", exc_info=True)
            if self._on_exit is not None:  # e.g. fail what was handed over and never ran
                guarded(self._on_exit, on_error=lambda exc: _log.error("loop exit hook %r raised %s",
                                                                       self._on_exit, describe(exc, 500)))

    def _run_until_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the loop until :meth:`stop`. What would end it earlier costs a logged line and the loop
        goes on: a ``SystemExit``/``KeyboardInterrupt`` out of a callback or a task a processor left on
        it (asyncio re-raises those two out of ``run_forever``), or a processor's own ``loop.stop()``."""
        restarts = 0
        while not loop.is_closed():
            try:
                loop.run_forever()
            except BaseException as exc:
                _log_escape(exc)
                del exc
                continue
            if self._stopping:
                return
            restarts += 1
            _log.log(logging.WARNING if restarts == 1 else logging.DEBUG,  # one line, not one per stop()
                     "a processor stopped the batch's event loop (loop.stop()); it was started again and the "
                     "batch goes on")

    def _refuse_new_work(self) -> None:
        with self._lock:
            self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once the loop stops taking work (``stop()`` was called, or the loop ended)."""
        return self._stopping

    def call_soon(self, callback: Any, *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop (from any thread); False once the loop is stopping."""
        with self._lock:
            if self._stopping:
                return False
            self.loop.call_soon_threadsafe(callback, *args)
            return True

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run ``coroutine`` as a task on the loop; cancelling the returned future cancels the task."""
        with self._lock:
            if self._stopping:
                coroutine.close()
                future: Future[Any] = Future()
                future.cancel()
                return future
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self, *, wait: bool) -> None:
        """Stop the loop (cancelling what still runs on it); when ``wait``, join the thread, for at most
        about a second (what the loop cannot unwind by then is abandoned with it, a daemon). Idempotent."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self.loop.call_soon_threadsafe(self.loop.stop)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_SECONDS)
            if self._thread.is_alive():
                _log.warning("%s: the batch's event loop did not end within %.1fs (a processor blocks it, or "
                             "left a task that never lets go); abandoned (a daemon thread)",
                             self._thread.name, _JOIN_SECONDS)

    def is_alive(self) -> bool:
        """True while the loop's thread runs."""
        return self._thread.is_alive()


def _log_escape(exc: BaseException) -> None:
    try:
        text = describe(exc, 500)
    except BaseException:  # describe() lets a KeyboardInterrupt out of a hostile __str__ through
        text = type(exc).__name__
    _log.error("a callback or a task on the batch's event loop raised %s; ignored, the loop goes on", text)


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's handler, less the second report of a ``SystemExit``/``KeyboardInterrupt`` a task raised:
    it escaped ``run_forever`` and was logged then (:meth:`LoopThread._run_until_stopped`)."""
    if isinstance(context.get("exception"), (SystemExit, KeyboardInterrupt)):
        return
    loop.default_exception_handler(context)


def _run_guarded(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any]) -> None:
    """``loop.run_until_complete`` for the clean-up steps: a leftover task's ``SystemExit`` or a
    ``loop.stop()`` ends only this step (logged; the caller's deadline bounds the clean-up)."""
    future = asyncio.ensure_future(awaitable, loop=loop)
    try:
        loop.run_until_complete(future)
    except BaseException as exc:
        if isinstance(exc, RuntimeError) and not future.done():  # stopped before it finished
            _log.debug("a clean-up step of the batch's loop was stopped by a processor")
        else:
            _log_escape(exc)
        del exc
        future.cancel()


def _abandon(tasks: set[asyncio.Task[Any]]) -> None:
    """Give up on tasks that swallowed every cancel for the grace: the loop is closed with them on it
    (one warning here instead of asyncio's "Task was destroyed but it is pending!" for each)."""
    for task in tasks:
        try:
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - another Task implementation
            pass
    names = ", ".join(sorted(task.get_name() for task in tasks)[:5])
    _log.warning("%d task(s) left on the batch's event loop ignored cancellation for %.1fs (%s); abandoned",
                 len(tasks), LEFTOVER_GRACE_SECONDS, names)


async def _bounded(awaitable: Awaitable[Any], seconds: float) -> None:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except (TimeoutError, asyncio.CancelledError):
        _log.debug("a clean-up step of the batch's loop did not finish within %.2fs; skipped", seconds)


def _shutdown_default_executor(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Shut down the loop's default executor (``asyncio.to_thread``, ``run_in_executor(None, ...)``)
    waiting at most ``seconds`` for its threads: a thread still running a call (its awaiting task was
    cancelled, the call itself cannot be) is left to finish on its own."""
    executor = getattr(loop, "_default_executor", None)
    if executor is None:
        return
    loop._executor_shutdown_called = True  # type: ignore[attr-defined]  # as loop.shutdown_default_executor
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + seconds
    for thread in list(getattr(executor, "_threads", ())):
        thread.join(max(0.0, deadline - time.monotonic()))


class Awaiter:
    """What a sync worker thread uses to await an awaitable its processor returned: the batch's loop.

    The loop thread starts at the first awaitable (a sync batch that never returns one starts none).
    The awaitable runs in a copy of the context captured when the awaiter was made (the batch thread's,
    which under ``run()`` is the calling cell's), so its prints go where the processor's do. The worker
    thread waits for it (so at most ``max_workers`` run at once, as for sync work); a cancel of the
    batch's token cancels it at its next ``await`` and the symbol ends CANCELLED.
    """

    def __init__(self, token: CancellationToken | None, name: str = "procengine-loop") -> None:
        self._token = token
        self._name = name
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self._closed = False
        self._waiting: set[Future[Any]] = set()  # the futures worker threads wait on now

    def wait(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` on the batch's loop and return its value (raises what it raises, a
        ``SystemExit`` or ``KeyboardInterrupt`` included: on this worker's thread, never on the loop's)."""
        loop = self._get_loop()
        if loop is None:
            _close(awaitable)
            raise ProcessingCancelledException("the batch ended before this awaitable could run")
        if loop.stopping:
            _close(awaitable)
            raise RuntimeError(_LOOP_ENDED)
        future = self._context.copy().run(loop.submit, resolve(awaitable))
        with self._lock:
            self._waiting.add(future)
        if not loop.is_alive():  # it ended between the two: its exit hook may have missed this one
            _fail(future)
        token = self._token
        registration = token.register(future.cancel) if token is not None else None
        escaped: BaseException | None = None
        try:
            return future.result()
        except Escaped as carrier:
            escaped = carrier.exception
        except CancelledError:
            reason = token.reason if token is not None else None
            raise ProcessingCancelledException(
                "processing was cancelled" + (f": {reason}" if reason else ""), reason=reason,
            ) from None
        finally:
            with self._lock:
                self._waiting.discard(future)
            if registration is not None:
                registration.unregister()
        raise escaped  # outside the except clause: no "during handling of Escaped" context on it

    def _get_loop(self) -> LoopThread | None:
        with self._lock:
            if self._closed:
                return None
            if self._loop is None:
                self._loop = LoopThread(self._name, on_exit=self._loop_ended)
            return self._loop

    def _loop_ended(self) -> None:
        """The loop thread ends: a worker still waiting for its awaitable (abandoned on the loop, or the
        loop ended some other way) gets an ERROR at once rather than waiting forever."""
        with self._lock:
            waiting = list(self._waiting)
        for future in waiting:
            _fail(future)

    def close(self, *, wait: bool) -> None:
        """End of the batch: stop the loop if one was started (cancelling what still runs on it)."""
        with self._lock:
            self._closed = True
            loop = self._loop
        if loop is not None:
            loop.stop(wait=wait)


_LOOP_ENDED = "the batch's event loop has ended before this awaitable finished"


def _fail(future: Future[Any]) -> None:
    try:
        future.set_exception(RuntimeError(_LOOP_ENDED))
    except InvalidStateError:  # finished or cancelled meanwhile
        pass


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)  # a coroutine never awaited: no RuntimeWarning
    if callable(close):
        try:
            close()
        except Exception:
            pass


_awaiters: weakref.WeakKeyDictionary[CancellationToken, Awaiter] = weakref.WeakKeyDictionary()
_awaiters_lock = threading.Lock()


def register_awaiter(token: CancellationToken, awaiter: Awaiter) -> None:
    """Make ``awaiter`` the one for the batch whose token (``worker_token``) is ``token``."""
    with _awaiters_lock:
        _awaiters[token] = awaiter


def unregister_awaiter(token: CancellationToken) -> None:
    """The batch of ``token`` ended: its awaitables can no longer be awaited."""
    with _awaiters_lock:
        _awaiters.pop(token, None)


def awaiter_for(token: object) -> Awaiter | None:
    """The awaiter of the batch whose worker token is ``token`` (None where there is none: a worker
    process, a Dask worker, an executor that does not share memory)."""
    if not isinstance(token, CancellationToken):
        return None
    with _awaiters_lock:
        return _awaiters.get(token)


def cannot_await(value: object) -> TypeError:
    """The error for an awaitable returned where no loop can await it (closing it first)."""
    _close(value)
    return TypeError(
        f"the processor returned an awaitable ({type(value).__name__}), which this worker cannot await "
        "(processes, Dask and executor= workers have no event loop): use backend='asyncio' or the "
        "default threads backend"
    )
