"""Ticker: the views' background refresh."""

from __future__ import annotations

import threading

from procengine_nb.views._ticker import Ticker


def test_ticker_calls_until_stopped_and_stops_on_error(no_thread_leak, caplog):
    ticked = threading.Event()
    ticker = Ticker(ticked.set, interval=0.001, name="test-ticker")
    ticker.start()
    assert ticked.wait(10)
    ticker.stop()
    assert not ticker.alive

    never = Ticker(ticked.set, interval=0.001, name="test-ticker-unstarted")
    never.stop()  # before start: nothing to join
    never.start()  # after stop: stays stopped
    assert not never.alive

    failed = threading.Event()

    def boom():
        failed.set()
        raise RuntimeError("refresh broke")

    broken = Ticker(boom, interval=0.001, name="test-ticker-broken")
    broken.start()
    assert failed.wait(10)
    broken._thread.join(10)
    assert not broken.alive and "refresh broke" in caplog.text
