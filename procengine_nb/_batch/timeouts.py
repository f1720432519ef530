"""The timeout watch (``timeout=``): each task's deadline counts from its own start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procengine_nb._safe import safe_repr
from procengine_nb._tracebacks import format_text
from procengine_nb.backends.base import BatchExecutor
from procengine_nb.models import ResultStatus, SymbolResult

from .outcomes import Outcomes
from .window import Window

__all__ = ["TimeoutWatch"]

_START_POLL = 0.02  # how often a backend that cannot tell the start of a task is asked (timeout= only)


class TimeoutWatch:
    """When the next timed task in the window reaches its deadline, and what happens when it does.

    Invariants: only tasks with ``timed`` are watched; a task's deadline is ``started_at + timeout``,
    never counted before ``started_at`` is known. ``pushed``: the workers record each start and wake the
    loop (threads, Dask's reports); else the watch asks the executor (``executor.started``) at most every
    ``_START_POLL`` seconds while a timed task has not been seen to start.
    """

    __slots__ = ("timeout", "pushed", "_window", "_outcomes", "_sift")

    def __init__(self, timeout: float, pushed: bool, window: Window, outcomes: Outcomes,
                 sift: Callable[[list[SymbolResult], int, int], list[SymbolResult]] | None) -> None:
        self.timeout = timeout
        self.pushed = pushed
        self._window = window
        self._outcomes = outcomes
        self._sift = sift
        """The retry queue's ``sift`` (None without ``retries=``): a timed-out symbol may get another attempt."""

    def next_wait(self, now: float, executor: BatchExecutor) -> float | None:
        """Seconds until the earliest deadline of a started task (None: no task started yet). Tasks not
        known to have started are asked about (``executor.started``) unless workers report it."""
        timeout, pushed = self.timeout, self.pushed
        earliest = None
        unstarted = False
        for future, task in self._window.inflight.items():
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

    def expire(self, now: float) -> None:
        """Give up on every task past its deadline: each of its symbols is a TimeoutError ERROR (or, with
        retries left, waits for its next attempt)."""
        timeout = self.timeout
        window = self._window
        late = [(f, task) for f, task in window.inflight.items()
                if task.timed and task.started_at is not None and now - task.started_at >= timeout]
        if not late:
            return
        window.give_up(late)
        sift = self._sift
        finals: list[SymbolResult] = []
        for future, _ in late:
            task = window.forget(future)
            ran = [_timed_out(symbol, timeout) for symbol in task.symbols]
            finals.extend(sift(ran, task.start, task.attempts) if sift is not None else ran)
        outcomes = self._outcomes
        outcomes.failed(finals)
        outcomes.check_budget()


def _timed_out(symbol: Any, timeout: float) -> SymbolResult:
    error = TimeoutError(f"symbol {safe_repr(symbol, 200)} did not finish within {timeout:g}s of starting")
    return SymbolResult(symbol, ResultStatus.ERROR, None, error, timeout * 1000.0, traceback=format_text(error))
