"""One run of one batch: the bounded in-flight window, the completion loop, the cancel path.

The monitor thread (the one that calls :meth:`BatchRun.run`) is the only writer of the results, the
tracker and the window. Workers report through a ``SimpleQueue`` fed by each future's done-callback;
a cancel puts a wake-up marker in the same queue, so the loop reacts at once without polling.
Nothing here iterates ``as_completed``/``wait`` over futures, so a shut-down executor cannot hang it
(CPython gh-87893 / gh-109934).
"""

from __future__ import annotations

import heapq
import queue
import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from functools import partial
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

from procengine_nb._chunking import ChunkSizer
from procengine_nb._safe import describe, guarded, logger, safe_repr, safe_str
from procengine_nb._tracebacks import detach, format_text
from procengine_nb._validation import MAX_SECONDS
from procengine_nb.backends.base import BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, ProcessingJob, ResultStatus, SymbolResult, UnprocessedView
from procengine_nb.observe import Publisher
from procengine_nb.progress import ProcessingProgress, ProgressTracker
from procengine_nb.store import StoreSession

from .pause import Pause
from .settings import BatchSettings
from .task import Task, mark_start, mark_started, mark_symbol

__all__ = ["BatchRun"]

_log = logger("procengine_nb.engine")  # never raises (see procengine_nb._safe.GuardedLogger)
_WAKE = object()  # put in the completion queue by a cancel
_MAX_WAIT = 0.1  # longest real wait on a deadline computed from the (injectable) clock: a fake clock works
_START_POLL = 0.02  # how often a backend that cannot tell the start of a task is asked (timeout= only)
_status_of = attrgetter("status")
_symbol_of = attrgetter("symbol")
_UNKNOWN_REMAINING = 1 << 20  # what a lazy input without total= counts as left, for the chunk size
_DURATIONS_KEPT = 1001  # completed durations the stall threshold's median is taken over (the latest)
_DURATIONS_SAMPLED = 8  # of a chunk's durations, at most about this many are kept (a strided sample)
_STALL_FACTOR = 5.0  # stall_after=None: this many times the median duration...
_STALL_MIN_SECONDS = 10.0  # ...and at least this long
_duration_of = attrgetter("duration_ms")


class _Drawn:
    """The symbols of a lazy input that a cancel left unprocessed, by input position (a sparse sequence
    for :class:`UnprocessedView`: ``len`` is how many were drawn, only the kept positions are readable)."""

    __slots__ = ("_symbols", "_count")

    def __init__(self, pairs: list[tuple[int, Any]], count: int) -> None:
        self._symbols = dict(pairs)
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Any:
        return self._symbols[index]


class BatchRun:
    """Runs one :class:`ProcessingJob` to its :class:`BatchResult`. Use once.

    Each chunk in flight is a :class:`_Task` (the input positions it covers, its symbols, its start when
    ``timeout=`` times it or the workers share memory, its retry count), keyed by the future
    ``BatchExecutor.submit_chunk`` returned. Symbols waiting to retry sit in a heap of due times; they hold
    no worker; chunks a pause took back wait in ``_requeued`` and go out first when the batch continues.
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
        self.token = CancellationToken.linked(token)
        self._lazy = job.lazy
        if self._lazy:
            hint = job.total
            self.tracker = ProgressTracker(hint if hint is not None else 0, clock=settings.clock,
                                           smoothing=settings.eta_smoothing, total_known=hint is not None)
        else:
            self.tracker = ProgressTracker(len(job.symbols), clock=settings.clock,  # type: ignore[arg-type]
                                           smoothing=settings.eta_smoothing)
        self._inflight: dict[Future[Any], Task] = {}
        self._executor: BatchExecutor | None = None  # the batch's executor once open (running_symbols)
        self._abandoned: set[Future[Any]] = set()
        self._dropped: list[tuple[int, Any]] = []  # (position, symbol) that a cancel left never run
        self._retry_heap: list[tuple[float, int, int, Any, int, SymbolResult]] = []
        self._retry_count = 0  # tie-breaker for the heap (never compares symbols)
        self._random: random.Random | None = None  # the retries' jitter (made on first use: 2.5 KB)
        self._drawn = 0  # lazy input: symbols drawn so far
        self._exhausted = not self._lazy
        self._input_error: BaseException | None = None
        self._sizer = ChunkSizer(settings.target_chunk_seconds, settings.backend.max_workers,
                                 fixed=settings.chunk_size, timed=settings.timeout is not None)
        self._results = BatchResult(job=job)
        self._interrupted_result: BatchResult | None = None
        self._store = store
        """The batch's link to its ``store=`` (read on the batch's thread, written by its writer thread), or None."""
        self._symbols: Any = job.symbols  # what is handed out: on a rerun, without what the store holds
        self._stored: list[SymbolResult] = []  # lazy input: results from the store, drawn, not yet counted
        self._unkeyed: list[SymbolResult] = []  # ERROR results of symbols whose key raised, not yet counted
        self._stored_drawn = 0  # lazy input: symbols drawn never handed out (from the store, or unkeyed)
        self._retry_on_failed = False  # retry_on's instance check raised (logged once)
        self._pause = Pause()
        # spans a pause took back from the pool before they started, by descending start (pop(): the first)
        self._requeued: list[Task] = []
        # the latest completed symbols' durations (ms), for the median that stall_after=None uses
        self._durations: deque[float] = deque(maxlen=_DURATIONS_KEPT)

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
        items = list(self._inflight.copy().items())
        items.sort(key=lambda item: item[1].start)
        executor = self._executor
        reports = executor is not None and executor.reports_running
        out: list[Any] = []
        for future, task in items:
            if reports:
                index = executor.running_index(future)  # type: ignore[union-attr]
                running = () if index is None else task.symbols[index:index + 1]
            else:
                running = task.symbols
            for symbol in running:
                if len(out) >= limit:
                    return out
                out.append(symbol)
        return out

    @property
    def paused(self) -> bool:
        """True while the batch hands out no new symbol (safe from any thread)."""
        return self._pause.paused

    def pause(self, paused: bool) -> bool:
        """Pause (True) or continue (False) handing out symbols; True when this call changed the state.
        Safe from any thread: the loop wakes, applies it and publishes a snapshot."""
        return self._pause.set(paused)

    def stall_threshold(self) -> float:
        """Seconds after which a running symbol counts as stalled: ``stall_after``, else five times the
        median duration of the latest completed symbols (the last 1,001 of a sample: at most about 8
        of each chunk), at least 10 s."""
        settings = self.settings
        if settings is not None and settings.stall_after is not None:
            return settings.stall_after
        durations = sorted(self._durations.copy())
        if not durations:
            return _STALL_MIN_SECONDS
        return max(_STALL_MIN_SECONDS, _STALL_FACTOR * durations[len(durations) // 2] / 1000.0)

    def stalled(self) -> list[tuple[Any, float]]:
        """``(symbol, seconds_running)`` for the symbols running longer than :meth:`stall_threshold`,
        longest first (safe from any thread). Known where the workers share memory (threads, an
        ``executor=`` thread pool, asyncio), whose chunks report their start (``Chunk.on_start``): a
        chunk of several symbols (tiny symbols are grouped) names each of its symbols with the chunk's
        running time, except where each symbol's start is reported too (``Chunk.on_symbol``, coroutines,
        and Dask, whose workers report it over the scheduler): then the symbol that runs, with its own
        time."""
        settings = self.settings
        if settings is None:  # released: the batch is over
            return []
        threshold = self.stall_threshold()
        now = settings.clock()
        found: list[tuple[int, Any, float]] = []
        for future, task in self._inflight.copy().items():
            if future.done():
                continue
            running = task.running
            if running is not None:  # which symbol runs, and since when
                index, at = running
                if index < len(task.symbols) and now - at > threshold:
                    found.append((task.start + index, task.symbols[index], now - at))
            elif task.started_at is not None and now - task.started_at > threshold:  # the chunk's start
                seconds = now - task.started_at
                found.extend((task.start + offset, symbol, seconds) for offset, symbol in enumerate(task.symbols))
        found.sort(key=lambda item: (-item[2], item[0]))
        return [(symbol, seconds) for _, symbol, seconds in found]

    def release(self) -> None:
        """After the end: drop the settings (the processor, the backend and what it holds, e.g. a cluster)
        and the tasks, so an ended job kept by ``jobs()`` holds its result only."""
        self.settings = None  # type: ignore[assignment]
        self._executor = None
        self._inflight = {}
        self._abandoned = set()
        self._requeued = []
        self._dropped = []
        self._durations = deque(maxlen=1)
        self._random = None

    def _running_now(self) -> int:
        """How many symbols run now, for a backend that reports it (see :meth:`running_symbols`)."""
        executor = self._executor
        assert executor is not None
        index = executor.running_index
        return sum(1 for future in list(self._inflight) if index(future) is not None)

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

    def _loop(self) -> BatchResult:
        settings = self.settings
        lazy = self._lazy
        store = self._store
        if store is not None:
            self._open_store(store)
        symbols: Any = None if lazy else self._symbols
        total = 0 if lazy else len(symbols)
        token = self.token
        tracker = self.tracker
        completions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        wake_loop = partial(completions.put, _WAKE)
        wake = token.register(wake_loop)
        pause = self._pause
        pause.attach(lambda: completions.put(_WAKE))
        requeued = self._requeued
        results = self._results
        inflight = self._inflight
        heap = self._retry_heap
        timeout = settings.timeout
        backend = settings.backend
        # timeout= counts from each symbol's own start: the worker records it (shared memory) or reports
        # it (reports_running: Dask), or the loop asks the backend whether a task started (a backend that
        # times symbols itself: neither)
        timed = timeout is not None and not getattr(backend, "times_symbols", False)
        pushed = timed and backend.shares_memory
        # where workers share memory each task records its start (stalled() reads it); where symbols are
        # coroutines, each symbol's start (the per-symbol hook costs nothing next to an await)
        stamped = backend.shares_memory
        per_symbol = backend.shares_memory and backend.runs_coroutines
        clock = settings.clock
        next_index = 0
        workers = backend.max_workers
        window = workers if timeout is not None else max(1, workers * settings.window_per_worker)
        sizer = self._sizer
        executor: BatchExecutor | None = None
        try:
            executor = self._executor = backend.open(token)
            # a backend whose workers report each chunk's start and running symbol (Dask) calls the
            # same hooks from those reports, on this process's side
            reports = executor.reports_running
            pushed = pushed or (timed and reports)
            stamped = stamped or reports
            per_symbol = per_symbol or reports
            pass_token = settings.pass_token
            processor = settings.processor
            while True:
                paused = pause.paused
                if paused is not tracker.paused:  # a pause or a continue: the views hear it at once
                    if paused:
                        self._take_back(executor)
                    self.publisher.state(tracker.set_paused(paused, drained=not inflight))
                elif paused and tracker.idle is bool(inflight):  # paused, and its last running task ended
                    tracker.set_paused(True, drained=not inflight)
                # 1. keep the window full (unless paused): retries that are due first, then new symbols
                while len(inflight) < window and not token.is_cancelled and not paused:
                    attempts, last = 0, None
                    back = requeued.pop() if requeued else None
                    if back is not None:  # taken back from the pool at a pause: handed out first
                        start, stop, chunk = back.start, back.stop, back.symbols
                        attempts, last = back.attempts, back.last
                    elif heap:
                        if heap[0][0] <= clock():
                            _, _, start, symbol, attempts, last = heapq.heappop(heap)
                            tracker.retrying = len(heap)
                            stop, chunk = start + 1, (symbol,)
                        elif len(heap) >= window:  # back-pressure: no new symbols while many wait
                            break
                    if last is None and back is None:
                        if lazy:
                            if self._exhausted:
                                break
                            chunk = self._draw(sizer.size(self._lazy_remaining()))
                            if self._stored or self._unkeyed:
                                self._count_stored()
                            if not chunk:
                                break
                            start = self._drawn - len(chunk)
                            stop = self._drawn
                        else:
                            if next_index >= total:
                                break
                            start = next_index
                            stop = start + sizer.size(total - start)
                            chunk = symbols[start:stop]
                    task = Task(start, stop, chunk, timed, attempts, last)
                    try:
                        if pushed:
                            on_start = partial(mark_started, task, clock, wake_loop)
                        elif stamped:
                            on_start = partial(mark_start, task, clock)
                        else:
                            on_start = None
                        on_symbol = partial(mark_symbol, task, clock) if per_symbol else None
                        future = executor.submit_chunk(Chunk(chunk, processor, pass_token, on_start, on_symbol))
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # e.g. an executor that was shut down (an executor= is user code)
                        _log.error("job %s: the executor refused a task: %s", safe_str(self.job.job_id, 80),
                                   describe(exc, 500))
                        token.cancel(f"the executor refused new tasks: {describe(exc, 500)}")
                        if last is not None:  # back to waiting: it ends as its last ERROR result
                            self._schedule(start, last, attempts, 0.0)
                        elif lazy or back is not None:  # drawn (or taken back), never run
                            self._dropped.extend(zip(range(start, stop), chunk, strict=True))
                        break
                    inflight[future] = task
                    if not reports:  # else counted from the workers' reports (_running_now)
                        tracker.running += stop - start
                    if last is None and not lazy and back is None:
                        next_index = stop
                    future.add_done_callback(completions.put)
                if not inflight and not heap and not (
                        paused and (requeued or (not self._exhausted if lazy else next_index < total))):
                    break
                if token.is_cancelled:
                    # let a backend that stops running tasks (asyncio) unwind them, keep what
                    # already finished (its completion is queued), then stop waiting
                    executor.stop_running(list(inflight))
                    while True:
                        try:
                            item = completions.get_nowait()
                        except queue.Empty:
                            break
                        if item is not _WAKE:
                            self._take(item)
                    break
                # 2. wait for a completion (or a cancel, a task's start, a deadline, a retry's due time)
                wait = None
                # a retry's due time matters only while the window has room for it: with the window
                # full, only a completion frees a slot (waiting for the due time would spin)
                retry_due = bool(heap) and len(inflight) < window and not paused
                if timed or retry_due:
                    now = clock()
                    if timed:
                        wait = self._next_wait(now, executor, pushed)
                    if retry_due:
                        due = max(0.0, heap[0][0] - now)
                        wait = due if wait is None else min(wait, due)
                    if wait is not None:
                        wait = min(wait, _MAX_WAIT)
                try:
                    item = completions.get(timeout=wait)
                except queue.Empty:
                    if timed:
                        self._expire(clock(), executor)
                    continue
                if item is not _WAKE:
                    self._take(item)
        finally:
            undrawn = not self._exhausted if lazy else next_index < total
            cancelled = token.is_cancelled or undrawn or bool(inflight) or bool(heap)
            if cancelled and not token.is_cancelled:  # leaving on an exception (e.g. KeyboardInterrupt):
                token.cancel("the batch was interrupted")  # tell cooperative processors to stop too
            wake.unregister()
            pause.attach(None)
            if executor is not None:
                pending = list(inflight)
                executor.cancel_pending(pending)
                # never wait for tasks given up on (cancelled, or past their timeout)
                executor.close(cancelled=cancelled or bool(self._abandoned))
            token.close()
            try:
                self._settle(next_index, cancelled)
            finally:
                if store is not None:  # however the batch ended: the writer writes the rest (never waited for)
                    self._close_store(store)
        return results

    def _settle(self, next_index: int, cancelled: bool) -> None:
        """Complete the result: what never completed, the cancel flag and reason, the final snapshot.
        Runs however the loop ended, so an interrupt still leaves a whole partial result.

        A symbol that failed and was waiting for (or running) its next attempt when the batch stopped
        ran and failed: it ends as its last ERROR result, never as unprocessed."""
        tracker, inflight, results, token = self.tracker, self._inflight, self._results, self.token
        if self._stored or self._unkeyed:  # drawn while the batch was being stopped
            self._count_stored()
        # What a cancel left running on workers (tasks that ignore the token): reported, not awaited.
        executor = self._executor
        if executor is not None and executor.reports_running:
            tracker.running = self._running_now()
        else:
            tracker.running = sum(task.stop - task.start for f, task in inflight.items() if not f.done())
        tracker.cancelled = cancelled
        if tracker.paused:  # the pause ends with the batch (its time stays in the elapsed time)
            tracker.set_paused(False)
        never: list[tuple[int, Any]] = []
        waiting: list[tuple[SymbolResult, int]] = []
        for task in (*inflight.values(), *self._requeued):
            if task.last is None:
                never.extend(zip(range(task.start, task.stop), task.symbols, strict=True))
            else:
                waiting.append((task.last, task.attempts))
        waiting.extend((last, attempts) for _, _, _, _, attempts, last in self._retry_heap)
        self._retry_heap.clear()
        tracker.retrying = 0
        for last, attempts in waiting:
            last.attempts = attempts
            results.append(last)
            if self._store is not None:
                self._store.add((last,))
            tracker.record(last.symbol, error=True)
            self.publisher.failed(last)
        never.extend(self._dropped)
        positions = [i for i, _ in never]
        if self._lazy:
            results.unprocessed = UnprocessedView(_Drawn(never, self._drawn), positions, self._drawn)  # type: ignore[arg-type]
            if self._exhausted:
                tracker.total, tracker.total_known = self._drawn + self._stored_drawn, True
        else:
            results.unprocessed = UnprocessedView(self._symbols, positions, next_index)
        results.input_exhausted = self._exhausted
        results.input_error = self._input_error
        results.cancelled = cancelled
        results.cancel_reason = token.reason if cancelled else None
        results.progress = tracker.refresh(finished=True)
        self._interrupted_result = results

    def _take_back(self, executor: BatchExecutor) -> None:
        """At a pause: take back the tasks the backend can withdraw before they start (``take_back``:
        those queued in a thread pool, or waiting for a slot on the batch's event loop), so that only the
        running symbols finish; they are handed out first when the batch continues, or are unprocessed
        after a Stop. Their futures' completions are ignored from now on (no longer in flight)."""
        inflight = self._inflight
        for future in executor.take_back([f for f in inflight if not f.done()]):
            task = inflight.pop(future)
            self._uncount(task.stop - task.start)
            self._requeued.append(task)
        self._requeued.sort(key=attrgetter("start"), reverse=True)

    def _take(self, future: Future[Any]) -> None:
        """Record the outcome of a finished task: one result and one progress callback per symbol."""
        task = self._inflight.pop(future, None)
        if task is None:  # a task given up on (timeout) finally ended: its outcome was already recorded
            self._abandoned.discard(future)
            return
        start, stop, symbols, attempts, last = task.start, task.stop, task.symbols, task.attempts, task.last
        self._uncount(stop - start)
        ran = self._outcome(future, symbols)
        token = self.token
        if last is not None and not ran:  # a retry the executor dropped: its last failure stands
            self._schedule(start, last, attempts, 0.0)
            if not token.is_cancelled:  # no cancel asked: never resubmit it to an executor that drops tasks
                token.cancel("the executor cancelled a task it had accepted (1 symbol(s)); was it shut down?")
            return
        if ran:
            chunk = self._sift(ran, start, attempts) if self.settings.retries else ran
            if chunk:
                self._record(chunk)
            self._sizer.measured(ran)
        if len(ran) < stop - start:  # the chunk stopped early on a cancel: the rest never ran
            self._dropped.extend(zip(range(start + len(ran), stop), symbols[len(ran):], strict=True))
            if not token.is_cancelled:  # no cancel asked: the executor dropped a task it had accepted
                token.cancel(f"the executor cancelled a task it had accepted ({stop - start - len(ran)} "
                             "symbol(s)); was it shut down?")
        self._check_budget()

    def _uncount(self, symbols: int) -> None:
        """A task left the window: ``symbols`` fewer running (or, reported by the workers, a recount)."""
        executor = self._executor
        if executor is not None and executor.reports_running:
            self.tracker.running = self._running_now()
        else:
            self.tracker.running -= symbols

    def _record(self, chunk: list[SymbolResult]) -> None:
        """Final outcomes: into the results (and the store), one snapshot each to the callback, failures
        to the views."""
        self._results.extend(chunk)
        # the stall threshold's median: a strided sample of each chunk (every symbol would cost ~2% on tiny ones)
        count = len(chunk)
        self._durations.extend(map(_duration_of, chunk if count <= _DURATIONS_SAMPLED else
                                   chunk[::count // _DURATIONS_SAMPLED]))
        if self._store is not None:
            self._store.add(chunk)
        error_status = ResultStatus.ERROR
        failed = list(map(is_, map(_status_of, chunk), repeat(error_status)))
        token = self.token
        # one clock reading for the chunk, one snapshot per symbol (the callback sees each)
        publisher = self.publisher
        publisher.updates(self.tracker.record_group(list(map(_symbol_of, chunk)), failed, each=publisher.wants_each),
                          cancelled=token.cancelled_now)
        if True in failed:
            for r in chunk:
                if r.status is error_status:
                    publisher.failed(r)

    def _sift(self, ran: list[SymbolResult], start: int, attempts: int) -> list[SymbolResult]:
        """Keep the final outcomes of a finished task; schedule the failures that get another attempt."""
        settings = self.settings
        retries, retry_on = settings.retries, settings.retry_on
        error_status = ResultStatus.ERROR
        calls = attempts + 1
        finals: list[SymbolResult] = []
        scheduled = False
        for offset, r in enumerate(ran):
            if (r.status is error_status and calls <= retries and self._retryable(r.error, retry_on)
                    and not self.token.is_cancelled):
                self._schedule(start + offset, r, calls, self._delay(calls))
                scheduled = True
                continue
            if calls > 1:
                r.attempts = calls
            finals.append(r)
        if scheduled and not finals:  # no completion to carry the new count: tell the views
            self.publisher.state(self.tracker.refresh())
        return finals

    def _retryable(self, error: BaseException | None, retry_on: tuple[type[BaseException], ...]) -> bool:
        """``isinstance(error, retry_on)`` through the guard: a ``retry_on`` class whose
        ``__instancecheck__`` raises (anything) makes that failure final, as not retryable; logged once
        per batch."""
        return bool(guarded(isinstance, error, retry_on, on_error=self._retry_on_raised, default=False))

    def _retry_on_raised(self, exc: BaseException) -> None:
        if not self._retry_on_failed:
            self._retry_on_failed = True
            _log.error("job %s: retry_on's instance check raised %s; the failures it was asked about are not "
                       "retried (logged once per batch)\n%s", safe_str(self.job.job_id, 80), describe(exc, 500),
                       format_text(exc).rstrip("\n"))

    def _delay(self, calls: int) -> float:
        """Seconds before attempt ``calls + 1``: ``backoff * 2**(calls - 1)``, scaled by a random factor
        in [0.5, 1] (jitter, so that symbols failing together do not come back together)."""
        backoff = self.settings.backoff
        if backoff <= 0.0:
            return 0.0
        delay = backoff * 2.0 ** min(calls - 1, 64)
        if self._random is None:
            self._random = random.Random()
        return min(delay * (0.5 + 0.5 * self._random.random()), MAX_SECONDS)

    def _schedule(self, index: int, last: SymbolResult, calls: int, delay: float) -> None:
        self._retry_count += 1
        heapq.heappush(self._retry_heap, (self.settings.clock() + delay, self._retry_count, index,
                                          last.symbol, calls, last))
        self.tracker.retrying = len(self._retry_heap)

    def _check_budget(self) -> None:
        max_errors = self.settings.max_errors
        if max_errors is not None and self.tracker.errors > max_errors:
            self.token.cancel(f"error budget exceeded: {self.tracker.errors} errors > max_errors={max_errors}")

    # -- the store --------------------------------------------------------------------------------------
    def _open_store(self, store: StoreSession) -> None:
        """Before any symbol runs: read what the store holds for this batch (never waiting on a lock: a
        store that cannot be read runs without reuse, logged). A sized input: key every symbol (a key that
        raises is that symbol's ERROR, never run), count what the store holds as completed (``from_store``)
        and hand out only the rest, in input order. A lazy input: the same, symbol by symbol as it is drawn."""
        symbols = self.job.symbols
        try:
            store.open(cancelled=lambda: self.token.is_cancelled)
            if self._lazy:
                self._symbols = self._without_stored(symbols, store)  # type: ignore[arg-type]
                return
            keys: list[str | None] = []
            unkeyed: set[int] = set()
            for position, symbol in enumerate(symbols):  # type: ignore[arg-type]
                try:
                    keys.append(store.key(symbol))
                except Exception as exc:  # key= and str() raise nothing else (they wrap it)
                    keys.append(None)
                    unkeyed.add(position)
                    self._unkeyed.append(_unkeyed_result(symbol, exc))
            found = store.done(symbols, keys) if store.has_known else {}  # type: ignore[arg-type]
        except BaseException:
            self._close_store(store)
            raise
        if found or unkeyed:
            self._results.extend(found[i] for i in sorted(found))
            self._symbols = tuple(symbol for i, symbol in enumerate(symbols)  # type: ignore[arg-type]
                                  if i not in found and i not in unkeyed)
            self._stored = self._results[:]
            self._count_stored()

    def _without_stored(self, iterator: Iterator[Any], store: StoreSession) -> Iterator[Any]:
        """A lazy input without the symbols the store holds: their results are kept for
        :meth:`_count_stored` (looked up a few hundred at a time); a stored value that no longer loads
        is yielded to run again; a symbol whose key raises is kept as its ERROR result, never run."""
        held_symbols: list[Any] = []
        held_keys: list[str] = []
        for symbol in iterator:
            try:
                key = store.key(symbol)
            except Exception as exc:  # key= and str() raise nothing else (they wrap it)
                self._unkeyed.append(_unkeyed_result(symbol, exc))
                self._stored_drawn += 1
                continue
            known = store.is_known(key)
            if known:
                held_symbols.append(symbol)
                held_keys.append(key)
                if len(held_symbols) < 512:
                    continue
            if held_symbols:
                found = store.done(held_symbols, held_keys)
                self._stored.extend(found[i] for i in sorted(found))
                self._stored_drawn += len(found)
                yield from (s for i, s in enumerate(held_symbols) if i not in found)
                held_symbols, held_keys = [], []
            if not known:
                yield symbol
        if held_symbols:
            found = store.done(held_symbols, held_keys)
            self._stored.extend(found[i] for i in sorted(found))
            self._stored_drawn += len(found)
            yield from (s for i, s in enumerate(held_symbols) if i not in found)

    def _count_stored(self) -> None:
        """Count results taken from the store as completed at once (``from_store``), one snapshot each,
        and the ERROR results of symbols whose key raised."""
        stored, self._stored = self._stored, []
        unkeyed, self._unkeyed = self._unkeyed, []
        if stored:
            if self._lazy:
                self._results.extend(stored)
            self.publisher.updates(self.tracker.record_stored([r.symbol for r in stored]),
                                   cancelled=self.token.cancelled_now)
        for result in unkeyed:
            self._results.append(result)
            self.publisher.update(self.tracker.record(result.symbol, error=True))
            self.publisher.failed(result)
        if unkeyed:
            self._check_budget()

    def _close_store(self, store: StoreSession) -> None:
        """Hand the store's writer the end of the batch (it writes what is left on its own thread, never
        waited for here); never raises."""
        try:
            store.close()
        except Exception as exc:  # pragma: no cover - close() only closes a connection and sets a flag
            _log.error("job %s: closing the store failed: %s", safe_str(self.job.job_id, 80), describe(exc))

    # -- lazy input -------------------------------------------------------------------------------
    def _draw(self, size: int) -> list[Any]:
        """Draw up to ``size`` symbols from a lazy input (on this thread). At its end, the total becomes
        known. If the input raises (anything but an interrupt), the batch is cancelled with that reason
        (the exception is kept as ``input_error``), and what was drawn before still counts; an interrupt
        (``KeyboardInterrupt``, ``SystemExit``) is re-raised after that, with the partial result."""
        iterator: Iterator[Any] = self._symbols
        chunk: list[Any] = []
        append = chunk.append
        try:
            for _ in range(size):
                append(next(iterator))
        except StopIteration:
            self._exhausted = True
        except BaseException as exc:
            self._exhausted = True
            self._drawn += len(chunk)
            self._dropped.extend(zip(range(self._drawn - len(chunk), self._drawn), chunk, strict=True))
            self._grow_total()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # an interrupt: run() keeps the partial result
                raise
            self._input_error = exc
            _log.error("job %s: the input raised while symbol #%d was drawn: %s", safe_str(self.job.job_id, 80),
                       self._drawn + 1, describe(exc, 500))
            self.token.cancel(f"the input raised {describe(exc, 500)} after {self._drawn} symbol(s)")
            return []
        self._drawn += len(chunk)
        self._grow_total()
        return chunk

    def _grow_total(self) -> None:
        tracker, drawn = self.tracker, self._drawn + self._stored_drawn
        if self._exhausted:
            tracker.total, tracker.total_known = drawn, True
        elif drawn > tracker.total:  # no hint, or the hint was too low
            tracker.total = drawn

    def _lazy_remaining(self) -> int:
        hint = self.job.total
        drawn = self._drawn + self._stored_drawn
        if hint is None or hint <= drawn:
            return _UNKNOWN_REMAINING
        return hint - drawn

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _outcome(future: Future[Any], symbols: Any) -> list[SymbolResult]:
        try:
            return future.result()
        except CancelledError:
            return []
        except BaseException as exc:  # the backend failed the whole task (pickling, lost worker, ...)
            text = detach(exc)
            return [SymbolResult(symbol, ResultStatus.ERROR, None, exc, 0.0, traceback=text) for symbol in symbols]

    def _next_wait(self, now: float, executor: BatchExecutor, pushed: bool) -> float | None:
        """Seconds until the earliest deadline of a started task (None: no task started yet). Tasks not
        known to have started are asked about (``executor.started``) unless workers report it."""
        timeout = self.settings.timeout
        assert timeout is not None
        earliest = None
        unstarted = False
        for future, task in self._inflight.items():
            if not task.timed:
                continue
            at = task.started_at
            if at is None and not pushed and executor.started(future):
                at = task.started_at = now
            if at is None:
                unstarted = True
            elif earliest is None or at < earliest:
                earliest = at
        wait = None if earliest is None else max(0.0, earliest + timeout - now)
        if unstarted and not pushed:
            wait = _START_POLL if wait is None else min(wait, _START_POLL)
        return wait

    def _expire(self, now: float, executor: BatchExecutor) -> None:
        """Turn every task past its deadline (counted from its start) into ERROR results."""
        timeout = self.settings.timeout
        assert timeout is not None
        late = [(f, task) for f, task in self._inflight.items()
                if task.timed and task.started_at is not None and now - task.started_at >= timeout]
        if not late:
            return
        executor.cancel_pending([f for f, _ in late])
        executor.abandon([f for f, _ in late])
        finals: list[SymbolResult] = []
        for future, task in late:
            del self._inflight[future]
            self._abandoned.add(future)
            self._uncount(task.stop - task.start)
            ran = []
            for symbol in task.symbols:
                error = TimeoutError(f"symbol {safe_repr(symbol, 200)} did not finish within {timeout:g}s "
                                     "of starting")
                ran.append(SymbolResult(symbol, ResultStatus.ERROR, None, error, timeout * 1000.0,
                                        traceback=format_text(error)))
            finals.extend(self._sift(ran, task.start, task.attempts) if self.settings.retries else ran)
        if self._store is not None:
            self._store.add(finals)
        for result in finals:
            self._results.append(result)
            self.publisher.update(self.tracker.record(result.symbol, error=True))
            self.publisher.failed(result)
        self._check_budget()


def _unkeyed_result(symbol: Any, error: BaseException) -> SymbolResult:
    """The ERROR result of a symbol the store could not key (never run)."""
    text = detach(error)
    return SymbolResult(symbol, ResultStatus.ERROR, None, error, 0.0, traceback=text)


def _attach_partial(exc: BaseException, partial: BatchResult) -> None:
    """Keep the partial result reachable from the interrupt that ended the batch."""
    try:
        exc.partial_result = partial  # type: ignore[attr-defined]
        exc.add_note("procengine_nb: the batch was cancelled; its partial BatchResult is this "
                     "exception's .partial_result")
    except Exception:  # pragma: no cover - an exception class with __slots__ or that refuses notes
        pass
