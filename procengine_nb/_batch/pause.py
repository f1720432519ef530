"""Pause: whether the batch hands out symbols, a flag any thread sets and the batch's loop applies."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Pause"]


class Pause:
    """Whether the batch hands out symbols (``handle.pause()`` / ``unpause()``), settable from any thread.

    Invariants: ``paused`` changes only under ``_lock``; each change calls ``_wake`` (the loop's
    completion queue), so the loop reacts without polling; the loop alone applies the change to the
    tracker and publishes it (the tracker keeps a single writer). A change made before the loop starts
    is seen when it starts (``attach`` reads the flag under the same lock).
    """

    __slots__ = ("_lock", "paused", "_wake")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.paused = False
        """True while no new symbol may be handed out."""
        self._wake: Callable[[], None] | None = None

    def set(self, paused: bool) -> bool:
        """Pause (True) or continue (False); True when this call changed the state."""
        with self._lock:
            if self.paused is paused:
                return False
            self.paused = paused
            wake = self._wake
        if wake is not None:
            wake()
        return True

    def attach(self, wake: Callable[[], None] | None) -> None:
        """Wake the loop with ``wake()`` on every change from now on (None: the loop is over)."""
        with self._lock:
            self._wake = wake
