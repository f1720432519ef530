"""One run of one batch: the loop that keeps the window full and takes what comes back, read as its parts.

The monitor thread (the one that calls :meth:`BatchRun.run`) is the only writer of the results, the
tracker and the window. Workers report through a ``SimpleQueue`` fed by each future's done-callback;
a cancel, a pause and a timed task's start put a wake-up marker in the same queue, so the loop reacts at
once: it blocks on that queue, bounded only by the next deadline or retry due time when there is one.
Nothing here iterates ``as_completed``/``wait`` over futures, so a shut-down executor cannot hang it
(CPython gh-87893 / gh-109934).

The parts: :class:`~.window.Window` (the tasks in flight, each a :class:`~.task.Task`), the input
(:class:`~.source.SizedSource` or :class:`~.source.LazySource`), :class:`~.retries.RetryQueue`,
:class:`~.timeouts.TimeoutWatch`, :class:`~.reruns.Reruns` (``store=``), :class:`~.pause.Pause`,
:class:`~.stalls.StallWatch`, and :class:`~.outcomes.Outcomes`, the one way a final outcome is recorded.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Any

from procengine_nb._chunking import ChunkSizer
from procengine_nb._safe import describe, logger, safe_str
from procengine_nb.backends.base import BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, ProcessingJob
from procengine_nb.observe import Publisher
from procengine_nb.progress import ProcessingProgress, ProgressTracker
from procengine_nb.store import StoreSession

from .outcomes import Outcomes, task_results
from .pause import Pause
from .reruns import Reruns
from .retries import RetryQueue
from .settings import BatchSettings
from .source import LazySource, SizedSource
from .stalls import StallWatch
from .task import Hooks, Task
from .timeouts import TimeoutWatch
from .window import WAKE, Window

__all__ = ["BatchRun"]

_log = logger("procengine_nb.engine")  # never raises (see procengine_nb._safe.GuardedLogger)
_MAX_WAIT = 0.1  # longest real wait on a deadline computed from the (injectable) clock: a fake clock works
_NEW, _RETRY, _BACK = 0, 1, 2  # where a task handed out comes from: the input, the retry queue, a pause


class BatchRun:
    """Runs one :class:`ProcessingJob` to its :class:`BatchResult`. Use once.

    Each chunk in flight is a :class:`Task` in the :class:`Window`, keyed by the future
    ``BatchExecutor.submit_chunk`` returned. Symbols waiting to retry sit in the :class:`RetryQueue`;
    they hold no worker; chunks a pause took back wait in ``window.requeued`` and go out first when the
    batch continues.
    """

    def __init__(self, settings: BatchSettings, job: ProcessingJob,
                 publisher: Publisher, token: CancellationToken, store: StoreSession | None = None) -> None:
        self.settings = settings
        self.job = job
        self.publisher = publisher
        """The batch's one fan-out to its listeners (the user's callback, the handle's views)."""
        self.user_token = token
        # The batch's own token: cancelled by the user's token, the error budget or the engine itself,
        # without ever cancelling the caller's token on the caller's behalf.
        self.token = token = CancellationToken.linked(token)
        if job.lazy:
            hint = job.total
            self.tracker = ProgressTracker(hint if hint is not None else 0, clock=settings.clock,
                                           smoothing=settings.eta_smoothing, total_known=hint is not None)
            self._source: SizedSource | LazySource = LazySource(
                job.symbols, hint, self.tracker, token, job.job_id)  # type: ignore[arg-type]
        else:
            self.tracker = ProgressTracker(len(job.symbols), clock=settings.clock,  # type: ignore[arg-type]
                                           smoothing=settings.eta_smoothing)
            self._source = SizedSource(job.symbols)  # type: ignore[arg-type]
        tracker = self.tracker
        # sized on the batch's thread once the backend is open: a backend may learn its size only then (a
        # Dask address is connected there, never on the caller's thread)
        self._sizer: ChunkSizer | None = None
        self.window = Window(0, tracker)
        self._results = BatchResult(job=job)
        self._interrupted_result: BatchResult | None = None
        self._stalls = StallWatch(settings.stall_after)
        self._outcomes = Outcomes(self._results, tracker, publisher, token, store, settings.max_errors,
                                  self._stalls.sample)
        self._retries = RetryQueue(settings.retries, settings.retry_on, settings.backoff, settings.clock,
                                   tracker, publisher, token, job.job_id)
        self._reruns = None if store is None else Reruns(store, self._outcomes, token, job.job_id)
        """The batch's link to its ``store=`` for reuse (its writer is the outcomes' ``store``), or None."""
        self._pause = Pause()

    # -- read from other threads ----------------------------------------------------------------
    @property
    def progress(self) -> ProcessingProgress:
        """The latest snapshot (safe from any thread)."""
        return self.tracker.snapshot

    @property
    def partial(self) -> BatchResult | None:
        """The result as the end of the loop settled it (however the loop ended), else None."""
        return self._interrupted_result

    def running_symbols(self, limit: int = 8) -> list[Any]:
        """Up to ``limit`` symbols handed to workers and not completed yet (safe from any thread); on a
        backend whose workers report their starts (``reports_running``), only the symbols running now."""
        return self.window.running_symbols(limit)

    @property
    def paused(self) -> bool:
        """True while the batch hands out no new symbol (safe from any thread)."""
        return self._pause.paused

    def pause(self, paused: bool) -> bool:
        """Pause (True) or continue (False) handing out symbols; True when this call changed the state.
        Safe from any thread: the loop wakes, applies it and publishes a snapshot."""
        return self._pause.set(paused)

    def stall_threshold(self) -> float:
        """Seconds after which a running symbol counts as stalled (see :meth:`StallWatch.threshold`)."""
        return self._stalls.threshold()

    def stalled(self) -> list[tuple[Any, float]]:
        """``(symbol, seconds_running)`` for the symbols running longer than :meth:`stall_threshold`,
        longest first (safe from any thread). Known where the workers share memory (threads, an
        ``executor=`` thread pool, asyncio), whose chunks report their start (``Chunk.on_start``): a
        chunk of several symbols (tiny symbols are grouped) names each of its symbols with the chunk's
        running time, except where each symbol's start is reported too (``Chunk.on_symbol``, coroutines,
        and Dask, whose workers report it over the scheduler) or read from the worker
        (``executor.running_since``: processes, whose workers write it in the chunk's started file):
        then the symbol that runs, with its own time."""
        settings = self.settings
        if settings is None:  # released: the batch is over
            return []
        return self._stalls.stalled(self.window.inflight.copy(), settings.clock(), self.window.executor)

    def release(self) -> None:
        """After the end: drop the settings (the processor, the backend and what it holds, e.g. a cluster)
        and the tasks, so an ended job kept by ``jobs()`` holds its result only."""
        self.settings = None  # type: ignore[assignment]
        self.window.release()
        self._source.dropped = []
        self._stalls.release()
        self._retries.release()

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> BatchResult:
        """Run the batch to its :class:`BatchResult` and publish the end to every listener.

        An interrupt that escapes the loop (``KeyboardInterrupt``, ``SystemExit``: a Ctrl-C while the
        caller blocks, or raised by a callback) cancels the batch; the partial result is published as the
        end, attached to the exception as ``partial_result`` and the exception is re-raised. Anything else
        escaping is an engine failure: listeners get it as the error, and it is re-raised.
        """
        publisher = self.publisher
        try:
            result = self._loop()
        except BaseException as exc:
            partial = self._interrupted_result if isinstance(exc, (KeyboardInterrupt, SystemExit)) else None
            if partial is None:  # an engine failure, or an interrupt before the result was made
                publisher.finish(None, exc)
                raise
            _attach_partial(exc, partial)
            try:
                publisher.finish(partial, None)
            except KeyboardInterrupt as again:  # a listener's Ctrl-C at the very end
                _attach_partial(again, partial)
                raise
            raise
        try:
            publisher.finish(result, None)
        except KeyboardInterrupt as exc:  # Ctrl-C landing in the final callback: the result is whole
            _attach_partial(exc, result)
            raise
        return result

    def _size(self, workers: int) -> None:
        """The window and the chunk sizer for ``workers`` workers (once the backend is open)."""
        settings = self.settings
        self._sizer = ChunkSizer(settings.target_chunk_seconds, workers,
                                 fixed=settings.chunk_size, timed=settings.timeout is not None)
        self.window.size = workers if settings.timeout is not None else max(1, workers * settings.window_per_worker)

    def _loop(self) -> BatchResult:
        settings, token = self.settings, self.token
        source, window, retries, reruns, pause = self._source, self.window, self._retries, self._reruns, self._pause
        wake = token.register(window.wake)
        pause.attach(window.wake)
        inflight, requeued = window.inflight, window.requeued
        backend = settings.backend
        # timeout= counts from each symbol's own start: the worker records it (shared memory) or reports
        # it (reports_running: Dask), or the watch asks the backend whether a task started (a backend that
        # times symbols itself: neither)
        timed = settings.timeout is not None and not getattr(backend, "times_symbols", False)
        clock = settings.clock
        executor: BatchExecutor | None = None
        try:
            if reruns is not None:  # in the try: a Ctrl-C in key= settles a partial result like any interrupt
                reruns.open(source)
            executor = window.open(backend, token)
            self._size(backend.max_workers)
            # where workers share memory each task records its start (stalled() reads it); where symbols are
            # coroutines, each symbol's start (the per-symbol hook costs nothing next to an await); a backend
            # whose workers report each chunk's start and running symbol (Dask) calls the same hooks from
            # those reports, on this process's side
            reports = executor.reports_running
            pushed = timed and (backend.shares_memory or reports)
            hooks = Hooks(clock, window.wake, pushed=pushed, stamped=backend.shares_memory or reports,
                          per_symbol=(backend.shares_memory and backend.runs_coroutines) or reports)
            window.starts_stamped = backend.shares_memory  # each chunk records its start (Chunk.on_start)
            watch = TimeoutWatch(settings.timeout, pushed, window, self._outcomes,  # type: ignore[arg-type]
                                 retries.sift if settings.retries else None) if timed else None
            while True:
                paused = self._apply_pause()
                self._fill(hooks, timed, paused)  # 1. keep the window full (unless paused)
                if not inflight and not retries.heap and not (paused and (requeued or source.more())):
                    break  # nothing in flight, waiting to retry, or held back by a pause: the end
                if token.is_cancelled:
                    # let a backend that stops running tasks (asyncio) unwind them, keep what
                    # already finished (its completion is queued), then stop waiting
                    executor.stop_running(list(inflight))
                    window.drain(self._take)
                    break
                # 2. wait for a completion (or a cancel, a pause, a task's start, a deadline, a retry's due time)
                try:
                    item = window.completions.get(timeout=self._wait(watch, paused))
                except queue.Empty:
                    if watch is not None:
                        watch.expire(clock())
                    continue
                if item is not WAKE:
                    self._take(item)
        finally:
            cancelled = token.is_cancelled or source.more() or bool(inflight) or bool(retries.heap)
            if cancelled and not token.is_cancelled:  # leaving on an exception (e.g. KeyboardInterrupt):
                token.cancel("the batch was interrupted")  # tell cooperative processors to stop too
            wake.unregister()
            pause.attach(None)
            window.close(cancelled)
            token.close()
            try:
                self._settle(cancelled)
            finally:
                if reruns is not None:  # however the batch ended: the writer writes the rest (never waited for)
                    reruns.close()
        return self._results

    def _apply_pause(self) -> bool:
        """Apply a pause or a continue asked since the last turn (the views hear it at once; a pause takes
        back what has not started); return whether the batch is paused."""
        paused = self._pause.paused
        tracker, inflight = self.tracker, self.window.inflight
        if paused is not tracker.paused:
            if paused:
                self.window.take_back()
            self.publisher.state(tracker.set_paused(paused, drained=not inflight))
        elif paused and tracker.idle is bool(inflight):  # paused, and its last running task ended
            tracker.set_paused(True, drained=not inflight)
        return paused

    def _fill(self, hooks: Hooks, timed: bool, paused: bool) -> None:
        """Hand out tasks while the window has room and the batch is neither cancelled nor paused: tasks
        taken back first, then retries that are due, then new symbols."""
        window, token, settings = self.window, self.token, self.settings
        inflight, size = window.inflight, window.size
        processor, pass_token = settings.processor, settings.pass_token
        collects = window.starts_stamped and hooks.stamped and not hooks.per_symbol  # the sync runner, in memory
        while len(inflight) < size and not token.is_cancelled and not paused:
            task, origin = self._next_task(timed)
            if task is None:
                return
            on_start, on_symbol = hooks.of(task)
            collected = task.collected = [] if collects else None
            try:
                window.submit(task, Chunk(task.symbols, processor, pass_token, on_start, on_symbol, collected))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # e.g. an executor that was shut down (an executor= is user code)
                self._refused(task, origin, exc)
                return
            if origin == _NEW:
                self._source.handed_out(task.stop)

    def _wait(self, watch: TimeoutWatch | None, paused: bool) -> float | None:
        """How long to wait for a completion: until the next deadline or retry due time (at most
        ``_MAX_WAIT``, so a fake clock works), else None (until a completion or a wake-up)."""
        retries, window = self._retries, self.window
        # a retry's due time matters only while the window has room for it: with the window
        # full, only a completion frees a slot (waiting for the due time would spin)
        retry_due = bool(retries.heap) and len(window.inflight) < window.size and not paused
        if watch is None and not retry_due:
            return None
        now = self.settings.clock()
        wait = None if watch is None else watch.next_wait(now, window.executor)  # type: ignore[arg-type]
        if retry_due:
            due = retries.due_in(now)
            wait = due if wait is None else min(wait, due)
        return None if wait is None else min(wait, _MAX_WAIT)

    def _next_task(self, timed: bool) -> tuple[Task | None, int]:
        """The next task to hand out and where it comes from: a task a pause took back, else a retry that
        is due, else the input's next chunk; ``(None, _)`` when nothing can go out now."""
        window, retries = self.window, self._retries
        if window.requeued:  # taken back from the pool at a pause: handed out first
            back = window.requeued.pop()
            return Task(back.start, back.stop, back.symbols, timed, back.attempts, back.last), _BACK
        if retries.heap:
            due = retries.pop_due()
            if due is not None:
                start, symbol, attempts, last = due
                return Task(start, start + 1, (symbol,), timed, attempts, last), _RETRY
            if len(retries.heap) >= window.size:  # back-pressure: no new symbols while many wait
                return None, _NEW
        span = self._source.next(self._sizer)  # type: ignore[arg-type]  # sized once open (_size)
        reruns = self._reruns
        if reruns is not None and reruns.pending:  # a lazy input's symbols found in the store
            reruns.count()
        if span is None:
            return None, _NEW
        start, stop, chunk = span
        return Task(start, stop, chunk, timed, 0, None), _NEW

    def _refused(self, task: Task, origin: int, exc: BaseException) -> None:
        """The executor refused ``task``: the batch is cancelled; a retry ends as its last ERROR, a chunk
        taken back or drawn is unprocessed, a slice of a sized input stays in its tail."""
        _log.error("job %s: the executor refused a task: %s", safe_str(self.job.job_id, 80), describe(exc, 500))
        self.token.cancel(f"the executor refused new tasks: {describe(exc, 500)}")
        if task.last is not None:  # back to waiting: it ends as its last ERROR result
            self._retries.schedule(task.start, task.last, task.attempts, 0.0)
        elif origin == _BACK:  # taken back, never run
            self._source.drop(task.start, task.stop, task.symbols)
        else:
            self._source.refused(task.start, task.stop, task.symbols)

    def _take(self, future: Future[Any]) -> None:
        """Record the outcome of a finished task: one result and one progress callback per symbol."""
        task = self.window.take(future)
        if task is None:  # a task given up on (timeout) finally ended: its outcome was already recorded
            return
        start, stop, symbols, attempts, last = task.start, task.stop, task.symbols, task.attempts, task.last
        ran = task_results(future, symbols)
        token = self.token
        if last is not None and not ran:  # a retry the executor dropped: its last failure stands
            self._retries.schedule(start, last, attempts, 0.0)
            if not token.is_cancelled:  # no cancel asked: never resubmit it to an executor that drops tasks
                token.cancel("the executor cancelled a task it had accepted (1 symbol(s)); was it shut down?")
            return
        if ran:
            chunk = self._retries.sift(ran, start, attempts) if self.settings.retries else ran
            if chunk:
                self._outcomes.completed(chunk)
            if self._sizer is not None:
                self._sizer.measured(ran)
        if len(ran) < stop - start:  # the chunk stopped early on a cancel: the rest never ran
            self._source.drop(start + len(ran), stop, symbols[len(ran):])
            if not token.is_cancelled:  # no cancel asked: the executor dropped a task it had accepted
                token.cancel(f"the executor cancelled a task it had accepted ({stop - start - len(ran)} "
                             "symbol(s)); was it shut down?")
        self._outcomes.check_budget()

    def _settle(self, cancelled: bool) -> None:
        """Complete the result: what never completed, the cancel flag and reason, the final snapshot.
        Runs however the loop ended, so an interrupt still leaves a whole partial result.

        A symbol that failed and was waiting for (or running) its next attempt when the batch stopped
        ran and failed: it ends as its last ERROR result, never as unprocessed."""
        tracker, window, results, token = self.tracker, self.window, self._results, self.token
        if self._reruns is not None and self._reruns.pending:  # drawn while the batch was being stopped
            self._reruns.count()
        # What a cancel left running on workers (tasks that ignore the token): reported, not awaited.
        tracker.running = window.still_running()
        tracker.cancelled = cancelled
        if tracker.paused:  # the pause ends with the batch (its time stays in the elapsed time)
            tracker.set_paused(False)
        never: list[tuple[int, Any]] = []
        waiting: list[tuple[Any, int]] = []
        for task in (*window.inflight.values(), *window.requeued):
            if task.last is None:
                never.extend(zip(range(task.start, task.stop), task.symbols, strict=True))
            else:
                waiting.append((task.last, task.attempts))
        waiting.extend(self._retries.drain())
        for last, attempts in waiting:
            last.attempts = attempts
        self._outcomes.failed([last for last, _ in waiting], published=False)
        self._source.settle(results, never, tracker)
        results.cancelled = cancelled
        results.cancel_reason = token.reason if cancelled else None
        results.progress = tracker.refresh(finished=True)
        self._interrupted_result = results


def _attach_partial(exc: BaseException, partial: BatchResult) -> None:
    """Keep the partial result reachable from the interrupt that ended the batch."""
    try:
        exc.partial_result = partial  # type: ignore[attr-defined]
        exc.add_note("procengine_nb: the batch was cancelled; its partial BatchResult is this "
                     "exception's .partial_result")
    except Exception:  # pragma: no cover - an exception class with __slots__ or that refuses notes
        pass
