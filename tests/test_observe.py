"""One way to observe a batch: the publisher's fan-out, its guard, views on a blocking batch, the handle's
Future, and the partial result an interrupt leaves."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import pytest
from test_properties import assert_accounted

from procengine_nb import JobView, ProcessingEngine, ResultStatus
from procengine_nb.observe import MAX_LOGGED_FAILURES, Publisher

WAIT = 30


class Recording:
    """A view that records what it is told, and on which thread."""

    def __init__(self) -> None:
        self.updates: list = []
        self.failures: list = []
        self.finished: list = []
        self.waited_on: list[str] = []

    def update(self, progress):
        self.updates.append(progress)

    def failed(self, result):
        self.failures.append((result, len(self.updates)))

    def finish(self, result, error):
        self.finished.append((result, error))

    def waited(self):
        self.waited_on.append(threading.current_thread().name)


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken too")


class CustomBase(BaseException):
    pass


def fail_odd(symbol):
    if symbol % 2:
        raise ValueError(f"odd {symbol}")
    return symbol


def test_a_view_watches_a_blocking_batch_and_sees_failures_as_they_happen():
    view = Recording()
    assert isinstance(view, JobView)
    result = ProcessingEngine(fail_odd, max_workers=2, chunk_size=1).process_batch(range(10), views=[view])
    assert_accounted(list(range(10)), result)
    assert sorted(r.symbol for r, _ in view.failures) == [1, 3, 5, 7, 9]
    # each failure arrives before the end, not in a table after it
    assert all(seen < len(view.updates) for _, seen in view.failures)
    assert view.finished == [(result, None)]
    assert view.updates[-1] is result.progress and result.progress.finished


@pytest.mark.parametrize(
    "raised",
    [StrRaises(), SystemExit(3), CustomBase("odd"), GeneratorExit(), RuntimeError("plain")],
    ids=["str-raises", "SystemExit", "custom-BaseException", "GeneratorExit", "RuntimeError"],
)
def test_a_listener_raising_anything_never_stops_the_batch_and_is_logged_a_bounded_number_of_times(raised, caplog):
    def callback(progress):
        raise raised

    class BrokenView(Recording):
        def update(self, progress):
            raise raised

        def failed(self, result):
            raise raised

    n = 2_000
    with caplog.at_level(logging.WARNING, logger="procengine_nb"):
        result = ProcessingEngine(fail_odd, max_workers=4).process_batch(
            range(n), progress_callback=callback, views=[BrokenView()])
    assert len(result) == n and not result.cancelled
    assert_accounted(list(range(n)), result)
    tracebacks = [r for r in caplog.records if "Traceback (most recent call last)" in r.getMessage()]
    assert 1 <= len(tracebacks) <= 2 * MAX_LOGGED_FAILURES  # per listener, not per symbol
    counts = [r.getMessage() for r in caplog.records if "times in this batch" in r.getMessage()]
    assert len(counts) == 2, counts  # one closing count per failing listener


def test_a_view_whose_finish_raises_still_lets_result_return():
    class BadFinish(Recording):
        def finish(self, result, error):
            raise SystemExit("no")

    handle = ProcessingEngine(str).start(["a", "b"], views=[BadFinish()])
    assert len(handle.result(WAIT)) == 2


def test_waited_runs_on_the_waiting_thread_after_the_end():
    view = Recording()
    release = threading.Event()
    handle = ProcessingEngine(lambda s: release.wait(WAIT), max_workers=1).start(["a"], views=[view])
    release.set()
    handle.result(WAIT)
    assert view.finished and view.waited_on == [threading.current_thread().name]

    async def wait_async():
        return await handle

    asyncio.run(wait_async())
    assert len(view.waited_on) == 2


def test_the_handle_exposes_its_future_for_concurrent_futures_and_asyncio():
    release = threading.Event()
    handle = ProcessingEngine(lambda s: release.wait(WAIT) and s, max_workers=2).start(["a", "b"])
    done, pending = concurrent.futures.wait([handle.future], timeout=0)
    assert not done and pending == {handle.future}
    release.set()

    async def via_asyncio():
        return await asyncio.wrap_future(handle.future)

    result = asyncio.run(via_asyncio())
    assert result is handle.result(WAIT) and sorted(r.value for r in result) == ["a", "b"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_escaping_the_batch_keeps_the_partial_result(interrupt, no_thread_leak):
    """An interrupt raised in a callback goes through, cancels the batch, and the partial result is
    attached to the exception (blocking call) and kept on the handle (background job)."""
    seen = []

    def callback(progress):
        seen.append(progress)
        if progress.completed_symbols == 3:
            raise interrupt()

    if interrupt is KeyboardInterrupt:  # only an interrupt passes the guard: it is the user's Ctrl-C
        with pytest.raises(KeyboardInterrupt) as info:
            ProcessingEngine(str, max_workers=1, chunk_size=1).process_batch(range(10), progress_callback=callback)
        partial = info.value.partial_result
        assert partial.cancelled and len(partial) >= 3
        assert_accounted(list(range(10)), partial)

        handle = ProcessingEngine(str, max_workers=1, chunk_size=1).start(range(10), progress_callback=callback)
        with pytest.raises(KeyboardInterrupt):
            handle.result(WAIT)
        assert handle.partial_result is not None and handle.partial_result.cancelled
        assert_accounted(list(range(10)), handle.partial_result)
    else:  # anything else a callback raises is logged and the batch goes on
        result = ProcessingEngine(str, max_workers=1, chunk_size=1).process_batch(range(10), progress_callback=callback)
        assert len(result) == 10 and not result.cancelled


def test_partial_results_of_the_cancel_exception_is_real():
    from procengine_nb import CancellationToken, ProcessingCancelledException

    token = CancellationToken()
    token.cancel("stop")
    result = ProcessingEngine(str).process_batch(["a", "b"], cancellation_token=token)
    with pytest.raises(ProcessingCancelledException) as info:
        result.raise_if_cancelled()
    assert info.value.partial_results is result and info.value.reason == "stop"
    finished = ProcessingEngine(str).process_batch(["a"])
    assert finished.raise_if_cancelled() is finished


def test_views_must_be_views():
    with pytest.raises(TypeError, match="update"):
        ProcessingEngine(str).process_batch(["a"], views=[object()])
    with pytest.raises(TypeError, match="views must be an iterable"):
        ProcessingEngine(str).process_batch(["a"], views=3)


def test_a_publisher_after_the_end_gives_the_outcome_to_a_late_view():
    publisher = Publisher()
    publisher.finish(None, RuntimeError("crashed"))
    late = Recording()
    publisher.add(late)
    assert [(r, str(e)) for r, e in late.finished] == [(None, "crashed")]


def test_failed_results_are_published_for_timeouts_too():
    view = Recording()
    release = threading.Event()
    result = ProcessingEngine(lambda s: release.wait(WAIT) if s == "slow" else s, max_workers=2,
                              timeout=0.05).process_batch(["slow", "fast"], views=[view])
    release.set()
    assert [r.symbol for r, _ in view.failures] == ["slow"]
    assert [r.status for r in result if r.symbol == "slow"] == [ResultStatus.ERROR]


def test_a_view_attached_after_the_start_still_gets_every_failure_once():
    """run() attaches its panel just after start(): symbols that failed at once must still be listed, once
    each, and the later ones once too (no failure lost or doubled at the moment of attaching)."""
    release = threading.Event()

    def processor(symbol):
        if symbol == "gate":
            assert release.wait(WAIT)
            return symbol
        if symbol.startswith("bad"):
            raise ValueError(symbol)
        return symbol

    symbols = [f"bad-early-{i}" for i in range(5)] + ["gate"] + [f"bad-late-{i}" for i in range(3)]
    five_failed = threading.Event()
    engine = ProcessingEngine(processor, max_workers=1, chunk_size=1)
    handle = engine.start(symbols, progress_callback=lambda p: p.errors_count >= 5 and five_failed.set())
    try:
        assert five_failed.wait(WAIT)
        view = Recording()
        handle.attach(view)  # (at least) four of the five early failures were published before this
        release.set()
        result = handle.result(timeout=WAIT)
    finally:
        release.set()
        engine.close()
    assert sorted(r.symbol for r, _ in view.failures) == sorted(r.symbol for r in result.errors)
    assert len(view.failures) == 8


def test_attaching_while_failures_are_published_loses_and_doubles_none():
    publisher = Publisher()
    from procengine_nb.models import SymbolResult

    failures = [SymbolResult(i, ResultStatus.ERROR, error=ValueError(i)) for i in range(3000)]
    views = [Recording() for _ in range(20)]
    reached = [threading.Event() for _ in views]

    def publish():
        for i, result in enumerate(failures):
            if i % 150 == 0:
                reached[i // 150].set()  # and go on publishing: the view is added while this runs
            publisher.failed(result)

    thread = threading.Thread(target=publish)
    thread.start()
    for view, event in zip(views, reached, strict=True):  # each attached mid-stream, later and later
        assert event.wait(WAIT)
        publisher.add(view)
    thread.join(WAIT)
    for view in views:
        assert sorted(r.symbol for r, _ in view.failures) == list(range(3000))


def test_the_end_during_the_replay_of_a_late_view_doubles_no_failure():
    """Issue 19: a view attached while a fast-failing batch runs gets the earlier failures replayed on the
    attaching thread; the batch may end in the middle of that replay. No ``failed`` may reach the view
    after its ``finish`` (the panel rebuilt its log from the result there, so a later one counted twice:
    "114,896 x PermissionError" for 60,000 failures)."""
    from procengine_nb.models import BatchResult, SymbolResult

    failures = [SymbolResult(i, ResultStatus.ERROR, error=PermissionError(i)) for i in range(200)]
    publisher = Publisher()
    for result in failures:
        publisher.failed(result)
    parked, finishing = threading.Event(), threading.Event()
    order: list[str] = []

    class Late(Recording):
        def failed(self, result):
            order.append("failed")
            if result.symbol == 10:  # the replay is parked here while the batch ends on another thread
                parked.set()
                finishing.wait(0.5)  # fixed: the end waits for this call (bounded: it never arrives then)
            super().failed(result)

        def finish(self, result, error):
            order.append("finish")
            finishing.set()
            super().finish(result, error)

    view = Late()
    attach = threading.Thread(target=publisher.add, args=(view,))
    attach.start()
    assert parked.wait(WAIT)
    publisher.finish(BatchResult(failures, unprocessed=[]), None)
    attach.join(WAIT)
    assert order.count("finish") == 1
    assert "failed" not in order[order.index("finish"):], "a failure was replayed after the end"
    assert len(view.failures) == len({r.symbol for r, _ in view.failures}) <= 200
