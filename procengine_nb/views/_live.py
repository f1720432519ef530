"""What every live view shares: when to redraw (a throttle plus a heartbeat) and which times to show.

A view (the notebook panel, the terminal line) gets a snapshot after every symbol and must not redraw
that often; while no symbol completes, elapsed/ETA must still move; the end is always drawn. A
:class:`Throttle` decides when to call the view's ``render(now)``: at once when the last render is at
least ``min_interval`` old, otherwise later from its :class:`~procengine_nb.views._ticker.Ticker`, which
also re-renders every ``refresh_interval`` while nothing arrives. :func:`shown_times` turns a snapshot
into the elapsed/ETA to show at ``now``: time moves on between snapshots, and a stopped job has no ETA.

>>> now = [0.0]
>>> drawn = []
>>> throttle = Throttle(drawn.append, min_interval=0.1, clock=lambda: now[0], ticker_name=None)
>>> throttle.offer(); throttle.offer()   # the second one is within 0.1 s: kept for later
>>> now[0] = 0.1; throttle.tick()
>>> drawn
[0.0, 0.1]
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from procengine_nb._validation import check_seconds
from procengine_nb.progress import ProcessingProgress
from procengine_nb.views._format import JobState
from procengine_nb.views._ticker import Ticker

__all__ = ["Throttle", "check_interval", "read_handle", "shown_times"]


def read_handle(handle: Any, method: str, *args: Any) -> list[Any]:
    """``handle.method(*args)`` as a list (the running or stalled symbols), or [] when there is no handle,
    it lacks the method, or the call fails: it reads the batch's bookkeeping racily, and a render must
    never break on it.

    >>> read_handle(None, "stalled")
    []
    """
    fn = getattr(handle, method, None)
    if not callable(fn):
        return []
    try:
        return list(fn(*args))
    except Exception:
        return []


def check_interval(value: object, label: str) -> float:
    """``value`` as a finite number of seconds >= 0 that the OS timers take (see ``check_seconds``),
    or a TypeError/ValueError naming ``label``: a huge interval must not kill the refresh thread later."""
    return float(check_seconds(value, label))


def shown_times(progress: ProcessingProgress, state: JobState, *, since_snapshot: float,
                ended: bool) -> tuple[float, float | None]:
    """``(elapsed_ms, eta_ms)`` to show ``since_snapshot`` seconds after ``progress`` arrived.

    While the job runs, both move with the clock (the ETA never below 0; while paused only the elapsed
    time moves); once it ended (or the snapshot is the final one) the snapshot's figures stand; a
    cancelled or failed job has no ETA.

    >>> p = ProcessingProgress(total_symbols=4, completed_symbols=1, elapsed_time_ms=1000,
    ...                        estimated_remaining_ms=3000)
    >>> shown_times(p, JobState.RUNNING, since_snapshot=0.5, ended=False)
    (1500.0, 2500.0)
    >>> shown_times(p, JobState.CANCELLED, since_snapshot=0.5, ended=True)
    (1000.0, None)
    """
    elapsed_ms = float(progress.elapsed_time_ms)
    eta_ms = progress.estimated_remaining_ms
    if state in (JobState.CANCELLED, JobState.FAILED):
        return elapsed_ms, None  # a stopped job has no time remaining to show
    if ended or progress.finished:
        return elapsed_ms, eta_ms
    drift = max(0.0, since_snapshot) * 1000.0
    if state is JobState.PAUSED:  # paused time counts in elapsed, not in the time remaining
        return elapsed_ms + drift, eta_ms
    return elapsed_ms + drift, None if eta_ms is None else max(0.0, eta_ms - drift)


class Throttle:
    """Calls ``render(now)`` at most every ``min_interval`` seconds, and every ``refresh_interval``
    while nothing new arrives (from a ticker thread named ``ticker_name``; None: no thread, the owner
    calls :meth:`tick`). Every method takes :attr:`lock`, the lock ``render`` runs under: a view keeps
    its own state under the same lock.

    - :meth:`offer`: something new to show; rendered now, or marked pending for the next tick.
    - :meth:`render_now`: render at once whatever the throttle (the Stop click, the end).
    - :meth:`end`: no more renders from the throttle; stops and joins the ticker.
    """

    def __init__(self, render: Callable[[float], object], *, min_interval: float,
                 refresh_interval: float | None = None, clock: Callable[[], float],
                 ticker_name: str | None) -> None:
        self.lock = threading.RLock()
        """Held while rendering; views guard their state with it."""
        self._render = render
        self._min_interval = min_interval
        self._refresh_interval = min_interval if refresh_interval is None else refresh_interval
        self._clock = clock
        self._ticker_name = ticker_name
        self._ticker: Ticker | None = None
        self._last = -math.inf
        self._pending = False
        self._ended = False
        self.renders = 0
        """How many times ``render`` was called."""

    @property
    def ended(self) -> bool:
        """True once :meth:`end` was called."""
        return self._ended

    def offer(self) -> None:
        """New figures: render now if the last render is ``min_interval`` old, else at the next tick."""
        start = None
        with self.lock:
            if self._ended:
                return
            now = self._clock()
            if now - self._last >= self._min_interval:
                self._call(now)
            else:
                self._pending = True
            if self._ticker_name is not None and self._ticker is None:
                start = self._ticker = Ticker(self.tick, interval=max(self._min_interval, 0.01),
                                              name=self._ticker_name)
        if start is not None:
            start.start()

    def tick(self) -> None:
        """Render if something is pending and ``min_interval`` passed, or ``refresh_interval`` passed."""
        with self.lock:
            if self._ended:
                return
            now = self._clock()
            since = now - self._last
            if (self._pending and since >= self._min_interval) or since >= self._refresh_interval:
                self._call(now)

    def render_now(self) -> None:
        """Render at once, whatever the throttle (still nothing after :meth:`end`)."""
        with self.lock:
            if not self._ended:
                self._call(self._clock())

    def forget_last(self) -> None:
        """Let the next :meth:`offer` render at once (e.g. after a render that is not a snapshot)."""
        with self.lock:
            self._last = -math.inf

    def end(self) -> None:
        """Stop rendering from the throttle and join the ticker (call it without holding :attr:`lock`:
        the ticker may be waiting for it)."""
        with self.lock:
            self._ended = True
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()

    @property
    def ticker_alive(self) -> bool:
        """True while the refresh thread runs."""
        ticker = self._ticker
        return ticker is not None and ticker.alive

    def _call(self, now: float) -> None:
        self._last = now
        self._pending = False
        self.renders += 1
        self._render(now)
