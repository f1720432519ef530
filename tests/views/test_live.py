"""The views' shared throttle and shown times (one implementation for the panel and the terminal line)."""

from __future__ import annotations

import pytest

from procengine_nb import ProcessingProgress
from procengine_nb.views._format import JobState
from procengine_nb.views._live import Throttle, check_interval, shown_times


def test_throttle_renders_at_once_then_at_most_every_min_interval(fake_clock):
    drawn = []
    throttle = Throttle(drawn.append, min_interval=0.1, refresh_interval=0.5, clock=fake_clock, ticker_name=None)
    throttle.offer()
    for _ in range(20):
        fake_clock.advance(0.001)
        throttle.offer()
    assert len(drawn) == 1
    throttle.tick()
    assert len(drawn) == 1  # pending, but min_interval not reached
    fake_clock.advance(0.1)
    throttle.tick()
    assert len(drawn) == 2
    fake_clock.advance(0.3)
    throttle.tick()  # nothing pending, refresh_interval not reached
    assert len(drawn) == 2
    fake_clock.advance(0.2)
    throttle.tick()  # refresh: time moves on screen though nothing arrived
    assert len(drawn) == 3 and throttle.renders == 3


def test_throttle_end_stops_renders_and_joins_its_ticker(fake_clock, no_thread_leak):
    drawn = []
    throttle = Throttle(drawn.append, min_interval=0.01, clock=fake_clock, ticker_name="test-throttle")
    throttle.offer()
    assert throttle.ticker_alive
    throttle.end()
    assert not throttle.ticker_alive and throttle.ended
    count = len(drawn)
    fake_clock.advance(1)
    throttle.offer()
    throttle.tick()
    throttle.render_now()
    assert len(drawn) == count


def test_render_now_ignores_the_throttle(fake_clock):
    drawn = []
    throttle = Throttle(drawn.append, min_interval=10, clock=fake_clock, ticker_name=None)
    throttle.offer()
    throttle.render_now()
    assert len(drawn) == 2


def test_shown_times_move_while_running_and_stop_at_the_end():
    p = ProcessingProgress(total_symbols=10, completed_symbols=5, elapsed_time_ms=5000, estimated_remaining_ms=1000)
    assert shown_times(p, JobState.RUNNING, since_snapshot=0.25, ended=False) == (5250.0, 750.0)
    assert shown_times(p, JobState.RUNNING, since_snapshot=3, ended=False) == (8000.0, 0.0)  # never below 0
    assert shown_times(p, JobState.STOPPING, since_snapshot=1, ended=False) == (6000.0, 0.0)
    assert shown_times(p, JobState.DONE, since_snapshot=3, ended=True) == (5000.0, 1000)
    for stopped in (JobState.CANCELLED, JobState.FAILED):
        assert shown_times(p, stopped, since_snapshot=3, ended=True) == (5000.0, None)
    unknown = ProcessingProgress(total_symbols=10, completed_symbols=0, elapsed_time_ms=10)
    assert shown_times(unknown, JobState.RUNNING, since_snapshot=1, ended=False) == (1010.0, None)


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (float("nan"), ValueError),
                                             (float("inf"), ValueError), ("1", TypeError), (True, TypeError)])
def test_check_interval_refuses_bad_values(value, error):
    with pytest.raises(error, match="gap"):
        check_interval(value, "gap")
