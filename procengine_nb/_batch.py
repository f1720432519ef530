"""One run of one batch: the bounded in-flight window, the completion loop, the cancel path.

The monitor thread (the one that calls :meth:`BatchRun.run`) is the only writer of the results, the
tracker and the window. Workers report through a ``SimpleQueue`` fed by each future's done-callback;
a cancel puts a wake-up marker in the same queue, so the loop reacts at once without polling.
Nothing here iterates ``as_completed``/``wait`` over futures, so a shut-down executor cannot hang it
(CPython gh-87893 / gh-109934).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

from procengine_nb._safe import describe, safe_repr
from procengine_nb._tracebacks import detach, format_text
from procengine_nb.backends.base import Backend, BatchExecutor, run_chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, ProcessingJob, ResultStatus, SymbolResult, UnprocessedView
from procengine_nb.observe import Publisher
from procengine_nb.progress import ProcessingProgress, ProgressTracker

__all__ = ["BatchRun", "BatchSettings"]

_log = logging.getLogger("procengine_nb.engine")
_WAKE = object()  # put in the completion queue by a cancel


class BatchSettings:
    """The engine's knobs, validated by ``ProcessingEngine`` and shared by its batches."""

    __slots__ = ("processor", "pass_token", "backend", "clock", "eta_smoothing", "max_errors",
                 "timeout", "chunk_size", "target_chunk_seconds", "window_per_worker")

    def __init__(self, processor: Callable[..., Any], pass_token: bool, backend: Backend,
                 clock: Callable[[], float], eta_smoothing: float | None, max_errors: int | None,
                 timeout: float | None, chunk_size: int | None, target_chunk_seconds: float = 0.002,
                 window_per_worker: int = 2) -> None:
        self.processor = processor
        self.pass_token = pass_token
        self.backend = backend
        self.clock = clock
        self.eta_smoothing = eta_smoothing
        self.max_errors = max_errors
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.target_chunk_seconds = target_chunk_seconds
        self.window_per_worker = window_per_worker


class BatchRun:
    """Runs one :class:`ProcessingJob` to its :class:`BatchResult`. Use once."""

    def __init__(self, settings: BatchSettings, job: ProcessingJob,
                 publisher: Publisher, token: CancellationToken) -> None:
        self.settings = settings
        self.job = job
        self.publisher = publisher
        """The batch's one fan-out to its listeners (the user's callback, the handle's views)."""
        self.user_token = token
        # The batch's own token: cancelled by the user's token, the error budget or the engine itself,
        # without ever cancelling the caller's token on the caller's behalf.
        self.token = CancellationToken.linked(token)
        self.tracker = ProgressTracker(len(job.symbols), clock=settings.clock, smoothing=settings.eta_smoothing)
        self._inflight: dict[Future[Any], tuple[int, int, float]] = {}
        self._abandoned: set[Future[Any]] = set()
        self._dropped: list[int] = []  # symbols of a started chunk that stopped early on a cancel
        self._mean_seconds = 0.0  # smoothed processor time per symbol; drives the chunk size
        self._results = BatchResult(job=job)

    # -- read from other threads ----------------------------------------------------------------
    @property
    def progress(self) -> ProcessingProgress:
        """The latest snapshot (safe from any thread)."""
        return self.tracker.snapshot

    def running_symbols(self, limit: int = 8) -> list[Any]:
        """Up to ``limit`` symbols handed to workers and not completed yet (safe from any thread)."""
        spans = list(self._inflight.copy().values())
        spans.sort()
        symbols = self.job.symbols
        out: list[Any] = []
        for start, stop, _ in spans:
            for index in range(start, stop):
                if len(out) >= limit:
                    return out
                out.append(symbols[index])
        return out

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
        symbols = self.job.symbols
        total = len(symbols)
        token = self.token
        tracker = self.tracker
        completions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        wake = token.register(lambda: completions.put(_WAKE))
        results = self._results
        inflight = self._inflight
        timeout = settings.timeout
        clock = settings.clock
        next_index = 0
        workers = settings.backend.max_workers
        window = workers if timeout is not None else max(1, workers * settings.window_per_worker)
        executor: BatchExecutor | None = None
        self._interrupted_result: BatchResult | None = None
        try:
            executor = settings.backend.open(token)
            worker_token = executor.worker_token
            pass_token = settings.pass_token
            processor = settings.processor
            while True:
                # 1. keep the window full
                while next_index < total and len(inflight) < window and not token.is_cancelled:
                    size = self._chunk_size(total - next_index, workers)
                    stop = next_index + size
                    try:
                        future = executor.submit(run_chunk, processor, symbols[next_index:stop],
                                                 worker_token, pass_token)
                    except Exception as exc:  # e.g. an executor that was shut down
                        _log.error("job %s: the executor refused a task: %s", self.job.job_id, describe(exc))
                        token.cancel(f"the executor refused new tasks: {describe(exc)}")
                        break
                    inflight[future] = (next_index, stop, clock())
                    tracker.running += size
                    next_index = stop
                    future.add_done_callback(completions.put)
                if not inflight:
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
                # 2. wait for a completion (or a cancel, or the earliest per-symbol deadline)
                try:
                    item = completions.get(timeout=self._next_wait(clock()) if timeout is not None else None)
                except queue.Empty:
                    self._expire(clock(), executor)
                    continue
                if item is not _WAKE:
                    self._take(item)
        finally:
            cancelled = token.is_cancelled or next_index < total or bool(inflight)
            if cancelled and not token.is_cancelled:  # leaving on an exception (e.g. KeyboardInterrupt):
                token.cancel("the batch was interrupted")  # tell cooperative processors to stop too
            wake.unregister()
            if executor is not None:
                pending = list(inflight)
                executor.cancel_pending(pending)
                # never wait for tasks given up on (cancelled, or past their timeout)
                executor.close(cancelled=cancelled or bool(self._abandoned))
            token.close()
            self._settle(next_index, cancelled)
        return results

    def _settle(self, next_index: int, cancelled: bool) -> None:
        """Complete the result: what never completed, the cancel flag and reason, the final snapshot.
        Runs however the loop ended, so an interrupt still leaves a whole partial result."""
        tracker, inflight, results, token = self.tracker, self._inflight, self._results, self.token
        # What a cancel left running on workers (tasks that ignore the token): reported, not awaited.
        tracker.running = sum(stop - start for f, (start, stop, _) in inflight.items() if not f.done())
        tracker.cancelled = cancelled
        head = [i for start, stop, _ in inflight.values() for i in range(start, stop)]
        head.extend(self._dropped)
        results.unprocessed = UnprocessedView(self.job.symbols, head, next_index)
        results.cancelled = cancelled
        results.cancel_reason = token.reason if cancelled else None
        results.progress = tracker.refresh(finished=True)
        self._interrupted_result = results

    def _take(self, future: Future[Any]) -> None:
        """Record the outcome of a finished task: one result and one progress callback per symbol."""
        span = self._inflight.pop(future, None)
        if span is None:  # a task given up on (timeout) finally ended: its outcome was already recorded
            self._abandoned.discard(future)
            return
        start, stop, _ = span
        tracker = self.tracker
        tracker.running -= stop - start
        chunk = self._outcome(future, self.job.symbols, start, stop)
        token = self.token
        if chunk:
            self._results.extend(chunk)
            error_status = ResultStatus.ERROR
            failed = [r.status is error_status for r in chunk]
            # one clock reading for the chunk, one snapshot per symbol (the callback sees each)
            publisher = self.publisher
            publisher.updates(tracker.record_group([r.symbol for r in chunk], failed), cancelled=token.cancelled_now)
            if True in failed:
                for r in chunk:
                    if r.status is error_status:
                        publisher.failed(r)
            per_symbol = sum(r.duration_ms for r in chunk) / 1000.0 / len(chunk)
            mean = self._mean_seconds
            self._mean_seconds = per_symbol if mean == 0.0 else 0.5 * (mean + per_symbol)
        if len(chunk) < stop - start:  # the chunk stopped early on a cancel: the rest never ran
            self._dropped.extend(range(start + len(chunk), stop))
            if not token.is_cancelled:  # no cancel asked: the executor dropped a task it had accepted
                token.cancel(f"the executor cancelled a task it had accepted ({stop - start - len(chunk)} "
                             "symbol(s)); was it shut down?")
        self._check_budget()

    def _check_budget(self) -> None:
        max_errors = self.settings.max_errors
        if max_errors is not None and self.tracker.errors > max_errors:
            self.token.cancel(f"error budget exceeded: {self.tracker.errors} errors > max_errors={max_errors}")

    # -- helpers ----------------------------------------------------------------------------------
    def _chunk_size(self, remaining: int, workers: int) -> int:
        """Symbols per task: fixed when configured; else 1 until tasks are measured, then enough tiny
        tasks to fill ``target_chunk_seconds`` — while leaving every worker a few tasks at the end."""
        settings = self.settings
        mean_seconds = self._mean_seconds
        if settings.timeout is not None:
            return 1
        if settings.chunk_size is not None:
            return min(settings.chunk_size, remaining)
        if mean_seconds <= 0.0 or mean_seconds >= settings.target_chunk_seconds:
            return 1
        size = int(settings.target_chunk_seconds / mean_seconds)
        balance = max(1, remaining // (workers * 4))
        return max(1, min(size, balance, 4096))

    @staticmethod
    def _outcome(future: Future[Any], symbols: tuple[Any, ...], start: int, stop: int) -> list[SymbolResult]:
        try:
            return future.result()
        except CancelledError:
            return []
        except BaseException as exc:  # the backend failed the whole task (pickling, lost worker, ...)
            text = detach(exc)
            return [SymbolResult(symbols[i], ResultStatus.ERROR, None, exc, 0.0, traceback=text)
                    for i in range(start, stop)]

    def _next_wait(self, now: float) -> float:
        timeout = self.settings.timeout
        assert timeout is not None
        earliest = min(submitted for _, _, submitted in self._inflight.values())
        return max(0.0, earliest + timeout - now)

    def _expire(self, now: float, executor: BatchExecutor) -> None:
        """Turn every task past its deadline into an ERROR result and stop waiting for it."""
        timeout = self.settings.timeout
        assert timeout is not None
        symbols = self.job.symbols
        late = [(f, span) for f, span in self._inflight.items() if now - span[2] >= timeout]
        executor.cancel_pending([f for f, _ in late])
        for future, (start, stop, _) in late:
            del self._inflight[future]
            self._abandoned.add(future)
            self.tracker.running -= stop - start
            for index in range(start, stop):
                error = TimeoutError(f"symbol {safe_repr(symbols[index], 200)} did not finish within "
                                     f"{timeout:g}s of being handed to a worker")
                result = SymbolResult(symbols[index], ResultStatus.ERROR, None, error, timeout * 1000.0,
                                      traceback=format_text(error))
                self._results.append(result)
                self.publisher.update(self.tracker.record(symbols[index], error=True))
                self.publisher.failed(result)
        self._check_budget()


def _attach_partial(exc: BaseException, partial: BatchResult) -> None:
    """Keep the partial result reachable from the interrupt that ended the batch."""
    try:
        exc.partial_result = partial  # type: ignore[attr-defined]
        exc.add_note("procengine_nb: the batch was cancelled; its partial BatchResult is this "
                     "exception's .partial_result")
    except Exception:  # pragma: no cover - an exception class with __slots__ or that refuses notes
        pass
