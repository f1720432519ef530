"""A background refresh for views: call a function every few seconds until stopped.

Views (the panel, the terminal line) redraw on each snapshot, throttled; while no symbol completes they
still need elapsed/ETA/"Stopping…" to move. A :class:`Ticker` is that heartbeat: one daemon thread that
calls ``fn()`` every ``interval`` seconds and is joined by :meth:`stop`, so it never outlives its job.

>>> calls = []
>>> ticker = Ticker(lambda: calls.append(1), interval=0.01, name="doc-ticker")
>>> ticker.start()
>>> ticker.stop()
>>> ticker.alive
False
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from procengine_nb._safe import logger

__all__ = ["Ticker"]

_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)


class Ticker:
    """Calls ``fn()`` every ``interval`` seconds on a daemon thread named ``name``.

    ``start()`` starts the thread (once); ``stop()`` ends it and joins it (unless called from the ticker
    thread itself). If ``fn`` raises, the error is logged once and the ticker stops: a broken refresh
    must not flood the log ten times a second.
    """

    def __init__(self, fn: Callable[[], object], *, interval: float, name: str) -> None:
        self._fn = fn
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        # start() holds it until the thread has fully started, so a stop() from another thread never
        # joins a thread caught half-way (ident set, not yet marked started: join() would raise)
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; a ticker already stopped stays stopped."""
        with self._lock:
            if not self._stop.is_set():
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it to end (safe before ``start`` and from the thread itself)."""
        with self._lock:
            self._stop.set()
            started = self._thread.ident is not None
        if started and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:
                _log.exception("%s: refresh failed; it stops here", self._thread.name)
                return
