"""Waiting for threads to end: what the no-thread-leak checks share (not a test module)."""

from __future__ import annotations

import threading
import time


def wait_for_threads(before: set[threading.Thread], timeout: float = 10.0) -> list[threading.Thread]:
    """Wait until no thread other than those in ``before`` is alive; return the leftovers."""
    deadline = time.monotonic() + timeout
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            return extra
        extra[0].join(0.05)
