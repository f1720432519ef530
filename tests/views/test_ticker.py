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


def test_a_stop_racing_a_start_on_another_thread_waits_for_it(no_thread_leak):
    # Thread.start() sets the new thread's ident before marking it started; a stop() landing in between
    # used to call join() there, which raises "cannot join thread before it is started" (the panel then
    # lost its final state). Hold the new thread in that gap and stop from here.
    ticker = Ticker(lambda: None, interval=0.001, name="test-ticker-race")
    in_gap, leave_gap = threading.Event(), threading.Event()

    class HeldStarted(threading.Event):
        def set(self) -> None:
            in_gap.set()
            leave_gap.wait(10)
            super().set()

    ticker._thread._started = HeldStarted()  # CPython's Thread sets it right after its ident
    starter = threading.Thread(target=ticker.start, name="test-ticker-starter")
    starter.start()
    assert in_gap.wait(10) and ticker._thread.ident is not None
    opener = threading.Timer(0.2, leave_gap.set)
    opener.start()
    ticker.stop()  # waits until start() is done, then joins the (stopping) thread
    assert leave_gap.is_set()  # it returned only after the thread was let out of the gap
    starter.join(10)
    opener.join(10)
    assert not ticker.alive
