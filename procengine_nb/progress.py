"""Progress of a batch: the immutable snapshot views read, and the O(1) tracker that makes them.

The tracker is the *model* (counts, time, rate, ETA); views (the notebook panel, the terminal line, a
user's callback) only ever read :class:`ProcessingProgress` snapshots. The clock is injected, so tests
drive time instead of sleeping.

>>> clock = iter([0.0, 0.1, 0.2, 0.3]).__next__
>>> tracker = ProgressTracker(10, clock=clock)
>>> for _ in range(3):
...     snapshot = tracker.record("AAPL")
>>> snapshot.completed_symbols, round(snapshot.elapsed_time_ms), round(snapshot.estimated_remaining_ms)
(3, 300, 700)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import FrozenInstanceError, dataclass, fields
from typing import Any

from procengine_nb._safe import safe_repr, type_name
from procengine_nb._validation import check_callable, check_int, check_type

__all__ = ["ProcessingProgress", "ProgressCallback", "ProgressTracker"]


@dataclass(frozen=True, slots=True)
class ProcessingProgress:
    """An immutable snapshot of a batch's progress (slotted and frozen: no ``__dict__`` to write through).

    >>> p = ProcessingProgress(total_symbols=4, completed_symbols=1, elapsed_time_ms=250)
    >>> p.percentage, p.elapsed_time_ms
    (25.0, 250.0)
    >>> ProcessingProgress(total_symbols=0, completed_symbols=0).percentage
    100.0
    >>> p.completed_symbols = 2
    Traceback (most recent call last):
    dataclasses.FrozenInstanceError: cannot assign to field 'completed_symbols'
    """

    total_symbols: int
    """How many symbols the batch has."""
    completed_symbols: int = 0
    """How many have finished (succeeded, failed or stopped cooperatively)."""
    current_symbol: Any = None
    """The symbol that completed last (None before the first)."""
    errors_count: int = 0
    """How many completed symbols failed (status ERROR)."""
    elapsed_time_ms: float = 0.0
    """Milliseconds since the batch started (an int given here is kept as a float)."""
    estimated_remaining_ms: float | None = None
    """Estimated milliseconds until the batch ends; None while unknown, 0.0 when finished."""
    running_symbols: int = 0
    """How many symbols are handed to workers and not yet completed. In the final snapshot of a
    cancelled batch: how many were still running on workers when it returned without them."""
    rate_per_second: float = 0.0
    """Completions per second (smoothed when the tracker smooths)."""
    cancelled: bool = False
    """True once the batch's token has been cancelled."""
    finished: bool = False
    """True for the final snapshot of a batch."""
    total_known: bool = True
    """False while a lazy input's length is unknown (an iterator without ``total=``): then
    ``total_symbols`` counts the symbols drawn so far, and views show neither a percentage nor an ETA
    (``estimated_remaining_ms`` stays None). It turns True once the input is used up."""
    retrying: int = 0
    """How many symbols failed and wait for their next attempt (``retries=``); they are not counted
    as completed until their final outcome."""
    from_store: int = 0
    """How many of the completed symbols came from a ``store=`` without running (a rerun)."""
    paused: bool = False
    """True while the job is paused (``handle.pause()``): no new symbol starts, those running finish.
    Paused time counts in ``elapsed_time_ms`` but not in ``rate_per_second`` nor the ETA."""

    def __post_init__(self) -> None:
        for name in _COUNTS:
            value = check_int(getattr(self, name), name, minimum=0)
            if type(value) is not int:  # an int subclass's own methods stay out of every message
                object.__setattr__(self, name, int.__int__(value))
        if self.completed_symbols > self.total_symbols:
            raise ValueError(
                f"completed_symbols ({self.completed_symbols}) cannot exceed "
                f"total_symbols ({self.total_symbols})"
            )
        if self.from_store > self.completed_symbols:
            raise ValueError(
                f"from_store ({self.from_store}) cannot exceed completed_symbols ({self.completed_symbols})"
            )
        if self.errors_count > self.completed_symbols:
            raise ValueError(
                f"errors_count ({self.errors_count}) cannot exceed "
                f"completed_symbols ({self.completed_symbols})"
            )
        for name, allow_none in (("elapsed_time_ms", False), ("estimated_remaining_ms", True),
                                 ("rate_per_second", False)):
            value = getattr(self, name)
            if value is None and allow_none:
                continue
            what = "a number (int or float)" + (" or None" if allow_none else "")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be {what}, not {type_name(value)}")
            value = float(value)  # an int (or a float subclass) is kept as a plain float
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("cancelled", "finished", "total_known", "paused"):
            check_type(getattr(self, name), bool, name)

    @property
    def percentage(self) -> float:
        """Completed share in percent, 0.0 to 100.0 (100.0 for an empty batch). While ``total_known`` is
        False it is the share of the symbols drawn so far, not of the input: views do not show it then."""
        if self.total_symbols == 0:
            return 100.0
        return 100.0 * self.completed_symbols / self.total_symbols

    @property
    def remaining_symbols(self) -> int:
        """Symbols not completed yet."""
        return self.total_symbols - self.completed_symbols

    def __repr__(self) -> str:
        # never raises and stays short, whatever the current symbol is
        return (
            f"ProcessingProgress(total_symbols={self.total_symbols}, completed_symbols={self.completed_symbols}, "
            f"current_symbol={safe_repr(self.current_symbol, 200)}, errors_count={self.errors_count}, "
            f"elapsed_time_ms={self.elapsed_time_ms!r}, estimated_remaining_ms={self.estimated_remaining_ms!r}, "
            f"running_symbols={self.running_symbols}, rate_per_second={self.rate_per_second!r}, "
            f"cancelled={self.cancelled}, finished={self.finished}"
            + ("" if self.total_known else ", total_known=False")
            + (f", retrying={self.retrying}" if self.retrying else "")
            + (f", from_store={self.from_store}" if self.from_store else "")
            + (", paused=True)" if self.paused else ")")
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, tuple(getattr(self, name) for name in _FIELDS))


_FIELDS = tuple(f.name for f in fields(ProcessingProgress))
_COUNTS = tuple(f.name for f in fields(ProcessingProgress) if f.type == "int")


def _refuse_setattr(self: ProcessingProgress, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}" if name in _FIELDS
                              else f"cannot assign to {name!r}: a snapshot is immutable")


def _refuse_delattr(self: ProcessingProgress, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}" if name in _FIELDS
                              else f"cannot delete {name!r}: a snapshot is immutable")


# The frozen dataclass's own __setattr__ breaks on slotted classes for names that are not fields
# (CPython gh-90562: a TypeError from super()); these raise FrozenInstanceError for every name.
ProcessingProgress.__setattr__ = _refuse_setattr  # type: ignore[method-assign, assignment]
ProcessingProgress.__delattr__ = _refuse_delattr  # type: ignore[method-assign, assignment]


def _rebuild(*values: Any) -> ProcessingProgress:
    return ProcessingProgress(*values)


class _Builder:
    """A writable twin of :class:`ProcessingProgress` (the same slots in the same order, so an instance can
    become one by ``__class__`` assignment). Only :func:`_snapshot` uses it."""

    __slots__ = _FIELDS


def _snapshot(total: int, completed: int, current: Any, errors: int, elapsed_ms: float,
              eta_ms: float | None, running: int, rate: float, cancelled: bool,
              finished: bool, total_known: bool = True, retrying: int = 0,
              from_store: int = 0, paused: bool = False) -> ProcessingProgress:
    """The one way the tracker makes a snapshot. Valid by construction, so it skips ``__post_init__`` and
    the frozen ``__setattr__``: it fills a :class:`_Builder` and turns it into a ``ProcessingProgress``
    (about half the cost of writing the frozen slots through their descriptors; the engine makes one
    snapshot per symbol). Once returned, the snapshot is as immutable as any other."""
    made = _new(_Builder)
    made.total_symbols = total
    made.completed_symbols = completed
    made.current_symbol = current
    made.errors_count = errors
    made.elapsed_time_ms = elapsed_ms
    made.estimated_remaining_ms = eta_ms
    made.running_symbols = running
    made.rate_per_second = rate
    made.cancelled = cancelled
    made.finished = finished
    made.total_known = total_known
    made.retrying = retrying
    made.from_store = from_store
    made.paused = paused
    made.__class__ = ProcessingProgress  # type: ignore[assignment]
    return made  # type: ignore[return-value]


_new = object.__new__


ProgressCallback = Callable[[ProcessingProgress], None]
"""Called with a snapshot after every completed symbol and once more at the end."""


class ProgressTracker:
    """Counts completions and estimates time remaining in O(1) per update.

    The ETA is concurrency-aware: it divides the remaining symbols by the *rate of completions*
    (which already reflects how many workers run at once), not by a per-task duration. With
    ``smoothing=None`` the rate is the plain average since the start; with ``smoothing=alpha`` in
    (0, 1] the time per completion is an exponential moving average with tqdm-style bias correction,
    so the ETA follows changes of speed (alpha=0.3 is tqdm's default).

    Single writer: only the thread that runs the batch calls ``record``; snapshots are immutable and
    may be read from any thread.
    """

    def __init__(
        self,
        total: int,
        *,
        clock: Callable[[], float] = time.perf_counter,
        smoothing: float | None = None,
        total_known: bool = True,
    ) -> None:
        check_int(total, "total", minimum=0)
        if smoothing is not None:
            if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
                raise TypeError(f"eta_smoothing must be a number in (0, 1] or None, not {type(smoothing).__name__}")
            if not 0.0 < smoothing <= 1.0:
                raise ValueError(f"eta_smoothing must be in (0, 1], got {smoothing!r}")
        check_callable(clock, "clock")
        self.total = total
        """The batch's size; while ``total_known`` is False, the symbols drawn so far (the batch run raises
        it as it draws)."""
        self.total_known = total_known
        self.retrying = 0
        """Symbols waiting to retry (set by the batch run)."""
        self.completed = 0
        self.from_store = 0
        """Completed symbols whose results came from a store (set by :meth:`record_stored`)."""
        self.errors = 0
        self.running = 0
        self.current_symbol: Any = None
        self.cancelled = False
        self.paused = False
        """True while the batch is paused (set with :meth:`set_paused`)."""
        self._clock = clock
        self._smoothing = smoothing
        self._start = clock()
        self._paused_seconds = 0.0  # idle paused time of the pauses that ended
        self._idle_since: float | None = None  # clock reading when the current idle pause began
        self._last = 0.0  # active time (see _active) of the last completion
        self._ema: float = 0.0  # smoothed seconds per completion (uncorrected)
        self._ema_weight: float = 0.0  # 1 - (1 - alpha) ** updates, for bias correction
        self._snapshot = _snapshot(total, 0, None, 0, 0.0, 0.0 if total == 0 and total_known else None, 0, 0.0,
                                   False, False, total_known, 0)

    @property
    def snapshot(self) -> ProcessingProgress:
        """The latest snapshot (cheap; made by the last ``record``/``refresh``)."""
        return self._snapshot

    def set_paused(self, paused: bool, *, drained: bool = True) -> ProcessingProgress:
        """Start (True) or end (False) a pause at the current time and return the new snapshot.

        Paused time counts in ``elapsed_time_ms`` but not in the rate nor the ETA: they are made from the
        active time (elapsed minus the pauses), so a long pause does not make the batch look slow. A
        pause is left out of the active time only once ``drained`` (nothing runs any more: the symbols
        running when it began still work, and finish, during it); the batch calls this again with
        ``drained=True`` when its last running task ends.

        >>> clock = iter([0.0, 1.0, 1.0, 11.0, 12.0]).__next__
        >>> tracker = ProgressTracker(4, clock=clock)
        >>> _ = tracker.record("A")                      # 1 s for the first symbol
        >>> tracker.set_paused(True).paused
        True
        >>> snapshot = tracker.set_paused(False)         # 10 s paused
        >>> snapshot = tracker.record("B")               # 1 s more of work
        >>> snapshot.elapsed_time_ms, snapshot.rate_per_second, snapshot.estimated_remaining_ms
        (12000.0, 1.0, 2000.0)
        """
        check_type(paused, bool, "paused")
        now = self._clock()
        idle = paused and drained
        if idle and self._idle_since is None:
            self._idle_since = now
        elif not idle and self._idle_since is not None:
            self._paused_seconds += max(0.0, now - self._idle_since)
            self._idle_since = None
        self.paused = paused
        return self._make(now)

    @property
    def idle(self) -> bool:
        """True while paused and drained: the time that passes now is left out of the rate and the ETA."""
        return self._idle_since is not None

    def _active(self, now: float) -> float:
        """Seconds since the start without the idle paused time (never negative)."""
        active = now - self._start - self._paused_seconds
        if self._idle_since is not None:
            active -= now - self._idle_since
        return active if active > 0.0 else 0.0

    def record(self, symbol: Any, *, error: bool = False, count: int = 1) -> ProcessingProgress:
        """Count ``count`` completed symbols (the last being ``symbol``) and return the new snapshot."""
        if count != 1 and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        completed = self.completed + count
        if completed > self.total:
            raise ValueError(f"recorded {completed} completions for {self.total} symbols")
        self.completed = completed
        if error:
            self.errors += count
        self.current_symbol = symbol
        now = self._clock()
        active = self._active(now)
        if self._smoothing is not None:
            self._smooth((active - self._last) / count)
        self._last = active
        return self._make(now)

    def record_group(self, symbols: Sequence[Any], errors: Sequence[bool], *,
                     each: bool = True) -> Iterator[ProcessingProgress]:
        """Count symbols that completed together (one task that ran several) and yield a snapshot after
        each, in order, so a per-symbol callback still sees every count. ``errors[i]`` is True when
        ``symbols[i]`` failed.

        The group gets one clock reading and moves the smoothed rate once, by the group's time per
        symbol: timed one by one, the symbols of a chunk would look instant and the ETA would collapse.
        The counts are checked before anything is recorded; each snapshot is recorded as it is yielded.
        With ``each=False`` (nobody wants every snapshot) the group is recorded at once and only its
        last snapshot is yielded (the same one ``each=True`` ends with).

        >>> clock = iter([0.0, 0.4]).__next__
        >>> tracker = ProgressTracker(8, clock=clock)
        >>> [s.completed_symbols for s in tracker.record_group(["A", "B"], [False, True])]
        [1, 2]
        >>> tracker.snapshot.errors_count, round(tracker.snapshot.estimated_remaining_ms)
        (1, 1200)
        """
        count = len(symbols)
        if len(errors) != count:
            raise ValueError(f"record_group needs one error flag per symbol: {count} symbols, {len(errors)} flags")
        if self.completed + count > self.total:
            raise ValueError(f"recorded {self.completed + count} completions for {self.total} symbols")
        if not each and count > 1:
            return self._group(symbols[-1:], errors[-1:], before=count - 1, failed_before=sum(errors[:-1]))
        return self._group(symbols, errors)

    def _group(self, symbols: Sequence[Any], errors: Sequence[bool], before: int = 0,
               failed_before: int = 0) -> Iterator[ProcessingProgress]:
        """``before``/``failed_before``: symbols (failures) of the group counted without a snapshot."""
        if not symbols:
            return
        now = self._clock()
        active = self._active(now)
        if self._smoothing is not None:
            self._smooth((active - self._last) / (len(symbols) + before))
        self._last = active
        elapsed = now - self._start
        if elapsed < 0.0:
            elapsed = 0.0
        smoothed = self._ema / self._ema_weight if self._ema_weight > 0.0 else None
        elapsed_ms = elapsed * 1000.0
        total = self.total
        completed = self.completed
        failed = self.errors
        running = self.running
        cancelled = self.cancelled
        known = self.total_known
        retrying = self.retrying
        from_store = self.from_store
        paused = self.paused
        if before:
            completed += before
            failed += failed_before
            self.completed, self.errors = completed, failed
        for symbol, error in zip(symbols, errors, strict=True):
            completed += 1
            if error:
                failed += 1
                self.errors = failed
            self.completed = completed
            self.current_symbol = symbol
            per_symbol = smoothed if smoothed is not None else active / (completed - from_store)
            snapshot = _snapshot(total, completed, symbol, failed, elapsed_ms,
                                 (total - completed) * per_symbol * 1000.0 if known else None, running,
                                 1.0 / per_symbol if per_symbol else 0.0, cancelled, False, known, retrying,
                                 from_store, paused)
            self._snapshot = snapshot
            yield snapshot

    def record_stored(self, symbols: Sequence[Any]) -> Iterator[ProcessingProgress]:
        """Count symbols whose results came from a store (they did not run) and yield a snapshot after
        each. They count as completed, and as ``from_store``, but not toward the rate: the ETA is made
        from the symbols that ran.

        >>> tracker = ProgressTracker(4, clock=iter([0.0, 0.0, 1.0, 1.0]).__next__)
        >>> [s.from_store for s in tracker.record_stored(["A", "B"])]
        [1, 2]
        >>> snapshot = tracker.record("C")
        >>> snapshot.completed_symbols, snapshot.from_store, snapshot.estimated_remaining_ms
        (3, 2, 1000.0)
        """
        if self.completed + len(symbols) > self.total:
            raise ValueError(f"recorded {self.completed + len(symbols)} completions for {self.total} symbols")
        return self._stored(symbols)

    def _stored(self, symbols: Sequence[Any]) -> Iterator[ProcessingProgress]:
        if not symbols:
            return
        now = self._clock()
        for symbol in symbols:
            self.completed += 1
            self.from_store += 1
            self.current_symbol = symbol
            yield self._make(now)

    def refresh(self, *, finished: bool = False) -> ProcessingProgress:
        """Make a snapshot of the current state at the current time (running count, cancel, end)."""
        return self._make(self._clock(), finished=finished)

    def _smooth(self, seconds_per_symbol: float) -> None:
        # EMA of the time per completion (a clock going backwards counts as no time, never negative)
        alpha = self._smoothing
        assert alpha is not None
        if seconds_per_symbol < 0.0:
            seconds_per_symbol = 0.0
        self._ema = alpha * seconds_per_symbol + (1.0 - alpha) * self._ema
        self._ema_weight = alpha + (1.0 - alpha) * self._ema_weight

    def _seconds_per_symbol(self, active: float) -> float | None:
        """Seconds per computed symbol over the ``active`` (unpaused) time, or the smoothed value."""
        computed = self.completed - self.from_store  # symbols from a store did not run: not in the rate
        if computed == 0:
            return None
        if self._smoothing is not None and self._ema_weight > 0.0:
            return self._ema / self._ema_weight
        return active / computed

    def _make(self, now: float, finished: bool = False) -> ProcessingProgress:
        elapsed = now - self._start
        if elapsed < 0.0:
            elapsed = 0.0
        remaining = self.total - self.completed
        per_symbol = self._seconds_per_symbol(self._active(now))
        if finished or (remaining == 0 and self.total_known):
            eta: float | None = 0.0
        elif per_symbol is None or not self.total_known:
            eta = None
        else:
            eta = remaining * per_symbol * 1000.0  # per_symbol >= 0: see _smooth
        snapshot = _snapshot(self.total, self.completed, self.current_symbol, self.errors, elapsed * 1000.0, eta,
                             self.running, 1.0 / per_symbol if per_symbol else 0.0, self.cancelled, finished,
                             self.total_known, self.retrying, self.from_store, self.paused)
        self._snapshot = snapshot
        return snapshot
