"""Leftover threads and processes: what the leak checks share (not a test module)."""

from __future__ import annotations

import threading
import time

import psutil


def wait_for_threads(before: set[threading.Thread], timeout: float = 10.0) -> list[threading.Thread]:
    """Wait until no thread other than those in ``before`` is alive; return the leftovers."""
    deadline = time.monotonic() + timeout
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            return extra
        extra[0].join(0.05)


def child_processes() -> list[psutil.Process]:
    """This process's children, without multiprocessing's/loky's process-wide resource trackers."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out
