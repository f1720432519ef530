"""A batch running in the background: wait for it, watch it, stop it.

Completion is tracked with the handle's own ``concurrent.futures.Future`` — never ``Thread.is_alive()``,
which CPython 3.11 can get wrong after a ``KeyboardInterrupt`` inside ``join()``.

>>> from procengine_nb import ProcessingEngine
>>> handle = ProcessingEngine(str.upper, max_workers=2).start(["a", "b", "c"])
>>> result = handle.result(timeout=10)
>>> handle.done(), len(result)
(True, 3)
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from procengine_nb._safe import describe, guarded, logger, safe_repr, safe_str
from procengine_nb._tracebacks import format_text
from procengine_nb._validation import check_callable, check_int, check_seconds
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, ProcessingJob
from procengine_nb.observe import JobView
from procengine_nb.progress import ProcessingProgress

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb._batch import BatchRun

__all__ = ["JobHandle"]

_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)
_POLL_SECONDS = 0.05
_INTERRUPT_REASON = "interrupted while waiting for the result"


class JobHandle:
    """A batch started by ``ProcessingEngine.start`` (or ``run``): its token, progress and result.

    - ``cancel()`` asks the batch to stop; ``result()`` then returns the partial :class:`BatchResult`.
    - ``result(timeout=None)`` blocks. A ``KeyboardInterrupt`` while it waits (a kernel interrupt)
      cancels the job, waits for the partial result (briefly: cancel never waits for running tasks),
      then re-raises, so nothing keeps running behind your back.
    - ``await handle`` waits without blocking the event loop (in JupyterLab on ipykernel >= 7.4 the
      Stop button keeps working meanwhile); cancelling the awaiting task cancels the job.
    - ``future`` is the job's ``concurrent.futures.Future``: ``concurrent.futures.wait([handle.future])``
      and ``asyncio.wrap_future(handle.future)`` accept it (cancelling it does not stop the job: use
      ``cancel()``).
    - Views attached with ``attach(view)`` (or ``start(..., views=[...])``) are listeners of the batch;
      the final state is applied before ``result()`` returns.

    The handle runs the batch's thread and waits for it; it knows nothing of screens.
    """

    def __init__(self, batch: BatchRun) -> None:
        self._batch = batch
        self._future: Future[BatchResult] = Future()
        self._thread: threading.Thread | None = None
        self._partial: BatchResult | None = None
        self.panel: Any = None
        """The view ``run()`` made for this job (a ProgressPanel), else None."""

    @classmethod
    def _start(cls, batch: BatchRun) -> JobHandle:
        handle = cls(batch)
        name = f"procengine-job-{batch.job.job_id}"
        # The job thread runs in a copy of the starter's context (as asyncio.to_thread does): under
        # ipykernel >= 7 the output parent is a ContextVar, so prints and logs from the job thread (the
        # progress callback, views) go to the cell that started the job, not to whichever cell runs now.
        context = contextvars.copy_context()
        handle._thread = threading.Thread(target=context.run, args=(handle._run,), name=name, daemon=True)
        handle._thread.start()
        return handle

    def _run(self) -> None:
        # The batch publishes its end to the views before it returns or raises, so the views show the
        # final state before the future (and so ``result()``) completes. The future is resolved
        # whatever happens on this thread (a view's Ctrl-C at the very end, a log that cannot be
        # written): nobody waits forever.
        outcome: BaseException | None = None
        result: BatchResult | None = None
        try:
            result = self._batch.run()
        except BaseException as exc:  # an interrupt (partial result attached) or an engine failure
            outcome = exc
            self._partial = getattr(exc, "partial_result", None)
            if self._partial is None:
                _log.error("job %s failed\n%s", safe_str(self._batch.job.job_id, 80),
                           format_text(exc).rstrip("\n"))
                self._batch.publisher.finish(None, exc)  # no-op when the batch already published it
        finally:
            self._resolve(result, outcome)

    def _resolve(self, result: BatchResult | None, error: BaseException | None) -> None:
        """Resolve the job's future once: with ``result``, else ``error``, else (something escaped on
        the way) the partial result the batch settled, else an error saying the job thread failed."""
        if self._future.done():
            return
        if result is None and self._partial is None:  # whatever ended the thread, the batch settled this
            self._partial = self._batch.partial
        if result is None and error is None:
            partial = self._batch.partial
            if partial is not None:
                result = partial
            else:
                error = RuntimeError(f"job {safe_str(self.job.job_id, 80)}: its thread failed before the "
                                     "batch settled its result")
        try:
            if result is not None:
                self._future.set_result(result)
            else:
                self._future.set_exception(error)  # type: ignore[arg-type]
        except InvalidStateError:  # pragma: no cover - resolved meanwhile
            pass

    # -- what the job is --------------------------------------------------------------------
    @property
    def job(self) -> ProcessingJob:
        """The job being processed."""
        return self._batch.job

    @property
    def token(self) -> CancellationToken:
        """The cancellation token the job watches (the one given to ``start``, or a new one)."""
        return self._batch.user_token

    @property
    def progress(self) -> ProcessingProgress:
        """The latest progress snapshot."""
        return self._batch.progress

    def running_symbols(self, limit: int = 8) -> list[Any]:
        """Up to ``limit`` symbols being processed right now."""
        check_int(limit, "limit", minimum=0)
        return self._batch.running_symbols(limit)

    @property
    def future(self) -> Future[BatchResult]:
        """The job's ``concurrent.futures.Future`` (its result is the :class:`BatchResult`)."""
        return self._future

    @property
    def partial_result(self) -> BatchResult | None:
        """The :class:`BatchResult` so far once the job ended: the result, or, when an interrupt escaped the
        batch (a ``KeyboardInterrupt`` or ``SystemExit`` raised in a callback) or the engine failed, the
        partial result the batch settled. None while running, and after a failure before the batch
        settled anything (a bad ``store=``, say)."""
        if not self._future.done():
            return None
        if self._future.exception() is None:
            return self._future.result()
        return self._partial

    @property
    def stopping(self) -> bool:
        """True once a cancel was asked for and the job has not returned yet."""
        return self._batch.token.is_cancelled and not self._future.done()

    @property
    def cancel_reason(self) -> str | None:
        """Why the job was (or is being) cancelled: the user, a deadline, the error budget..."""
        return self._batch.token.reason

    # -- control ----------------------------------------------------------------------------
    def cancel(self, reason: str | None = "cancelled by the user") -> bool:
        """Ask the job to stop (cancels its token); True if this call cancelled it."""
        return self.token.cancel(reason)

    def done(self) -> bool:
        """True once the job has returned (finished, cancelled or failed) and views show the end."""
        return self._future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done or ``timeout`` passes; return ``done()``. Never raises the
        job's error."""
        try:
            self._wait(timeout)
        except FutureTimeout:
            return False
        self._batch.publisher.waited()
        return True

    def result(self, timeout: float | None = None) -> BatchResult:
        """Block until the job ends and return its :class:`BatchResult` (partial if cancelled).

        Raises ``TimeoutError`` when ``timeout`` passes first (the job keeps running), and re-raises
        what crashed the engine, if anything did. A ``KeyboardInterrupt`` while waiting cancels the job,
        waits for it to return, and is re-raised.
        """
        self._wait(timeout)
        self._batch.publisher.waited()
        return self._future.result()

    def _wait(self, timeout: float | None) -> None:
        check_seconds(timeout, "timeout", allow_none=True)
        if threading.current_thread() is self._thread and not self._future.done():
            # a progress callback or a view (they run on the job's thread) waiting for its own job
            raise RuntimeError("JobHandle.result()/wait() was called on the job's own thread (from a progress "
                               "callback or a view): it would wait forever for itself; use handle.progress "
                               "there, or add_done_callback()")
        try:
            # Short waits keep the main thread responsive to signals (KeyboardInterrupt).
            if timeout is None:
                while not self._future.done():
                    _wait_done(self._future, _POLL_SECONDS)
            else:
                if not _wait_done(self._future, timeout):
                    raise FutureTimeout(f"job {self.job.job_id} still running after {timeout:g}s")
        except KeyboardInterrupt:
            self._cancel_and_settle()
            raise

    def _cancel_and_settle(self) -> None:
        """Cancel the job and wait (uninterrupted) until its thread has published the outcome."""
        self.cancel(_INTERRUPT_REASON)
        while not self._future.done():
            try:
                _wait_done(self._future, None)
            except KeyboardInterrupt:  # a second interrupt: keep settling, cancel is already on its way
                continue

    def __await__(self) -> Generator[Any, None, BatchResult]:
        return self._await().__await__()

    async def _await(self) -> BatchResult:
        # Not asyncio.wrap_future: cancelling the awaiting task would cancel the handle's own future.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake(_: object) -> None:
            try:
                loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))
            except RuntimeError:  # the loop is closed: nobody awaits any more
                pass

        self._future.add_done_callback(wake)
        try:
            while not waiter.done():
                # Wake up now and then: ipykernel 7.4 turns an interrupt of an async cell into a cancel
                # set from another thread without waking this loop, so a loop asleep on one future
                # would only see the interrupt when the job ends (measured: never, for a long job).
                await asyncio.wait((waiter,), timeout=_POLL_SECONDS)
        except asyncio.CancelledError:
            self._cancel_and_settle()
            raise
        self._batch.publisher.waited()
        return self._future.result()

    def add_done_callback(self, fn: Callable[[JobHandle], Any]) -> None:
        """Call ``fn(handle)`` when the job is done (at once if it already is), on the job's thread."""
        check_callable(fn, "fn")

        def call(_future: Future[BatchResult]) -> None:
            # through the guard: whatever fn raises is logged, the other done-callbacks still run
            guarded(fn, self, on_error=lambda exc: _log.error(
                "done callback %s raised %s\n%s", safe_repr(fn, 80), describe(exc, 500), format_text(exc).rstrip("\n")))

        self._future.add_done_callback(call)

    # -- views ------------------------------------------------------------------------------
    def attach(self, view: JobView) -> None:
        """Make ``view`` a listener of the batch from now on (see :class:`~procengine_nb.observe.JobView`);
        it gets the latest snapshot at once, and a view attached after the end gets the end at once."""
        self._batch.publisher.add(view, latest=self._batch.progress)

    def close(self) -> None:
        """Close the views that show this job (each view's ``close()``: the panel releases its widget
        models and its output disappears). The job itself goes on; ``cancel()`` stops it."""
        self._batch.publisher.close_views()

    def __repr__(self) -> str:
        p = self.progress
        state = "done" if self.done() else ("stopping" if self.stopping else "running")
        name = safe_str(self.job.display_name)[:80]
        return f"<JobHandle {name!r} {state} {p.completed_symbols}/{p.total_symbols}>"


def _wait_done(future: Future[Any], timeout: float | None) -> bool:
    """Wait for ``future`` without raising its exception; True when it is done."""
    try:
        future.exception(timeout)
    except FutureTimeout:
        return False
    return True
