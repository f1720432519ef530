"""Fault injection: broken processors, callbacks, views and executors; cancel at the edges.

Every test ends with the accounting check (``assert_accounted``) and, where threads are involved,
the ``no_thread_leak`` fixture. Blocking is done with events, never with sleeps.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from test_properties import Recorder, assert_accounted

from procengine_nb import (
    BatchResult,
    CancellationToken,
    ProcessingEngine,
    ProcessingJob,
    ProcessingProgress,
    ResultStatus,
)

WAIT = 30  # seconds: only a safety net for a broken engine, never reached when it works

pytestmark = pytest.mark.usefixtures("no_thread_leak")


# -- processors that fail -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [ValueError("bad data"), KeyboardInterrupt("worker interrupted"), SystemExit(3), GeneratorExit("gen")],
    ids=["Exception", "KeyboardInterrupt", "SystemExit", "GeneratorExit"],
)
@pytest.mark.parametrize("mode", ["process_batch", "start"])
def test_a_processor_raising_anything_fails_only_its_symbol(exc, mode):
    symbols = [f"S{i}" for i in range(20)]

    def processor(symbol):
        if symbol in ("S3", "S11"):
            raise exc
        return symbol.lower()

    engine = ProcessingEngine(processor, max_workers=3)
    recorder = Recorder()
    if mode == "start":
        result = engine.start(symbols, progress_callback=recorder).result(timeout=WAIT)
    else:
        result = engine.process_batch(symbols, progress_callback=recorder)
    assert_accounted(symbols, result, recorder.snapshots)
    assert not result.cancelled
    assert sorted(r.symbol for r in result.errors) == ["S11", "S3"]
    assert all(r.error is exc for r in result.errors)
    assert len(result.successes) == 18
    # the engine still works afterwards (no worker or pool was broken)
    assert len(engine.process_batch(["x"]).successes) == 1


def test_unpicklable_return_value_on_threads_is_kept_as_is():
    lock_factory = threading.Lock
    result = ProcessingEngine(lambda s: (s, lock_factory()), max_workers=2).process_batch(["A", "B"])
    assert_accounted(["A", "B"], result)
    assert all(r.ok for r in result)


def _returns_unpicklable(symbol):
    if symbol == "bad":
        return threading.Lock()  # cannot travel back from a worker process
    return symbol.upper()


def test_unpicklable_return_value_from_a_process_pool_is_an_error_of_that_task():
    symbols = ["a", "bad", "c", "d"]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        engine = ProcessingEngine(_returns_unpicklable, executor=pool, chunk_size=1)
        result = engine.process_batch(symbols)
    assert_accounted(symbols, result)
    assert not result.cancelled
    assert [r.symbol for r in result.errors] == ["bad"]
    assert "pickle" in repr(result.errors[0].error).lower()
    assert sorted(r.value for r in result.successes) == ["A", "C", "D"]


def test_a_processor_blocked_forever_does_not_block_the_cancel():
    release = threading.Event()
    started = threading.Event()

    def processor(symbol):
        if symbol == 0:
            started.set()
            release.wait(WAIT)  # ignores the token
        return symbol

    token = CancellationToken()
    handle = ProcessingEngine(processor, max_workers=2).start(range(10), cancellation_token=token)
    assert started.wait(WAIT)
    token.cancel("stop")
    try:
        result = handle.result(timeout=WAIT)
    finally:
        release.set()
    assert_accounted(list(range(10)), result)
    assert result.cancelled and 0 in result.unprocessed
    assert result.progress.running_symbols >= 1  # reported, not awaited


# -- callbacks and views that fail ----------------------------------------------------------------
def test_a_raising_callback_is_logged_once_and_never_stops_the_batch(caplog):
    seen: list[ProcessingProgress] = []

    def callback(p):
        seen.append(p)
        raise RuntimeError("callback is broken")

    symbols = list(range(50))
    with caplog.at_level(logging.ERROR, logger="procengine_nb"):
        result = ProcessingEngine(lambda s: s, max_workers=4).process_batch(symbols, progress_callback=callback)
    assert_accounted(symbols, result, seen)
    assert not result.cancelled and len(result.successes) == 50
    assert len(seen) == 51  # every symbol and the end, despite raising each time
    logged = [r for r in caplog.records if "callback is broken" in r.getMessage()]
    assert len(logged) == 1


def test_a_callback_raising_keyboardinterrupt_stops_the_batch_and_its_cooperative_workers():
    """An interrupt that escapes the loop (a callback, or Ctrl-C while ``process_batch`` blocks the
    main thread) propagates, and the batch's token is cancelled so cooperative workers stop too."""
    first_done = threading.Event()
    stopped = []

    def processor(symbol, cancellation_token):
        if symbol == 0:
            return symbol
        first_done.wait(WAIT)
        stopped.append(cancellation_token.wait(WAIT))  # returns at once when the batch is cancelled
        return symbol

    def callback(p):
        first_done.set()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ProcessingEngine(processor, max_workers=2, chunk_size=1).process_batch(range(3), progress_callback=callback)
    # no_thread_leak: the workers waiting on the token exit (they would wait WAIT seconds otherwise)


def test_a_slow_callback_delays_the_stop_by_at_most_its_own_run():
    """Stop while the callback is running: the batch returns after that run and the final callback,
    not after one callback per symbol still queued (chunks of many tiny symbols)."""
    in_callback = threading.Event()
    release = threading.Event()
    calls_after_release: list[ProcessingProgress] = []
    released = False

    def callback(p):
        if released:
            calls_after_release.append(p)
            return
        if not in_callback.is_set():
            in_callback.set()
            release.wait(WAIT)  # the "slow" run
        else:
            calls_after_release.append(p)

    token = CancellationToken()
    symbols = list(range(2000))
    handle = ProcessingEngine(lambda s: s, max_workers=2, chunk_size=100).start(
        symbols, progress_callback=callback, cancellation_token=token
    )
    assert in_callback.wait(WAIT)
    token.cancel("stop while the callback runs")
    released = True
    release.set()
    result = handle.result(timeout=WAIT)
    assert_accounted(symbols, result)
    assert result.cancelled
    # only the final snapshot after the slow run, however many completions were waiting
    assert calls_after_release == [result.progress]


def test_workers_keep_running_the_window_while_a_callback_blocks():
    """Callbacks run on the batch's own thread: while one blocks, the tasks already handed to workers
    go on (the window, 2 per worker), but no new ones are handed out until it returns."""
    in_callback = threading.Event()
    release = threading.Event()
    ran = []
    lock = threading.Lock()

    def processor(symbol):
        with lock:
            ran.append(symbol)
        return symbol

    def callback(p):
        if not in_callback.is_set():
            in_callback.set()
            release.wait(WAIT)

    n_workers = 2
    handle = ProcessingEngine(processor, max_workers=n_workers, chunk_size=1).start(
        range(50), progress_callback=callback
    )
    assert in_callback.wait(WAIT)
    try:
        # the window's tasks finish on their own while the callback blocks
        window = 2 * n_workers
        for _ in range(200):
            with lock:
                if len(ran) >= window:
                    break
            release.wait(0.01)
        with lock:
            assert window <= len(ran) <= window + 1
    finally:
        release.set()
    result = handle.result(timeout=WAIT)
    assert_accounted(list(range(50)), result)
    assert not result.cancelled


class _BrokenView:
    def __init__(self, fail_update=True, fail_finish=True):
        self.updates = 0
        self.finished = 0
        self.fail_update = fail_update
        self.fail_finish = fail_finish

    def update(self, progress):
        self.updates += 1
        if self.fail_update:
            raise RuntimeError("view is gone")

    def finish(self, result, error):
        self.finished += 1
        if self.fail_finish:
            raise RuntimeError("view is gone")


def test_a_view_that_breaks_mid_job_does_not_break_the_job():
    release = threading.Event()

    def processor(symbol):
        release.wait(WAIT)
        return symbol

    handle = ProcessingEngine(processor, max_workers=2).start(range(10))
    view = _BrokenView()
    handle.attach(view)
    release.set()
    result = handle.result(timeout=WAIT)
    assert_accounted(list(range(10)), result)
    assert view.finished == 1 and view.updates >= 1
    late = _BrokenView(fail_finish=False)
    handle.attach(late)  # attached after the end: gets the end at once
    assert late.finished == 1


def test_a_job_never_shown_anywhere_still_finishes():
    handle = ProcessingEngine(lambda s: s, max_workers=2).start(range(100))
    result = handle.result(timeout=WAIT)
    assert_accounted(list(range(100)), result)


# -- executors that fail --------------------------------------------------------------------------
def test_an_executor_already_shut_down_refuses_and_nothing_is_lost():
    pool = ThreadPoolExecutor(max_workers=2)
    pool.shutdown()
    symbols = ["A", "B", "C"]
    recorder = Recorder()
    result = ProcessingEngine(str.lower, executor=pool).process_batch(symbols, progress_callback=recorder)
    assert_accounted(symbols, result, recorder.snapshots)
    assert result.cancelled and len(result) == 0 and list(result.unprocessed) == symbols
    assert "refused" in result.cancel_reason


class _RefusesAfter(Executor):
    """Accepts ``n`` tasks (run inline), then refuses like a shut-down executor."""

    def __init__(self, n):
        self.n = n

    def submit(self, fn, /, *args, **kwargs):
        if self.n <= 0:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self.n -= 1
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_an_executor_that_starts_refusing_mid_batch_keeps_what_ran():
    symbols = list(range(20))
    result = ProcessingEngine(lambda s: s, executor=_RefusesAfter(7), chunk_size=1).process_batch(symbols)
    assert_accounted(symbols, result)
    assert result.cancelled and len(result) == 7
    assert list(result.unprocessed) == symbols[7:]


class _FailingFutures(Executor):
    """Every task fails in the backend itself (a lost worker, a broken pipe...)."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        future.set_exception(ConnectionError("worker lost"))
        return future


def test_a_backend_failure_is_an_error_for_each_symbol_of_the_task():
    symbols = list(range(9))
    result = ProcessingEngine(lambda s: s, executor=_FailingFutures(), chunk_size=2).process_batch(symbols)
    assert_accounted(symbols, result)
    assert len(result.errors) == 9 and all(isinstance(r.error, ConnectionError) for r in result)


def test_an_executor_that_cancels_accepted_tasks_reports_a_cancelled_batch():
    """A shared executor shut down (``cancel_futures=True``) under a running batch: the tasks it
    dropped are unprocessed, and the batch says it was cancelled and why."""
    pool = ThreadPoolExecutor(max_workers=1)
    started = threading.Event()
    release = threading.Event()

    def processor(symbol):
        if symbol == "A":
            started.set()
            release.wait(WAIT)
        return symbol

    handle = ProcessingEngine(processor, executor=pool, max_workers=4, chunk_size=1).start(["A", "B", "C"])
    assert started.wait(WAIT)
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    result = handle.result(timeout=WAIT)
    pool.shutdown(wait=True)
    assert_accounted(["A", "B", "C"], result)
    # B and C were dropped by the executor; A finished, or was still running when the batch returned
    assert [r.symbol for r in result] in (["A"], [])
    assert list(result.unprocessed)[-2:] == ["B", "C"]
    assert result.cancelled and result.progress.cancelled
    assert result.cancel_reason


# -- several batches, and cancel at the edges -----------------------------------------------------
def test_a_second_start_on_the_same_engine_runs_independently():
    gate = threading.Event()
    first_started = threading.Event()

    def processor(symbol):
        if symbol.startswith("first"):
            first_started.set()
            gate.wait(WAIT)
        return symbol

    engine = ProcessingEngine(processor, max_workers=2)
    first = engine.start([f"first{i}" for i in range(5)])
    assert first_started.wait(WAIT)
    second = engine.start([f"second{i}" for i in range(5)])
    second_result = second.result(timeout=WAIT)  # finishes while the first is still blocked
    assert not first.done()
    first.cancel()
    assert first.token.is_cancelled and not second.token.is_cancelled
    gate.set()
    first_result = first.result(timeout=WAIT)
    assert_accounted([f"second{i}" for i in range(5)], second_result)
    assert_accounted([f"first{i}" for i in range(5)], first_result)
    assert not second_result.cancelled and first_result.cancelled


def test_the_same_token_shared_by_two_batches_stops_both():
    token = CancellationToken()
    release = threading.Event()
    started = threading.Semaphore(0)

    def processor(symbol, cancellation_token):
        started.release()
        cancellation_token.wait(WAIT)
        cancellation_token.throw_if_cancelled()
        return symbol

    engine = ProcessingEngine(processor, max_workers=2)
    a = engine.start(range(10), cancellation_token=token)
    b = engine.start(range(10, 20), cancellation_token=token)
    assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
    token.cancel("both")
    release.set()
    ra, rb = a.result(timeout=WAIT), b.result(timeout=WAIT)
    assert_accounted(list(range(10)), ra)
    assert_accounted(list(range(10, 20)), rb)
    assert ra.cancelled and rb.cancelled and ra.cancel_reason == rb.cancel_reason == "both"


@pytest.mark.parametrize("mode", ["process_batch", "start"])
def test_cancel_before_start_processes_nothing(mode):
    token = CancellationToken()
    token.cancel("early")
    calls = []
    engine = ProcessingEngine(calls.append, max_workers=2)
    recorder = Recorder()
    job = ProcessingJob(["A", "B", "C"], name="early")
    if mode == "start":
        result = engine.start(job, progress_callback=recorder, cancellation_token=token).result(timeout=WAIT)
    else:
        result = engine.process_batch(job, progress_callback=recorder, cancellation_token=token)
    assert_accounted(["A", "B", "C"], result, recorder.snapshots)
    assert calls == [] and result.cancelled and result.cancel_reason == "early"
    assert list(result.unprocessed) == ["A", "B", "C"]
    assert recorder.snapshots == [result.progress]


def test_cancel_after_the_end_changes_nothing():
    token = CancellationToken()
    handle = ProcessingEngine(str.upper, max_workers=2).start(["a", "b"], cancellation_token=token)
    result = handle.result(timeout=WAIT)
    final = result.progress
    assert handle.cancel("too late") is True  # the token is the caller's: it does get cancelled
    assert token.is_cancelled
    again = handle.result(timeout=WAIT)
    assert again is result and not result.cancelled and result.cancel_reason is None
    assert result.progress is final and handle.progress is final
    assert_accounted(["a", "b"], result)


def test_an_empty_batch_is_complete_at_once():
    recorder = Recorder()
    result = ProcessingEngine(str, max_workers=2).process_batch([], progress_callback=recorder)
    assert_accounted([], result, recorder.snapshots)
    assert result.progress.percentage == 100.0 and not result.cancelled


# -- timeout and error budget ---------------------------------------------------------------------
def test_a_symbol_past_its_timeout_is_an_error_and_the_batch_does_not_wait_for_it():
    release = threading.Event()

    def processor(symbol):
        if symbol == "slow":
            release.wait(WAIT)  # far longer than the timeout
        return symbol

    symbols = ["a", "slow", "b", "c"]
    recorder = Recorder()
    try:
        result = ProcessingEngine(processor, max_workers=2, timeout=0.05).process_batch(
            symbols, progress_callback=recorder
        )
    finally:
        release.set()
    assert_accounted(symbols, result, recorder.snapshots)
    assert not result.cancelled
    assert [r.symbol for r in result.errors] == ["slow"]
    assert isinstance(result.errors[0].error, TimeoutError)
    assert "'slow'" in str(result.errors[0].error)


def test_late_results_of_timed_out_tasks_are_not_counted_twice():
    release = threading.Event()
    started = threading.Semaphore(0)

    def processor(symbol):
        if symbol < 2:
            started.release()
            release.wait(WAIT)
        return symbol

    engine = ProcessingEngine(processor, max_workers=4, timeout=0.05)
    handle = engine.start(range(6))
    result = handle.result(timeout=WAIT)
    release.set()  # the late tasks now finish; their outcome must not appear anywhere
    assert_accounted(list(range(6)), result)
    assert sorted(r.symbol for r in result.errors) == [0, 1]
    assert len(result) == 6


@pytest.mark.parametrize("max_errors", [0, 1, 5])
def test_error_budget_stops_right_after_it_is_exceeded(max_errors):
    def processor(symbol):
        raise ValueError(symbol)

    symbols = list(range(30))
    recorder = Recorder()
    result = ProcessingEngine(processor, max_workers=1, chunk_size=1, max_errors=max_errors).process_batch(
        symbols, progress_callback=recorder
    )
    assert_accounted(symbols, result, recorder.snapshots)
    assert result.cancelled
    # the one that broke the budget, plus at most what had already finished in the window (2 a worker)
    assert max_errors + 1 <= len(result.errors) <= max_errors + 2
    assert result.cancel_reason == f"error budget exceeded: {max_errors + 1} errors > max_errors={max_errors}"


def test_error_budget_does_not_cancel_the_callers_token():
    token = CancellationToken()
    result = ProcessingEngine(lambda s: 1 / 0, max_workers=2, max_errors=0).process_batch(
        range(10), cancellation_token=token
    )
    assert result.cancelled and not token.is_cancelled


def test_retry_and_resume_account_for_the_rest():
    token = CancellationToken()

    def processor(symbol):
        if symbol == 5:
            token.cancel("half-way")
        if symbol % 3 == 0:
            raise ValueError(symbol)
        return symbol

    engine = ProcessingEngine(processor, max_workers=1, chunk_size=1)
    symbols = list(range(12))
    first = engine.process_batch(symbols, cancellation_token=token)
    assert_accounted(symbols, first)
    resumed = engine.resume(first)
    assert_accounted(list(first.unprocessed), resumed)
    retried = engine.retry(first)
    assert_accounted([r.symbol for r in first.errors], retried)
    assert isinstance(resumed, BatchResult) and all(r.status is not ResultStatus.CANCELLED for r in resumed)


# -- the notebook panel closed, or never displayed, mid-job ---------------------------------------
def test_a_panel_closed_mid_job_does_not_break_the_job():
    from procengine_nb import run

    release = threading.Event()
    started = threading.Event()

    def processor(symbol):
        started.set()
        release.wait(WAIT)
        return symbol

    handle = run(processor, range(20), name="closed", display=False, max_workers=2)
    assert started.wait(WAIT)
    handle.panel.close()  # the user closed the output (or the widget) while the job runs
    release.set()
    result = handle.result(timeout=WAIT)
    assert_accounted(list(range(20)), result)
    assert not result.cancelled


def test_a_panel_never_displayed_still_gets_the_final_state():
    from procengine_nb import run

    handle = run(lambda s: s, range(50), name="hidden", display=False, max_workers=2)
    result = handle.result(timeout=WAIT)
    assert_accounted(list(range(50)), result)
    assert handle.panel.status.value == "Done: 50 processed"
    assert handle.panel.progress_bar.value == 50
    handle.panel.close()


def test_stop_on_a_panel_never_displayed_cancels_the_job():
    from procengine_nb import run

    release = threading.Event()
    started = threading.Event()

    def processor(symbol):
        started.set()
        release.wait(WAIT)
        return symbol

    handle = run(processor, range(20), display=False, max_workers=2)
    assert started.wait(WAIT)
    handle.panel.stop_button.click()
    try:
        result = handle.result(timeout=WAIT)
    finally:
        release.set()
    assert_accounted(list(range(20)), result)
    assert result.cancelled and handle.panel.status.value.startswith("Cancelled")
    handle.panel.close()
