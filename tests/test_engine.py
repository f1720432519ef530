"""ProcessingEngine.process_batch: the spec's cases, the acceptance scenarios, cancel, budget, retry."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from procengine_nb import (
    BatchResult,
    CancellationToken,
    IProcessingEngine,
    JobType,
    ProcessingCancelledException,
    ProcessingEngine,
    ProcessingJob,
    ResultStatus,
)


def assert_accounted(result: BatchResult, symbols) -> None:
    """results + unprocessed == input (as multisets), unprocessed in input order."""
    assert Counter([r.symbol for r in result] + list(result.unprocessed)) == Counter(symbols)
    positions = {s: i for i, s in enumerate(symbols)}
    order = [positions[s] for s in result.unprocessed]
    assert order == sorted(order)


class Gate:
    """Blocks processors until released; releases everything at teardown so no thread is stuck."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def wait(self) -> None:
        assert self.event.wait(30), "gate never released"


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.event.set()


# -- the spec's named cases ---------------------------------------------------------------------
def test_progress_callback_called(no_thread_leak):
    seen = []
    engine = ProcessingEngine(str.upper, max_workers=2)
    result = engine.process_batch(["a", "b", "c", "d", "e"], progress_callback=seen.append)
    assert len(result) == 5 and not result.cancelled
    assert len(seen) == 6  # once per symbol, once more at the end
    assert [p.completed_symbols for p in seen] == [1, 2, 3, 4, 5, 5]
    assert all(p.total_symbols == 5 for p in seen)
    assert seen[-1].finished and seen[-1].percentage == 100.0 and seen[-1].estimated_remaining_ms == 0
    assert {p.current_symbol for p in seen[:5]} == {"a", "b", "c", "d", "e"}
    assert seen[-1] == result.progress


def test_progress_percentage_calculation():
    seen = []
    ProcessingEngine(lambda s: s, max_workers=1, chunk_size=1).process_batch(range(4), progress_callback=seen.append)
    assert [p.percentage for p in seen] == [25.0, 50.0, 75.0, 100.0, 100.0]
    empty: list = []
    result = ProcessingEngine(lambda s: s).process_batch([], progress_callback=empty.append)
    assert len(result) == 0 and [p.percentage for p in empty] == [100.0]


def test_progress_with_errors():
    def flaky(n: int) -> int:
        if n % 3 == 0:
            raise ValueError(f"bad {n}")
        return n

    seen = []
    result = ProcessingEngine(flaky, max_workers=3).process_batch(range(10), progress_callback=seen.append)
    errors = result.errors
    assert sorted(r.symbol for r in errors) == [0, 3, 6, 9]
    assert all(isinstance(r.error, ValueError) and str(r.error) == f"bad {r.symbol}" for r in errors)
    assert all(r.value is None for r in errors)
    assert result.progress.errors_count == 4 and seen[-1].errors_count == 4
    assert [p.errors_count for p in seen] == sorted(p.errors_count for p in seen)
    assert len(result) == 10 and not result.cancelled  # errors are results, not a stop


def test_cancellation_stops_processing(gate, no_thread_leak):
    """Acceptance: 100 symbols, cancelled once 2 completed -> 2 results, 98 unprocessed, returns at once."""
    token = CancellationToken()

    def processor(n: int) -> int:
        if n >= 2:
            gate.wait()  # running tasks that ignore the token
        return n

    def on_progress(p) -> None:
        if p.completed_symbols == 2:
            token.cancel("enough")

    engine = ProcessingEngine(processor, max_workers=2, chunk_size=1)
    started = time.monotonic()
    result = engine.process_batch(range(100), progress_callback=on_progress, cancellation_token=token)
    assert time.monotonic() - started < 5  # it did not wait for the blocked tasks
    assert result.cancelled and result.cancel_reason == "enough"
    assert sorted(r.symbol for r in result) == [0, 1]
    assert list(result.unprocessed) == list(range(2, 100))
    assert result.progress.cancelled and result.progress.completed_symbols == 2
    assert result.progress.percentage == 2.0
    assert result.progress.running_symbols <= 2  # workers may still be stuck in tasks ignoring the token
    gate.event.set()  # the stuck tasks end; no_thread_leak checks the pool's threads then exit


def test_cancel_reports_tasks_still_running_and_keeps_finished_ones(gate, no_thread_leak):
    token = CancellationToken()
    entered = threading.Semaphore(0)

    def processor(n: int) -> int:
        if n >= 2:
            entered.release()
            gate.wait()
        return n

    def canceller() -> None:
        entered.acquire()
        entered.acquire()  # both workers are now inside tasks that ignore the token
        token.cancel()

    thread = threading.Thread(target=canceller)
    thread.start()
    result = ProcessingEngine(processor, max_workers=2, chunk_size=1).process_batch(
        range(10), cancellation_token=token
    )
    thread.join()
    assert sorted(r.symbol for r in result) == [0, 1]  # finished before the cancel: kept, not dropped
    assert result.progress.running_symbols == 2
    assert list(result.unprocessed) == list(range(2, 10))
    gate.event.set()


def test_cancellation_cleans_futures(gate, no_thread_leak):
    """On a caller's executor: the pending futures the batch submitted are cancelled, the executor is not
    shut down, and it keeps working."""
    token = CancellationToken()
    entered = threading.Event()
    window_full = threading.Event()
    submitted = []

    class RecordingPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            future = super().submit(fn, *args, **kwargs)
            submitted.append(future)
            if len(submitted) == 2:
                window_full.set()
            return future

    def processor(n: int) -> int:
        entered.set()
        gate.wait()
        return n

    pool = RecordingPool(max_workers=1)
    try:
        engine = ProcessingEngine(processor, executor=pool, chunk_size=1)
        threading.Thread(target=lambda: (entered.wait(10), window_full.wait(10), token.cancel())).start()
        result = engine.process_batch(range(50), cancellation_token=token)
        assert result.cancelled and len(result) == 0 and len(result.unprocessed) == 50
        assert len(submitted) == 2  # the bounded window: never more than 2 tasks per worker
        running = [f for f in submitted if f.running()]
        assert len(running) == 1
        assert all(f.cancelled() for f in submitted if f not in running)
    finally:
        gate.event.set()
    assert pool.submit(lambda: 42).result(10) == 42  # still usable: the engine did not shut it down
    pool.shutdown()


def test_eta_calculation_accuracy(fake_clock):
    """10 symbols taking 100 ms each on one worker: after 3, elapsed 300 ms and ~700 ms remaining."""
    turn = threading.Semaphore(1)

    def processor(symbol: str) -> str:
        turn.acquire()  # one symbol per callback: deterministic interleaving with the fake clock
        fake_clock.advance(0.1)
        return symbol

    seen = []

    def on_progress(p) -> None:
        seen.append(p)
        turn.release()

    engine = ProcessingEngine(processor, max_workers=1, chunk_size=1, clock=fake_clock)
    engine.process_batch([f"S{i}" for i in range(10)], progress_callback=on_progress)
    third = seen[2]
    assert third.completed_symbols == 3
    assert third.elapsed_time_ms == pytest.approx(300)
    assert third.estimated_remaining_ms == pytest.approx(700)
    assert seen[-1].estimated_remaining_ms == 0


def test_callback_exception_handling(caplog):
    calls = []

    def broken(p) -> None:
        calls.append(p)
        raise RuntimeError("callback is broken")

    with caplog.at_level(logging.WARNING, logger="procengine_nb"):
        result = ProcessingEngine(lambda s: s, max_workers=2).process_batch(range(20), progress_callback=broken)
    assert len(result) == 20 and not result.cancelled
    assert len(calls) == 21
    errors = [r for r in caplog.records if "callback is broken" in r.getMessage()]
    assert len(errors) == 1  # logged once per distinct error, not once per symbol
    assert any("raised 21 times" in r.getMessage() for r in caplog.records)


def test_concurrent_cancellation(no_thread_leak):
    """Several threads cancel the same batch at once while it runs: it returns, everything accounted."""
    for round_ in range(5):
        token = CancellationToken()
        started = threading.Event()

        def processor(n: int) -> int:
            started.set()
            time.sleep(0.0005)
            return n

        symbols = list(range(2000))
        barrier = threading.Barrier(6)

        def canceller() -> None:
            started.wait(10)
            barrier.wait()
            token.cancel(f"round {round_}")

        threads = [threading.Thread(target=canceller) for _ in range(6)]
        for t in threads:
            t.start()
        result = ProcessingEngine(processor, max_workers=8).process_batch(symbols, cancellation_token=token)
        for t in threads:
            t.join()
        assert result.cancelled and len(result.unprocessed) > 0
        assert_accounted(result, symbols)


# -- acceptance scenarios and stress -------------------------------------------------------------
def test_stress_thousands_of_symbols_with_concurrent_cancels(no_thread_leak):
    symbols = [f"SYM{i:05d}" for i in range(5000)]
    for delay in (0.0, 0.002, 0.01):
        token = CancellationToken()
        cancellers = [threading.Timer(delay * k, token.cancel) for k in (1, 2, 3)]
        for t in cancellers:
            t.start()
        result = ProcessingEngine(lambda s: s[::-1], max_workers=8).process_batch(symbols, cancellation_token=token)
        for t in cancellers:
            t.join()
        assert_accounted(result, symbols)
        assert result.progress.completed_symbols == len(result)
        assert all(r.value == r.symbol[::-1] for r in result)


def test_full_batch_of_thousands_completes(no_thread_leak):
    symbols = list(range(20_000))
    seen = []
    result = ProcessingEngine(lambda n: n * n, max_workers=4).process_batch(
        symbols, progress_callback=lambda p: seen.append(p.completed_symbols)
    )
    assert sorted(r.value for r in result) == [n * n for n in symbols]
    assert seen == [*range(1, 20_001), 20_000]  # every symbol reported, in order, never backwards
    assert len(result.unprocessed) == 0 and not result.cancelled


def test_no_thread_outlives_the_batch():
    before = set(threading.enumerate())
    ProcessingEngine(lambda s: s, max_workers=6).process_batch(range(500))
    after = set(threading.enumerate())
    assert after == before  # a normal end joins the pool before returning


# -- cooperative cancellation --------------------------------------------------------------------
def test_processor_with_token_parameter_gets_the_batch_token(no_thread_leak):
    token = CancellationToken()
    first_started = threading.Event()

    def cooperative(n: int, cancellation_token: CancellationToken) -> int:
        first_started.set()
        if not cancellation_token.wait(10):
            raise AssertionError("never cancelled")
        cancellation_token.throw_if_cancelled()
        return n

    threading.Thread(target=lambda: (first_started.wait(10), token.cancel("stop now"))).start()
    result = ProcessingEngine(cooperative, max_workers=1, chunk_size=1).process_batch(
        range(10), cancellation_token=token
    )
    assert result.cancelled
    assert_accounted(result, list(range(10)))


def test_processor_raising_cancelled_gives_cancelled_result():
    def processor(n: int) -> int:
        if n == 1:
            raise ProcessingCancelledException("gave up")
        return n

    result = ProcessingEngine(processor, max_workers=1).process_batch(range(3))
    statuses = {r.symbol: r.status for r in result}
    assert statuses == {0: ResultStatus.SUCCESS, 1: ResultStatus.CANCELLED, 2: ResultStatus.SUCCESS}
    assert result.cancelled_results[0].error.args == ("gave up",)
    assert result.progress.errors_count == 0
    assert not result.cancelled  # the batch itself was not cancelled


def test_keyboard_interrupt_and_system_exit_in_a_processor_are_results():
    def processor(n: int) -> int:
        if n == 0:
            raise KeyboardInterrupt
        if n == 1:
            raise SystemExit(3)
        return n

    result = ProcessingEngine(processor, max_workers=2).process_batch(range(4))
    errors = {r.symbol: type(r.error) for r in result.errors}
    assert errors == {0: KeyboardInterrupt, 1: SystemExit}
    assert len(result) == 4


def test_cancel_before_start_processes_nothing(no_thread_leak):
    token = CancellationToken()
    token.cancel("before")
    calls = []
    result = ProcessingEngine(calls.append).process_batch(range(10), cancellation_token=token)
    assert calls == [] and len(result) == 0 and list(result.unprocessed) == list(range(10))
    assert result.cancelled and result.cancel_reason == "before"


def test_cancel_after_the_end_changes_nothing():
    token = CancellationToken()
    result = ProcessingEngine(lambda s: s).process_batch(range(5), cancellation_token=token)
    token.cancel()
    assert not result.cancelled and len(result) == 5 and len(result.unprocessed) == 0


def test_callers_token_is_reusable_and_never_cancelled_by_the_engine():
    token = CancellationToken()
    engine = ProcessingEngine(lambda n: 1 / 0 if n < 5 else n, max_workers=1, chunk_size=1, max_errors=2)
    result = engine.process_batch(range(20), cancellation_token=token)
    assert result.cancelled and "error budget exceeded: 3 errors > max_errors=2" == result.cancel_reason
    assert not token.is_cancelled  # the budget cancels the batch, not the caller's token
    assert token._callbacks == []  # and leaves no link behind on it


# -- error budget, timeout, retry, resume ---------------------------------------------------------
def test_error_budget_cancels_with_reason():
    def always_fails(n: int) -> int:
        raise ValueError(n)

    result = ProcessingEngine(always_fails, max_workers=1, chunk_size=1, max_errors=0).process_batch(range(50))
    assert result.cancelled and result.cancel_reason.startswith("error budget exceeded")
    assert len(result.errors) >= 1
    assert_accounted(result, list(range(50)))


def test_timeout_turns_a_stuck_symbol_into_an_error(gate, no_thread_leak):
    def processor(n: int) -> int:
        if n == 3:
            gate.wait()
        return n

    result = ProcessingEngine(processor, max_workers=2, timeout=0.2).process_batch(range(8))
    by_symbol = {r.symbol: r for r in result}
    assert isinstance(by_symbol[3].error, TimeoutError)
    assert "did not finish within 0.2s" in str(by_symbol[3].error)
    assert all(by_symbol[n].ok for n in range(8) if n != 3)
    assert len(result) == 8 and not result.cancelled
    gate.event.set()


def test_retry_processes_only_failures():
    attempts = Counter()

    def flaky(n: int) -> int:
        attempts[n] += 1
        if n % 4 == 0 and attempts[n] == 1:
            raise ConnectionError(n)
        return n

    engine = ProcessingEngine(flaky, max_workers=2)
    first = engine.process_batch(ProcessingJob(range(12), name="prices"))
    assert sorted(r.symbol for r in first.errors) == [0, 4, 8]
    again = engine.retry(first)
    assert sorted(r.symbol for r in again) == [0, 4, 8] and not again.errors
    assert again.job.job_type is JobType.RETRY and again.job.name == "prices (retry)"
    assert attempts == Counter({n: (2 if n % 4 == 0 else 1) for n in range(12)})


def test_resume_processes_only_unprocessed():
    token = CancellationToken()
    token.cancel()
    engine = ProcessingEngine(lambda n: n, max_workers=2)
    first = engine.process_batch(range(6), cancellation_token=token)
    rest = engine.resume(first)
    assert sorted(r.value for r in rest) == list(range(6))
    assert rest.job.job_type is JobType.RESUME and rest.job.name == "generic job (resume)"
    with pytest.raises(TypeError, match="previous must be a BatchResult"):
        engine.resume([1, 2])  # type: ignore[arg-type]


# -- executors and chunking ------------------------------------------------------------------------
def test_callers_executor_is_not_shut_down():
    with ThreadPoolExecutor(max_workers=3) as pool:
        engine = ProcessingEngine(lambda n: n + 1, executor=pool)
        assert engine.max_workers == 3
        assert sorted(r.value for r in engine.process_batch(range(10))) == list(range(1, 11))
        assert pool.submit(lambda: "alive").result(5) == "alive"


def test_executor_that_refuses_tasks_ends_the_batch_with_a_reason():
    pool = ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    result = ProcessingEngine(lambda n: n, executor=pool).process_batch(range(5))
    assert result.cancelled and "executor refused new tasks" in result.cancel_reason
    assert list(result.unprocessed) == list(range(5))


def test_chunked_tasks_still_report_every_symbol():
    seen = []
    result = ProcessingEngine(lambda n: -n, max_workers=2, chunk_size=7).process_batch(
        range(100), progress_callback=lambda p: seen.append(p.current_symbol)
    )
    assert sorted(seen[:-1]) == list(range(100))
    assert sorted(r.value for r in result) == sorted(-n for n in range(100))


def test_adaptive_chunks_group_tiny_tasks():
    """Tiny tasks get grouped (fewer executor tasks than symbols); long ones go one at a time."""
    submitted = []

    class CountingPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(len(args[1]))
            return super().submit(fn, *args, **kwargs)

    with CountingPool(max_workers=2) as pool:
        ProcessingEngine(lambda n: n, executor=pool).process_batch(range(5000))
    assert sum(submitted) == 5000 and max(submitted) > 1 and len(submitted) < 5000
    submitted.clear()
    with CountingPool(max_workers=2) as pool:
        ProcessingEngine(lambda n: time.sleep(0.003), executor=pool).process_batch(range(20))
    assert submitted == [1] * 20


def test_results_in_completion_order():
    order = []
    lock = threading.Lock()

    def processor(n: int) -> int:
        with lock:
            order.append(n)
        return n

    result = ProcessingEngine(processor, max_workers=1, chunk_size=1).process_batch(range(30))
    assert [r.symbol for r in result] == order


def test_engine_satisfies_protocol_and_repr():
    engine = ProcessingEngine(str.upper, max_workers=3)
    assert isinstance(engine, IProcessingEngine)
    assert "processor=str.upper" in repr(engine) and "max_workers=3" in repr(engine)
    assert engine.max_workers == 3


def test_job_object_is_kept_on_the_result():
    job = ProcessingJob(["x", "y"], JobType.FETCH, name="fetch prices")
    result = ProcessingEngine(str.upper).process_batch(job)
    assert result.job is job and len(result) == 2


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"processor": None}, TypeError, "processor must be callable"),
        ({"processor": 42}, TypeError, "processor must be callable"),
        ({"processor": str, "max_workers": 0}, ValueError, "max_workers"),
        ({"processor": str, "max_workers": -3}, ValueError, "max_workers"),
        ({"processor": str, "max_workers": 2.5}, TypeError, "max_workers"),
        ({"processor": str, "max_workers": True}, TypeError, "max_workers"),
        ({"processor": str, "max_errors": -1}, ValueError, "max_errors"),
        ({"processor": str, "timeout": 0}, ValueError, "timeout"),
        ({"processor": str, "timeout": "1"}, TypeError, "timeout"),
        ({"processor": str, "chunk_size": 0}, ValueError, "chunk_size"),
        ({"processor": str, "eta_smoothing": 0}, ValueError, "eta_smoothing"),
        ({"processor": str, "eta_smoothing": 2}, ValueError, "eta_smoothing"),
        ({"processor": str, "executor": "pool"}, TypeError, "executor"),
        ({"processor": str, "backend": "gpu"}, ValueError, "backend"),
        ({"processor": str, "backend": 3}, TypeError, "backend"),
        ({"processor": str, "clock": 3}, TypeError, "clock"),
    ],
)
def test_bad_engine_arguments(kwargs, error, needle):
    processor = kwargs.pop("processor")
    with pytest.raises(error, match=needle):
        ProcessingEngine(processor, **kwargs)


@pytest.mark.parametrize(
    ("symbols", "needle"),
    [
        (None, "job_or_symbols must be an iterable of symbols, not None"),
        (42, "job_or_symbols must be an iterable of symbols, not int"),
        ("AAPL", "not a single str"),
        ({"a": 1}, "not a dict"),
    ],
)
def test_bad_symbols(symbols, needle):
    with pytest.raises(TypeError, match=needle):
        ProcessingEngine(str).process_batch(symbols)


def test_bad_token_and_callback(no_thread_leak):
    engine = ProcessingEngine(str)
    with pytest.raises(TypeError, match=r"cancellation_token must be a procengine_nb\.CancellationToken"):
        engine.process_batch(["a"], cancellation_token=threading.Event())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress_callback must be callable"):
        engine.process_batch(["a"], progress_callback="print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancellation_token"):
        engine.start(["a"], cancellation_token="stop")  # type: ignore[arg-type]
