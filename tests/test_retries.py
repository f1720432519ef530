"""Retries (retries=, retry_on=, backoff=) and timeouts that count from each symbol's own start."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_properties import Recorder, assert_accounted

from procengine_nb import CancellationToken, ProcessingEngine, ResultStatus

WAIT = 30  # seconds: a safety net only


class Flaky:
    """Fails each symbol's first ``failures[symbol]`` calls with ``error`` (thread-safe call counts)."""

    def __init__(self, failures: dict, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls: Counter = Counter()
        self.order: list = []
        self._lock = threading.Lock()

    def __call__(self, symbol):
        with self._lock:
            self.calls[symbol] += 1
            self.order.append(symbol)
            call = self.calls[symbol]
        if call <= self.failures.get(symbol, 0):
            raise self.error(f"{symbol} failed (call {call})")
        return symbol


class Views:
    """A view recording the snapshots and failed results it gets."""

    def __init__(self) -> None:
        self.snapshots: list = []
        self.failed_results: list = []

    def update(self, progress) -> None:
        self.snapshots.append(progress)

    def failed(self, result) -> None:
        self.failed_results.append(result)

    def finish(self, result, error) -> None:
        pass


def test_a_flaky_symbol_is_retried_and_only_its_final_outcome_is_a_result(no_thread_leak):
    flaky = Flaky({"b": 2, "d": 5})
    recorder, view = Recorder(), Views()
    symbols = ["a", "b", "c", "d", "e"]
    result = ProcessingEngine(flaky, max_workers=2, retries=2).process_batch(
        symbols, progress_callback=recorder, views=[view])
    assert_accounted(symbols, result, recorder.snapshots, retries=2)
    by_symbol = {r.symbol: r for r in result}
    assert by_symbol["b"].ok and by_symbol["b"].attempts == 3
    assert by_symbol["d"].status is ResultStatus.ERROR and by_symbol["d"].attempts == 3
    assert isinstance(by_symbol["d"].error, ConnectionError) and "call 3" in str(by_symbol["d"].error)
    assert all(by_symbol[s].attempts == 1 for s in "ace")
    assert flaky.calls == Counter({"a": 1, "b": 3, "c": 1, "d": 3, "e": 1})
    # only the final failure is counted and published
    assert result.progress.errors_count == 1
    assert [r.symbol for r in view.failed_results] == ["d"]
    assert max(p.retrying for p in recorder.snapshots) <= 2
    assert result.progress.retrying == 0


def test_retry_on_limits_which_exceptions_are_retried():
    flaky = Flaky({"a": 1, "b": 1}, error=KeyError)
    result = ProcessingEngine(flaky, max_workers=1, retries=3, retry_on=ConnectionError).process_batch(["a", "b"])
    assert [r.attempts for r in result] == [1, 1] and len(result.errors) == 2
    flaky = Flaky({"a": 1})
    result = ProcessingEngine(flaky, max_workers=1, retries=3, retry_on=(KeyError, OSError)).process_batch(["a"])
    assert result[0].ok and result[0].attempts == 2  # ConnectionError is an OSError


def test_a_waiting_retry_holds_no_worker_and_runs_after_its_due_time(fake_clock, no_thread_leak):
    flaky = Flaky({"a": 1})
    view = Views()
    engine = ProcessingEngine(flaky, max_workers=1, chunk_size=1, retries=1, backoff=100.0, clock=fake_clock)
    handle = engine.start(["a", "b", "c", "d"], views=[view])
    # one worker: while "a" waits 50-100 (fake) seconds to retry, b, c and d run
    deadline = time.monotonic() + WAIT
    while handle.progress.completed_symbols < 3 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert handle.progress.completed_symbols == 3 and handle.progress.retrying == 1
    assert flaky.order == ["a", "b", "c", "d"]
    assert not handle.done()
    assert any(p.retrying == 1 for p in view.snapshots)
    fake_clock.advance(100.0)  # the retry is due: the loop sees it within its longest wait (0.1 s)
    result = handle.result(timeout=WAIT)
    assert flaky.order == ["a", "b", "c", "d", "a"]
    assert result[-1].symbol == "a" and result[-1].ok and result[-1].attempts == 2
    assert_accounted(["a", "b", "c", "d"], result, retries=1)


def test_a_due_retry_waiting_for_a_free_slot_does_not_spin_the_batch_loop(fake_clock, no_thread_leak):
    # One worker, a window of 2 tasks: "a" fails once, then "b" (running) and "c" (queued) fill the
    # window while a's retry falls due. Until a slot frees, the loop must block on the completions, not
    # poll them with a zero timeout (that spin held the GIL and slowed the workers ~2x with 429 retries).
    release, b_started = threading.Event(), threading.Event()
    calls = Counter()

    def clock():
        calls["clock"] += 1
        return fake_clock()

    def processor(symbol):
        if symbol == "b":
            b_started.set()
        if symbol in "bc":
            release.wait(WAIT)
        return flaky(symbol)

    flaky = Flaky({"a": 1})
    engine = ProcessingEngine(processor, max_workers=1, chunk_size=1, retries=1, backoff=1.0, clock=clock)
    handle = engine.start(["a", "b", "c", "d"])
    try:
        assert b_started.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while handle.progress.retrying != 1 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert handle.progress.retrying == 1
        fake_clock.advance(1.0)  # a's retry is due (after 0.5-1 s), but b and c hold the window
        threading.Event().wait(0.15)  # the loop's longest timed wait (0.1 s) has passed: it saw the due time
        before = calls["clock"]
        threading.Event().wait(0.3)
        assert calls["clock"] - before <= 5, f"the batch loop polled {calls['clock'] - before} times in 0.3 s"
        assert not handle.done()
    finally:
        release.set()
    result = handle.result(timeout=WAIT)
    assert flaky.order == ["a", "b", "c", "a", "d"]
    assert {r.symbol: r.attempts for r in result} == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert_accounted(["a", "b", "c", "d"], result, retries=1)


def test_a_stop_does_not_wait_for_retries_they_end_as_their_last_error(no_thread_leak):
    flaky = Flaky({"a": 10, "b": 10})
    token = CancellationToken()
    view = Views()
    engine = ProcessingEngine(flaky, max_workers=2, retries=5, backoff=1000.0)  # real clock: ~500-1000 s
    handle = engine.start(["a", "b", "c"], cancellation_token=token, views=[view])
    deadline = time.monotonic() + WAIT
    # both failures wait for their retries and c has finished (c may run after a and b have failed)
    while (handle.progress.retrying < 2 or handle.progress.completed_symbols < 1) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert handle.progress.retrying == 2 and handle.progress.completed_symbols == 1
    started = time.monotonic()
    token.cancel("stop")
    result = handle.result(timeout=WAIT)
    assert time.monotonic() - started < 5
    assert result.cancelled
    by_symbol = {r.symbol: r for r in result}
    assert by_symbol["a"].status is ResultStatus.ERROR and by_symbol["a"].attempts == 1
    assert by_symbol["b"].attempts == 1 and by_symbol["c"].ok
    assert list(result.unprocessed) == []
    assert sorted(r.symbol for r in view.failed_results) == ["a", "b"]
    assert result.progress.errors_count == 2 and result.progress.retrying == 0
    assert_accounted(["a", "b", "c"], result, retries=5)


def test_max_errors_counts_final_failures_only():
    flaky = Flaky({s: 1 for s in range(10)})
    result = ProcessingEngine(flaky, max_workers=2, retries=1, max_errors=0).process_batch(range(10))
    assert not result.cancelled and all(r.ok and r.attempts == 2 for r in result)


def test_the_backoff_doubles_with_jitter():
    engine = ProcessingEngine(str, retries=5, backoff=1.0)
    from procengine_nb._batch import BatchRun
    from procengine_nb.models import ProcessingJob
    from procengine_nb.observe import Publisher

    batch = BatchRun(engine._settings, ProcessingJob(["a"]), Publisher(), CancellationToken())
    for calls in range(1, 6):
        delays = [batch._retries.delay(calls) for _ in range(200)]
        nominal = 2.0 ** (calls - 1)
        assert all(0.5 * nominal <= d <= nominal for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert batch._retries.delay(10**6) <= 1e10  # never an overflow
    assert ProcessingEngine(str, retries=1)._settings.backoff == 0.0


@pytest.mark.parametrize(("kwargs", "error", "needle"), [
    ({"retries": -1}, ValueError, "retries must be >= 0"),
    ({"retries": 1.5}, TypeError, "retries must be an int"),
    ({"retries": True}, TypeError, "retries must be an int"),
    ({"retry_on": int}, TypeError, "retry_on must be an exception class"),
    ({"retry_on": (ValueError, "x")}, TypeError, "retry_on must be an exception class"),
    ({"retry_on": ValueError("x")}, TypeError, "retry_on must be an exception class"),
    ({"retry_on": ()}, ValueError, "retry_on must name at least one exception class"),
    ({"retry_on": [ValueError]}, TypeError, "retry_on must be an exception class"),
    ({"backoff": -1}, ValueError, "backoff"),
    ({"backoff": math.nan}, ValueError, "backoff"),
    ({"backoff": math.inf}, ValueError, "backoff"),
    ({"backoff": "1"}, TypeError, "backoff"),
    ({"backoff": 1e300}, ValueError, "backoff"),
])
def test_bad_retry_settings_are_refused_at_construction(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        ProcessingEngine(str, **kwargs)


# -- timeouts count from each symbol's own start ---------------------------------------------------
def test_a_symbol_queued_behind_a_hung_one_is_never_a_timeout(no_thread_leak):
    hung_started, release = threading.Event(), threading.Event()

    def processor(symbol):
        if symbol == "hung":
            hung_started.set()
            release.wait(WAIT)
        return symbol

    # the caller's own pool (the engine's own would give the stuck thread's place to "queued")
    pool = ThreadPoolExecutor(max_workers=1)
    engine = ProcessingEngine(processor, executor=pool, timeout=0.2)
    recorder = Recorder()
    handle = engine.start(["hung", "queued"], progress_callback=recorder)
    assert hung_started.wait(WAIT)
    # "hung" times out (an ERROR); "queued" is then handed to the pool, behind the hung thread
    deadline = time.monotonic() + WAIT
    while handle.progress.completed_symbols < 1 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert handle.progress.completed_symbols == 1
    # three timeouts long: counted from its submission, "queued" would be an ERROR by now
    threading.Event().wait(0.6)
    assert handle.progress.completed_symbols == 1 and not handle.done()
    release.set()  # the hung thread returns; "queued" starts and finishes in time
    result = handle.result(timeout=WAIT)
    pool.shutdown()
    by_symbol = {r.symbol: r for r in result}
    assert isinstance(by_symbol["hung"].error, TimeoutError)
    assert "of starting" in str(by_symbol["hung"].error)
    assert by_symbol["queued"].ok
    assert_accounted(["hung", "queued"], result, recorder.snapshots)


def test_the_engines_own_pool_gives_a_stuck_threads_place_to_the_symbols_behind_it(no_thread_leak):
    release = threading.Event()

    def processor(symbol):
        if symbol.startswith("hung"):
            release.wait(WAIT)
        return symbol

    symbols = ["hung1", "hung2", "a", "b", "c"]
    began = time.monotonic()
    try:
        result = ProcessingEngine(processor, max_workers=2, timeout=0.2).process_batch(symbols)
        assert time.monotonic() - began < WAIT / 2  # not after the stuck tasks gave up waiting
    finally:
        release.set()  # the stuck threads end; no_thread_leak checks they exit
    by_symbol = {r.symbol: r for r in result}
    assert isinstance(by_symbol["hung1"].error, TimeoutError) and isinstance(by_symbol["hung2"].error, TimeoutError)
    assert all(by_symbol[s].ok for s in "abc")  # they ran on replacement threads, with the stuck ones still stuck
    assert_accounted(symbols, result)


def test_the_timeout_counts_from_the_start_in_the_engine_clock(fake_clock, no_thread_leak):
    started, release = threading.Event(), threading.Event()

    def processor(symbol):
        started.set()
        release.wait(WAIT)
        return symbol

    handle = ProcessingEngine(processor, max_workers=1, timeout=5.0, clock=fake_clock).start(["a"])
    assert started.wait(WAIT)
    fake_clock.advance(4.0)
    threading.Event().wait(0.25)  # the loop looks at least every 0.1 s: not late yet
    assert not handle.done()
    fake_clock.advance(1.0)
    result = handle.result(timeout=WAIT)
    release.set()
    assert isinstance(result[0].error, TimeoutError) and result[0].duration_ms == 5000.0


def test_a_timed_out_symbol_can_be_retried(fake_clock, no_thread_leak):
    first_call, release = threading.Event(), threading.Event()
    calls = Counter()

    def processor(symbol):
        calls[symbol] += 1
        if calls[symbol] == 1:
            first_call.set()
            release.wait(WAIT)
        return symbol

    engine = ProcessingEngine(processor, max_workers=2, timeout=5.0, retries=1, clock=fake_clock)
    handle = engine.start(["a"])
    assert first_call.wait(WAIT)
    fake_clock.advance(10.0)
    result = handle.result(timeout=WAIT)
    release.set()
    assert result[0].ok and result[0].attempts == 2 and calls["a"] == 2


def _sleep_if_hung(symbol):
    import time as _time

    if symbol == "hung":
        _time.sleep(3.0)  # in a worker process: it cannot see a test's event
    return symbol


@pytest.mark.slow
def test_processes_a_chunk_queued_behind_a_hung_one_is_not_timed_until_it_starts():
    pytest.importorskip("loky")
    with ProcessingEngine(_sleep_if_hung, backend="processes", max_workers=1, timeout=1.0) as engine:
        result = engine.process_batch(["hung", "queued"])
    by_symbol = {r.symbol: r for r in result}
    assert isinstance(by_symbol["hung"].error, TimeoutError)
    # "queued" was handed to loky at ~1 s and started at ~3 s (when the worker was free): not late
    assert by_symbol["queued"].ok, by_symbol["queued"].error


@pytest.mark.slow
@pytest.mark.dask
def test_dask_a_chunk_queued_behind_a_hung_one_is_not_timed_until_it_starts():
    pytest.importorskip("distributed")
    with ProcessingEngine(_sleep_if_hung, backend="dask", max_workers=1, timeout=1.0) as engine:
        result = engine.process_batch(["hung", "queued"])
    by_symbol = {r.symbol: r for r in result}
    assert isinstance(by_symbol["hung"].error, TimeoutError)
    # on a LocalCluster a chunk marks its start with a running file: "queued" is timed from there
    assert by_symbol["queued"].ok, by_symbol["queued"].error


class _DropsRetries:
    """An executor that runs first tries and cancels every later task it accepted (a pool shut down)."""

    def __init__(self) -> None:
        from concurrent.futures import Future

        self._future = Future
        self.submitted = 0

    def submit(self, fn, /, *args):
        self.submitted += 1
        future = self._future()
        if self.submitted <= 3:
            future.set_result(fn(*args))
        else:
            future.cancel()
        return future


def test_a_retry_the_executor_drops_ends_the_batch_instead_of_looping():
    from procengine_nb.backends.base import Backend, BatchExecutor
    from procengine_nb.backends.runner import run_chunk

    executor = _DropsRetries()

    class Batch(BatchExecutor):
        def submit_chunk(self, chunk):
            return executor.submit(run_chunk, chunk.processor, chunk.symbols, None, chunk.pass_token)

        def close(self, *, cancelled):
            pass

    class Dropping(Backend):
        name = "dropping"

        @property
        def max_workers(self):
            return 1

        def open(self, token):
            return Batch()

    def fails(symbol):
        raise ConnectionError(symbol)

    result = ProcessingEngine(fails, backend=Dropping(), chunk_size=1, retries=5).process_batch(["a", "b", "c"])
    assert result.cancelled and "cancelled a task it had accepted" in result.cancel_reason
    assert executor.submitted < 10
    assert_accounted(["a", "b", "c"], result, retries=5)
