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

from procengine_nb import _registry
from procengine_nb._safe import describe, guarded, logger, safe_repr, safe_str
from procengine_nb._tracebacks import format_text
from procengine_nb._validation import check_callable, check_int, check_seconds, check_type
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, ProcessingJob
from procengine_nb.observe import JobView
from procengine_nb.progress import ProcessingProgress

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb._batch import BatchRun
    from procengine_nb.engine import _Origin

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
    - ``pause()`` / ``unpause()``: no new symbol starts while paused (those running finish); ``stalled()``
      names the symbols running far longer than the rest; after the end, ``retry()`` / ``resume()``
      start the follow-up job (``successor``). Every started job is listed by ``procengine_nb.jobs()``.

    The handle runs the batch's thread and waits for it; it knows nothing of screens (``show()`` asks the
    notebook side to display the job).
    """

    def __init__(self, batch: BatchRun, origin: _Origin | None = None) -> None:
        self._batch = batch
        self._origin = origin
        self._future: Future[BatchResult] = Future()
        self._thread: threading.Thread | None = None
        self._partial: BatchResult | None = None
        self._follow_lock = threading.Lock()
        self.panel: Any = None
        """The view ``run()`` made for this job (a ProgressPanel), else None."""
        self.successor: JobHandle | None = None
        """The follow-up job started from this one by :meth:`retry` or :meth:`resume` (the latest), else None."""

    @classmethod
    def _start(cls, batch: BatchRun, origin: _Origin | None = None) -> JobHandle:
        handle = cls(batch, origin)
        _registry.register(handle)  # listed by jobs() from now on; moved to the ended ones when done
        name = f"procengine-job-{batch.job.job_id}"
        # The job thread runs in a copy of the starter's context (as asyncio.to_thread does): under
        # ipykernel >= 7 the output parent is a ContextVar, so prints and logs from the job thread (the
        # progress callback, views) go to the cell that started the job, not to whichever cell runs now.
        context = contextvars.copy_context()
        handle._thread = threading.Thread(target=context.run, args=(handle._run,), name=name, daemon=True)
        try:
            handle._thread.start()
        except BaseException:  # e.g. "can't start new thread": no job to list
            _registry.forget(handle)
            raise
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
        self._batch.release()  # an ended job keeps its result, not the engine's backend
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

    def stalled(self) -> list[tuple[Any, float]]:
        """``[(symbol, seconds_running), ...]`` for the symbols running longer than the engine's
        ``stall_after`` (by default five times the median duration of the completed symbols, at least
        10 s), longest first; ``[]`` once the job is done.

        Known on threads (the engine's pool, a ``ThreadPoolExecutor``: each chunk reports its start; a
        chunk of several tiny symbols names each of them with the chunk's running time), and on asyncio,
        Dask (the workers' reports) and processes (read from the chunk's started file, to within ~5 ms)
        with each symbol's own start.

        >>> import threading
        >>> from procengine_nb import ProcessingEngine
        >>> release = threading.Event()
        >>> handle = ProcessingEngine(lambda s: release.wait(10), max_workers=1, stall_after=0.01).start(["slow"])
        >>> release.wait(0.5)   # the symbol runs for half a second...
        False
        >>> [(symbol, seconds > 0.01) for symbol, seconds in handle.stalled()]
        [('slow', True)]
        >>> release.set(); handle.result(timeout=10).summary()
        '1 of 1 processed: 1 ok, 0 failed'
        """
        if self._future.done():
            return []
        return self._batch.stalled()

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

    def pause(self) -> bool:
        """Stop handing out symbols: the ones running finish and are reported, no new one starts until
        :meth:`unpause`. Returns True if this call paused the job (False: already paused, or done).

        Works on every backend: the batch withholds its submissions, and on threads, asyncio and
        processes it takes back the tasks still waiting for a worker (on Dask those already handed over,
        at most two per worker, still run). The paused time counts in the elapsed time but not in the rate
        or the ETA; ``progress.paused`` says it. A Stop (``cancel()``) while paused is an ordinary Stop
        and returns at once.

        >>> import threading
        >>> from procengine_nb import ProcessingEngine
        >>> gate = threading.Event()
        >>> handle = ProcessingEngine(lambda s: gate.wait(10), max_workers=1).start(["a", "b", "c"])
        >>> handle.pause(), handle.paused
        (True, True)
        >>> gate.set(); handle.unpause(); len(handle.result(timeout=10))
        True
        3
        """
        if self._future.done():
            return False
        return self._batch.pause(True)

    def unpause(self) -> bool:
        """Continue a paused job with the same batch; True if this call ended a pause."""
        if self._future.done():
            return False
        return self._batch.pause(False)

    @property
    def paused(self) -> bool:
        """True while the job is paused (False once it is done)."""
        return self._batch.paused and not self._future.done()

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

    def show(self) -> None:
        """Display this job's live panel in the current cell (under a Jupyter kernel; the panel ``run()``
        made, or a new one); elsewhere print the job's progress line once. Works for an ended job too
        (its final state)."""
        from procengine_nb import one_liner  # the notebook side; imported on first use

        one_liner.show_job(self)

    # -- follow-ups -------------------------------------------------------------------------------
    def retry(self, *, include_cancelled: bool = True) -> JobHandle:
        """Start ``engine.retry(result)`` as a new job (the symbols that failed, and by default those that
        stopped cooperatively) and return its handle, also set as :attr:`successor` and listed by
        ``jobs()``. The job must be done (a RuntimeError otherwise).

        It runs on the engine that ran this job if that engine is still alive and open; otherwise (after
        ``run()``, whose engine closes at the end) on a new engine with the same processor and settings,
        closed at the follow-up's end. The follow-up has its own token and none of this job's progress
        callback, views or ``store=`` (a view, such as the panel, attaches itself to it).

        >>> from procengine_nb import ProcessingEngine
        >>> handle = ProcessingEngine(lambda n: 1 / n, max_workers=1).start([0, 1])
        >>> _ = handle.result(timeout=10)
        >>> again = handle.retry()
        >>> handle.successor is again, [r.symbol for r in again.result(timeout=10)]
        (True, [0])
        """
        check_type(include_cancelled, bool, "include_cancelled")
        return self._follow_up(lambda engine, result: engine._retry_job(result, include_cancelled))

    def resume(self) -> JobHandle:
        """Start ``engine.resume(result)`` as a new job (the symbols a Stop left unprocessed, then the
        rest of a lazy input) and return its handle, also set as :attr:`successor`; as :meth:`retry`."""
        return self._follow_up(lambda engine, result: engine._resume_job(result))

    def _follow_up(self, make_job: Callable[[Any, BatchResult], ProcessingJob]) -> JobHandle:
        if not self._future.done():
            raise RuntimeError("the job is still running: wait for it (handle.result()) or stop it "
                               "(handle.cancel()) before starting a follow-up")
        result = self.partial_result
        if result is None:
            raise RuntimeError("the job crashed without a result: there is nothing to retry or resume")
        if self._origin is None:
            raise RuntimeError("this job was not started by a ProcessingEngine: use engine.retry(result) / "
                               "engine.resume(result)")
        with self._follow_lock:
            engine, owned = self._origin.engine_for_follow_up()
            try:
                job = make_job(engine, result)
                handle = engine.start(job)
            except BaseException:
                if owned:
                    engine.close()
                raise
            if owned:
                from procengine_nb.engine import CloseAtEnd

                handle.attach(CloseAtEnd(engine))
                if handle._origin is not None:
                    handle._origin.reuse = False  # its follow-ups make their own engine too
            self.successor = handle
        return handle

    def close(self) -> None:
        """Close the views that show this job (each view's ``close()``: the panel releases its widget
        models and its output disappears). The job itself goes on; ``cancel()`` stops it."""
        self._batch.publisher.close_views()

    @property
    def state(self) -> str:
        """One word: ``"running"``, ``"paused"``, ``"stopping"``, ``"done"``, ``"cancelled"`` or
        ``"failed"`` (the engine crashed)."""
        if not self._future.done():
            return "stopping" if self.stopping else ("paused" if self._batch.paused else "running")
        if self._future.exception() is not None and self._partial is None:
            return "failed"
        result = self.partial_result
        return "cancelled" if result is not None and result.cancelled else "done"

    def line(self) -> str:
        """The job as one plain line (name, state, counts), e.g. ``prices  running  37/100  2 failed``."""
        p = self.progress
        name = "".join(c if c.isprintable() else " " for c in safe_str(self.job.display_name, 60))
        total = str(p.total_symbols) if p.total_known else f"{p.total_symbols}+"
        text = f"{name}  {self.state}  {p.completed_symbols}/{total}"
        if p.errors_count:
            text += f"  {p.errors_count} failed"
        return text

    def __repr__(self) -> str:
        p = self.progress
        state = self.state
        name = safe_str(self.job.display_name)[:80]
        return f"<JobHandle {name!r} {state} {p.completed_symbols}/{p.total_symbols}>"


def _wait_done(future: Future[Any], timeout: float | None) -> bool:
    """Wait for ``future`` without raising its exception; True when it is done."""
    try:
        future.exception(timeout)
    except FutureTimeout:
        return False
    return True
