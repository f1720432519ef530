"""Stalls: which running symbols have run far longer than symbols usually take (``stalled()``)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from operator import attrgetter
from typing import Any

from procengine_nb.backends.base import BatchExecutor
from procengine_nb.models import SymbolResult

from .task import Task

__all__ = ["StallWatch"]

_DURATIONS_KEPT = 1001  # completed durations the stall threshold's median is taken over (the latest)
_DURATIONS_SAMPLED = 8  # of a chunk's durations, at most about this many are kept (a strided sample)
_STALL_FACTOR = 5.0  # stall_after=None: this many times the median duration...
_STALL_MIN_SECONDS = 10.0  # ...and at least this long
_duration_of = attrgetter("duration_ms")


class StallWatch:
    """The threshold of a stall and the symbols past it.

    Invariant: ``durations`` holds the latest completed symbols' durations (ms), at most
    ``_DURATIONS_KEPT``, at most about ``_DURATIONS_SAMPLED`` of each chunk (written by the batch's thread
    only, read from any thread through a copy).
    """

    __slots__ = ("durations", "stall_after")

    def __init__(self, stall_after: float | None) -> None:
        self.durations: deque[float] = deque(maxlen=_DURATIONS_KEPT)
        self.stall_after = stall_after

    def sample(self, chunk: list[SymbolResult]) -> None:
        """Keep a strided sample of a finished chunk's durations (every symbol would cost ~2% on tiny ones)."""
        count = len(chunk)
        self.durations.extend(map(_duration_of, chunk if count <= _DURATIONS_SAMPLED else
                                  chunk[::count // _DURATIONS_SAMPLED]))

    def threshold(self) -> float:
        """Seconds after which a running symbol counts as stalled: ``stall_after``, else five times the
        median duration of the latest completed symbols (the last 1,001 of a sample: at most about 8
        of each chunk), at least 10 s."""
        if self.stall_after is not None:
            return self.stall_after
        durations = sorted(self.durations.copy())
        if not durations:
            return _STALL_MIN_SECONDS
        return max(_STALL_MIN_SECONDS, _STALL_FACTOR * durations[len(durations) // 2] / 1000.0)

    def stalled(self, inflight: dict[Future[Any], Task], now: float,
                executor: BatchExecutor | None = None) -> list[tuple[Any, float]]:
        """``(symbol, seconds_running)`` of the tasks in ``inflight`` (a copy) running longer than the
        threshold, longest first: the symbol a task reports running (``Task.running``), else the one the
        backend reads from its worker (``executor.running_since``: processes), else each of the task's
        symbols with the task's running time (``Task.started_at``)."""
        threshold = self.threshold()
        found: list[tuple[int, Any, float]] = []
        for future, task in inflight.items():
            if future.done():
                continue
            running = task.running
            if running is not None:  # which symbol runs, and since when
                index, at = running
                if index < len(task.symbols) and now - at > threshold:
                    found.append((task.start + index, task.symbols[index], now - at))
                continue
            since = None if executor is None else executor.running_since(future)
            if since is not None:  # read from the worker (processes): which symbol, for how long
                index, seconds = since
                if index < len(task.symbols) and seconds > threshold:
                    found.append((task.start + index, task.symbols[index], seconds))
            elif task.started_at is not None and now - task.started_at > threshold:  # the chunk's start
                seconds = now - task.started_at
                found.extend((task.start + offset, symbol, seconds) for offset, symbol in enumerate(task.symbols))
        found.sort(key=lambda item: (-item[2], item[0]))
        return [(symbol, seconds) for _, symbol, seconds in found]

    def release(self) -> None:
        """After the end: keep nothing (the threshold is then the minimum)."""
        self.durations = deque(maxlen=1)
        self.stall_after = None
