"""The workloads: W0 returns at once (pure overhead), W1 sleeps 1 ms (I/O-like), W2 burns ~1 ms of
pure-Python CPU (holds the GIL). Module-level functions, so any backend can pickle them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["WORKLOADS", "Workload", "calibrate_w2", "w0", "w1", "w2"]

_W2_LOOPS = 20_000  # replaced by calibrate_w2()


def w0(symbol: Any) -> Any:
    """Returns at once: what remains is the framework's own cost per symbol."""
    return symbol


def w1(symbol: Any) -> Any:
    """Sleeps 1 ms (releases the GIL, like waiting for a network reply)."""
    time.sleep(0.001)
    return symbol


def w2(symbol: Any) -> int:
    """About 1 ms of pure-Python arithmetic (holds the GIL) once :func:`calibrate_w2` has run."""
    total = 0
    for i in range(_W2_LOOPS):
        total += i * i
    return total


def calibrate_w2(target_seconds: float = 0.001, rounds: int = 5) -> float:
    """Set the W2 loop count so one call takes ``target_seconds`` of CPU here; returns the measured CPU
    time per call. Thread CPU time, not the wall clock: other processes on a shared machine do not skew it."""
    global _W2_LOOPS
    _W2_LOOPS = 20_000
    samples = []
    for _ in range(rounds):
        start = time.thread_time()
        w2(None)
        samples.append(time.thread_time() - start)
    _W2_LOOPS = max(1, int(20_000 * target_seconds / max(min(samples), 1e-6)))
    start = time.thread_time()
    for _ in range(20):
        w2(None)
    return (time.thread_time() - start) / 20


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    fn: Callable[[Any], Any]
    n: int
    smoke_n: int


WORKLOADS = (
    Workload("W0-10k", "returns at once", w0, 10_000, 300),
    Workload("W0-100k", "returns at once", w0, 100_000, 1_000),
    Workload("W1", "1 ms sleep", w1, 2_000, 40),
    Workload("W2", "~1 ms pure-Python CPU", w2, 2_000, 40),
)
