"""A task in flight: the named record of one chunk handed to the executor, and the hooks that mark it.

The hooks run on a worker (where workers share memory) or on the executor's side (Dask: from the workers'
reports); each writes one field of its own task, read by the batch's thread and by ``stalled()``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from procengine_nb.models import SymbolResult

__all__ = ["Hooks", "Task", "mark_start", "mark_started", "mark_symbol"]


class Task:
    """One chunk in flight: what it covers and what the loop knows of it (the loop's only record of it).

    Invariants: ``start:stop`` are the input positions it covers and ``symbols`` has ``stop - start``
    symbols (a retry covers one); ``attempts`` and ``last`` go together: a first try has ``0`` and None,
    a retry the count of calls of its single symbol that already failed and that symbol's last ERROR
    result; ``started_at`` and ``running`` are written only by the hooks below, once the task runs.
    """

    __slots__ = ("start", "stop", "symbols", "timed", "started_at", "attempts", "last", "running", "collected")

    def __init__(self, start: int, stop: int, symbols: Any, timed: bool, attempts: int,
                 last: SymbolResult | None) -> None:
        self.start = start
        self.stop = stop
        self.symbols = symbols
        self.timed = timed
        """True when ``timeout=`` times it from its start (see ``timeouts.py``)."""
        self.started_at: float | None = None
        """Its start in the engine's clock (None: not seen yet); recorded where workers share memory or
        report their starts (``stalled()`` reads it), or by the timeout watch when it asks the backend."""
        self.attempts = attempts
        self.last = last
        self.running: tuple[int, float] | None = None
        """``(index, since)`` of the symbol running, where the backend reports each symbol (coroutines)."""
        self.collected: list[SymbolResult] | None = None
        """Where workers share memory and run the sync runner: the list its worker appends the results to
        (``Chunk.results``); once ``started_at`` is set, its length is the index of the symbol running."""


def mark_started(task: Task, clock: Callable[[], float], wake: Callable[[], None]) -> None:
    """``Chunk.on_start`` of a timed task on a backend whose workers share memory: record the start (in
    the engine's clock) and wake the loop to time it."""
    task.started_at = clock()
    wake()


def mark_start(task: Task, clock: Callable[[], float]) -> None:
    """``Chunk.on_start`` of an untimed task where workers share memory: record its start (in the engine's
    clock) for ``stalled()``, without waking the loop."""
    task.started_at = clock()


def mark_symbol(task: Task, clock: Callable[[], float], index: int) -> None:
    """``Chunk.on_symbol`` where symbols are coroutines (each an await: the hook costs nothing next to it):
    which symbol of the task runs, and since when, for ``stalled()``."""
    task.running = (index, clock())


class Hooks:
    """Which of the marking functions a batch's tasks carry, decided once per batch.

    ``pushed``: the start of a timed task is pushed by its worker (and wakes the loop); else ``stamped``:
    its start is recorded for ``stalled()`` only; ``per_symbol``: each symbol's start is reported too.
    None of them (a backend that cannot report): the task carries no hook (nothing on the hot path).
    """

    __slots__ = ("clock", "wake", "pushed", "stamped", "per_symbol")

    def __init__(self, clock: Callable[[], float], wake: Callable[[], None], *, pushed: bool, stamped: bool,
                 per_symbol: bool) -> None:
        self.clock = clock
        self.wake = wake
        self.pushed = pushed
        self.stamped = stamped
        self.per_symbol = per_symbol

    def of(self, task: Task) -> tuple[Callable[[], None] | None, Callable[[int], None] | None]:
        """``(on_start, on_symbol)`` for ``task``'s chunk."""
        if self.pushed:
            on_start: Callable[[], None] | None = partial(mark_started, task, self.clock, self.wake)
        elif self.stamped:
            on_start = partial(mark_start, task, self.clock)
        else:
            on_start = None
        return on_start, (partial(mark_symbol, task, self.clock) if self.per_symbol else None)
