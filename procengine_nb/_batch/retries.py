"""The retry queue: failed symbols that get another attempt wait here, by due time, holding no worker."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from procengine_nb._safe import describe, guarded, logger, safe_str
from procengine_nb._tracebacks import format_text
from procengine_nb._validation import MAX_SECONDS
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import ResultStatus, SymbolResult
from procengine_nb.observe import Publisher
from procengine_nb.progress import ProgressTracker

__all__ = ["RetryQueue", "instance_of"]

_log = logger("procengine_nb.engine")


def instance_of(error: BaseException | None, classes: tuple[type[BaseException], ...]) -> bool:
    """``isinstance(error, classes)``, or, when ``error`` stands in for an exception that could not be
    sent back from a worker process (a ``RemoteSerializationError`` carrying ``original_types``: the
    original's ``module.qualname`` along its MRO), whether one of ``classes`` is among those."""
    if isinstance(error, classes):
        return True
    names = getattr(error, "original_types", None) if isinstance(error, RuntimeError) else None
    if not names or not isinstance(names, tuple):
        return False
    return any(f"{kind.__module__}.{kind.__qualname__}" in names for kind in classes)


class RetryQueue:
    """Symbols waiting for their next attempt (``retries=``), earliest due first.

    Invariants: ``heap`` holds ``(due, seq, position, symbol, calls, last)``: ``due`` in the engine's
    clock, ``seq`` a tie-breaker that grows with each push (symbols are never compared), ``calls`` the
    calls of the symbol that already failed, ``last`` its last ERROR result (what it ends as if the batch
    stops before it succeeds); ``tracker.retrying == len(heap)`` after every push and pop.
    """

    __slots__ = ("heap", "_seq", "_random", "_retry_on_failed", "_retries", "_retry_on", "_backoff",
                 "_clock", "_tracker", "_publisher", "_token", "_job_id")

    def __init__(self, retries: int, retry_on: tuple[type[BaseException], ...], backoff: float,
                 clock: Callable[[], float], tracker: ProgressTracker, publisher: Publisher,
                 token: CancellationToken, job_id: Any) -> None:
        self.heap: list[tuple[float, int, int, Any, int, SymbolResult]] = []
        self._seq = 0
        self._random: random.Random | None = None  # the jitter (made on first use: 2.5 KB)
        self._retry_on_failed = False  # retry_on's instance check raised (logged once)
        self._retries = retries
        self._retry_on = retry_on
        self._backoff = backoff
        self._clock = clock
        self._tracker = tracker
        self._publisher = publisher
        self._token = token
        self._job_id = job_id

    def __len__(self) -> int:
        return len(self.heap)

    def sift(self, ran: list[SymbolResult], start: int, attempts: int) -> list[SymbolResult]:
        """Of a finished task's results, return the final outcomes (their ``attempts`` set on a retry)
        and schedule the failures that get another attempt."""
        retries, retry_on = self._retries, self._retry_on
        error_status = ResultStatus.ERROR
        calls = attempts + 1
        finals: list[SymbolResult] = []
        scheduled = False
        for offset, r in enumerate(ran):
            if (r.status is error_status and calls <= retries and self.retryable(r.error, retry_on)
                    and not self._token.is_cancelled):
                self.schedule(start + offset, r, calls, self.delay(calls))
                scheduled = True
                continue
            if calls > 1:
                r.attempts = calls
            finals.append(r)
        if scheduled and not finals:  # no completion to carry the new count: tell the views
            self._publisher.state(self._tracker.refresh())
        return finals

    def retryable(self, error: BaseException | None, retry_on: tuple[type[BaseException], ...]) -> bool:
        """``isinstance(error, retry_on)`` (or, for an exception standing in for one that could not cross
        a process boundary, the original's class: :func:`instance_of`) through the guard: a ``retry_on`` class whose
        ``__instancecheck__`` raises (anything) makes that failure final, as not retryable; logged once
        per batch."""
        return bool(guarded(instance_of, error, retry_on, on_error=self._retry_on_raised, default=False))

    def _retry_on_raised(self, exc: BaseException) -> None:
        if not self._retry_on_failed:
            self._retry_on_failed = True
            _log.error("job %s: retry_on's instance check raised %s; the failures it was asked about are not "
                       "retried (logged once per batch)\n%s", safe_str(self._job_id, 80), describe(exc, 500),
                       format_text(exc).rstrip("\n"))

    def delay(self, calls: int) -> float:
        """Seconds before attempt ``calls + 1``: ``backoff * 2**(calls - 1)``, scaled by a random factor
        in [0.5, 1] (jitter, so that symbols failing together do not come back together)."""
        backoff = self._backoff
        if backoff <= 0.0:
            return 0.0
        delay = backoff * 2.0 ** min(calls - 1, 64)
        if self._random is None:
            self._random = random.Random()
        return min(delay * (0.5 + 0.5 * self._random.random()), MAX_SECONDS)

    def schedule(self, position: int, last: SymbolResult, calls: int, delay: float) -> None:
        """Wait ``delay`` seconds before the next attempt at ``last.symbol`` (input ``position``)."""
        self._seq += 1
        heapq.heappush(self.heap, (self._clock() + delay, self._seq, position, last.symbol, calls, last))
        self._tracker.retrying = len(self.heap)

    def due_in(self, now: float) -> float:
        """Seconds until the earliest is due (0: due now). Only with a symbol waiting."""
        return max(0.0, self.heap[0][0] - now)

    def pop_due(self) -> tuple[int, Any, int, SymbolResult] | None:
        """``(position, symbol, calls, last)`` of the earliest, when it is due now; else None."""
        heap = self.heap
        if heap[0][0] > self._clock():
            return None
        _, _, position, symbol, calls, last = heapq.heappop(heap)
        self._tracker.retrying = len(heap)
        return position, symbol, calls, last

    def drain(self) -> list[tuple[SymbolResult, int]]:
        """At the end: every waiting symbol as ``(last, calls)`` (it ends as its last ERROR), emptied."""
        waiting = [(last, calls) for _, _, _, _, calls, last in self.heap]
        self.heap.clear()
        self._tracker.retrying = 0
        return waiting

    def release(self) -> None:
        self._random = None
