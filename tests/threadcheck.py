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


DEPLOYMENT_MARK = "PROCENGINE_TEST_DEPLOYMENT"
"""Environment variable set in the processes of a test session's own deployments (the remote-host Dask
scheduler and worker, tests/_remote_dask.py): they live for the session and are not a test's children."""


def child_processes() -> list[psutil.Process]:
    """This process's children, without multiprocessing's/loky's process-wide resource trackers and the
    session's own deployments (see ``DEPLOYMENT_MARK``)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()) and DEPLOYMENT_MARK not in child.environ():
                out.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out
