"""Shared fixtures: fake clocks and a check that a test leaves no thread behind."""

from __future__ import annotations

import threading

import pytest
from threadcheck import wait_for_threads


class FakeClock:
    """A clock tests move by hand: ``clock()`` returns the current fake time in seconds."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def no_thread_leak():
    """Fail the test if it leaves a thread running (compares ``threading.enumerate()``)."""
    before = set(threading.enumerate())
    yield
    leftovers = wait_for_threads(before)
    assert not leftovers, f"threads left running: {[t.name for t in leftovers]}"
