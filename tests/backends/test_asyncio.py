"""Async processors: awaited on the batch's own loop, max_workers at once, Stop, timeout, cleanup.

Coroutines are synchronised with asyncio/threading events, not sleeps, except where the point is a
duration (the timeout tests, with wide margins).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_properties import assert_accounted

from procengine_nb import CancellationToken, ProcessingCancelledException, ProcessingEngine, ResultStatus
from procengine_nb.backends import ThreadBackend, run_chunk
from procengine_nb.backends.asyncio import AsyncBackend, is_async_callable

pytestmark = pytest.mark.timeout(60)


async def double(x):
    await asyncio.sleep(0)
    return 2 * x


class Started:
    """Counts coroutines that started; ``wait(n)`` blocks the test thread until n did."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()
        self.cancelled: list[object] = []

    def hit(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._count >= n, timeout), f"only {self._count} started"


# -- values -------------------------------------------------------------------------------------
def test_values_are_the_awaited_results(no_thread_leak):
    engine = ProcessingEngine(double, max_workers=4)
    assert engine.backend.name == "asyncio" and engine.max_workers == 4
    symbols = list(range(50))
    result = engine.process_batch(symbols)
    assert_accounted(symbols, result)
    assert sorted(r.value for r in result) == [2 * s for s in symbols]
    assert all(r.status is ResultStatus.SUCCESS and not asyncio.iscoroutine(r.value) for r in result)


def test_many_tiny_coroutines_are_chunked_and_all_reported(no_thread_leak):
    seen = []
    symbols = list(range(3000))
    result = ProcessingEngine(double, max_workers=8).process_batch(symbols, progress_callback=seen.append)
    assert_accounted(symbols, result, seen)
    assert len(seen) == 3001 and seen[-1].completed_symbols == 3000


def test_partial_and_callable_object_with_async_call(no_thread_leak):
    async def scaled(x, factor):
        await asyncio.sleep(0)
        return x * factor

    class Fetcher:
        async def __call__(self, x):
            await asyncio.sleep(0)
            return f"got {x}"

    partial = functools.partial(scaled, factor=10)
    assert is_async_callable(partial) and is_async_callable(Fetcher())
    assert not is_async_callable(Fetcher) and not is_async_callable(len)
    assert sorted(r.value for r in ProcessingEngine(partial).process_batch([1, 2])) == [10, 20]
    assert sorted(r.value for r in ProcessingEngine(Fetcher()).process_batch(["a"])) == ["got a"]
    assert ProcessingEngine(functools.partial(partial, 1)).backend.name == "asyncio"


# -- concurrency ----------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 3, 7])
def test_concurrency_reaches_but_never_exceeds_max_workers(workers, no_thread_leak):
    state = {"running": 0, "peak": 0}
    all_in = asyncio.Event()

    async def work(x):
        state["running"] += 1  # one loop thread: no lock needed
        state["peak"] = max(state["peak"], state["running"])
        if state["running"] == workers:
            all_in.set()
        try:
            if x < workers:  # the first ones wait until max_workers run at once
                await all_in.wait()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            state["running"] -= 1
        return x

    symbols = list(range(200))
    result = ProcessingEngine(work, max_workers=workers).process_batch(symbols)
    assert_accounted(symbols, result)
    assert state["peak"] == workers


# -- Stop -------------------------------------------------------------------------------------------
def test_stop_cancels_running_coroutines_at_their_next_await(no_thread_leak):
    started = Started()
    token = CancellationToken()

    async def forever(x):
        started.hit()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            started.cancelled.append(x)
            raise

    symbols = list(range(20))
    timer = threading.Thread(target=lambda: (started.wait(3), token.cancel("user pressed Stop")))
    timer.start()
    result = ProcessingEngine(forever, max_workers=3).process_batch(symbols, cancellation_token=token)
    timer.join()
    assert_accounted(symbols, result)
    assert result.cancelled and result.cancel_reason == "user pressed Stop"
    assert sorted(r.symbol for r in result) == [0, 1, 2]
    assert all(r.status is ResultStatus.CANCELLED for r in result)
    assert all(isinstance(r.error, ProcessingCancelledException) for r in result)
    assert result[0].error.reason == "user pressed Stop"
    assert list(result.unprocessed) == list(range(3, 20))
    assert sorted(started.cancelled) == [0, 1, 2]  # each coroutine saw the cancel
    assert result.progress.running_symbols == 0


def test_stop_keeps_finished_symbols_and_counts_the_rest(no_thread_leak):
    token = CancellationToken()
    gate = asyncio.Event()

    async def work(x):
        if x >= 5:
            if x == 8:
                token.cancel("enough")
            await gate.wait()
        return x

    symbols = list(range(40))
    result = ProcessingEngine(work, max_workers=4, chunk_size=1).process_batch(symbols, cancellation_token=token)
    assert_accounted(symbols, result)
    done = {r.symbol for r in result if r.status is ResultStatus.SUCCESS}
    assert set(range(5)) <= done
    assert {r.symbol for r in result if r.status is ResultStatus.CANCELLED} <= set(range(5, 9))
    assert result.cancelled and result.cancel_reason == "enough"


def test_a_coroutine_that_swallows_the_cancel_is_left_running_and_unprocessed(no_thread_leak):
    started = Started()
    token = CancellationToken()
    release = threading.Event()

    async def stubborn(x):
        started.hit()
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass  # ignores Stop
        return x

    timer = threading.Thread(target=lambda: (started.wait(2), token.cancel()))
    timer.start()
    result = ProcessingEngine(stubborn, max_workers=2).process_batch(range(6), cancellation_token=token)
    timer.join()
    assert_accounted(list(range(6)), result)
    assert len(result) == 0 and list(result.unprocessed) == list(range(6))
    assert result.progress.running_symbols == 2  # reported, not awaited
    release.set()  # the loop thread then ends (no_thread_leak)


def test_processor_with_token_gets_the_batch_token_and_can_stop_itself(no_thread_leak):
    seen = []

    async def careful(x, cancellation_token):
        await asyncio.sleep(0)
        seen.append(type(cancellation_token).__name__)
        if x == 3:
            raise ProcessingCancelledException("gave up")
        cancellation_token.throw_if_cancelled()
        return x

    result = ProcessingEngine(careful, max_workers=2).process_batch(range(6))
    assert set(seen) == {"CancellationToken"}
    statuses = {r.symbol: r.status for r in result}
    assert statuses[3] is ResultStatus.CANCELLED
    assert all(statuses[s] is ResultStatus.SUCCESS for s in (0, 1, 2, 4, 5))


def test_error_budget_cancels_the_running_coroutines(no_thread_leak):
    gate = asyncio.Event()

    async def work(x):
        if x == 0:
            raise ValueError("first")
        await gate.wait()

    symbols = list(range(10))
    result = ProcessingEngine(work, max_workers=3, max_errors=0, chunk_size=1).process_batch(symbols)
    assert_accounted(symbols, result)
    assert result.cancelled and "error budget" in result.cancel_reason
    assert {r.status for r in result} <= {ResultStatus.ERROR, ResultStatus.CANCELLED}


# -- timeout ----------------------------------------------------------------------------------------
def test_timeout_cancels_the_coroutine_and_records_a_timeout_error(no_thread_leak):
    cancelled = []

    async def stuck(x):
        if x == "slow":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(x)
                raise
        return x

    result = ProcessingEngine(stuck, max_workers=2, timeout=0.2).process_batch(["slow", "fast"])
    assert_accounted(["slow", "fast"], result)
    outcome = {r.symbol: r for r in result}
    assert outcome["fast"].status is ResultStatus.SUCCESS
    slow = outcome["slow"]
    assert slow.status is ResultStatus.ERROR and isinstance(slow.error, TimeoutError)
    assert "0.2s of starting" in str(slow.error)
    assert slow.duration_ms >= 200
    assert cancelled == ["slow"]
    assert not result.cancelled


def test_a_processors_own_timeout_error_is_not_ours(no_thread_leak):
    async def raises(x):
        raise TimeoutError("the API timed out")

    (r,) = ProcessingEngine(raises, timeout=5).process_batch(["x"])
    assert r.status is ResultStatus.ERROR and str(r.error) == "the API timed out"


def test_timeout_goes_to_a_given_async_backend_object():
    with pytest.raises(ValueError, match=r"AsyncBackend\(timeout=1"):
        ProcessingEngine(double, backend=AsyncBackend(2), timeout=1)
    engine = ProcessingEngine(double, backend=AsyncBackend(2, timeout=1), timeout=1)
    assert engine.backend.timeout == 1


# -- sync callables that return awaitables -----------------------------------------------------------
def test_callable_returning_an_awaitable_is_awaited_on_threads(no_thread_leak):
    loops = []  # the loop objects themselves: an id could be reused once a closed loop is freed

    async def inner(x):
        loop = asyncio.get_running_loop()
        if not any(seen is loop for seen in loops):
            loops.append(loop)
        await asyncio.sleep(0)
        return x + 1

    def factory(x):
        return inner(x)  # a sync function: only the value tells

    engine = ProcessingEngine(factory, max_workers=3)
    assert engine.backend.name == "threads"
    symbols = list(range(30))
    result = engine.process_batch(symbols)
    assert_accounted(symbols, result)
    assert sorted(r.value for r in result) == [s + 1 for s in symbols]
    assert len(loops) == 1  # one loop for the batch, shared by the worker threads
    result = engine.process_batch(symbols)
    assert len(loops) == 2  # a new one per batch (the first one was stopped)


def test_callable_returning_an_awaitable_on_the_asyncio_backend(no_thread_leak):
    result = ProcessingEngine(lambda x: double(x), backend="asyncio", max_workers=2).process_batch([1, 2])
    assert sorted(r.value for r in result) == [2, 4]


def test_stop_cancels_an_awaitable_a_worker_thread_waits_for(no_thread_leak):
    started = Started()
    token = CancellationToken()

    async def forever(x):
        started.hit()
        await asyncio.Event().wait()

    timer = threading.Thread(target=lambda: (started.wait(2), token.cancel()))
    timer.start()
    symbols = list(range(8))
    result = ProcessingEngine(lambda x: forever(x), max_workers=2).process_batch(symbols, cancellation_token=token)
    timer.join()
    assert_accounted(symbols, result)
    assert result.cancelled
    # the worker threads saw the cancel at once; whether their CANCELLED results made it before the
    # batch returned is a race, but nothing is lost and no thread is left (no_thread_leak)
    assert {r.status for r in result} <= {ResultStatus.CANCELLED}


@pytest.mark.parametrize("backend", ["threads", "asyncio"])
def test_an_awaitable_resolving_to_another_is_awaited_to_the_end(backend, no_thread_leak):
    async def outer(x):
        return double(x)  # returns a coroutine, not its value

    def factory(x):
        return outer(x)

    result = ProcessingEngine(factory, backend=backend).process_batch([1, 2])
    assert sorted(r.value for r in result) == [2, 4]
    result = ProcessingEngine(outer, timeout=5).process_batch([3])
    assert [r.value for r in result] == [6]


def test_a_user_thread_pool_awaits_too(no_thread_leak):
    with ThreadPoolExecutor(2) as pool:
        result = ProcessingEngine(lambda x: double(x), executor=pool).process_batch([1, 2, 3])
    assert sorted(r.value for r in result) == [2, 4, 6]


def test_a_worker_without_a_loop_reports_a_clear_error_and_closes_the_coroutine():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be a RuntimeWarning
        (r,) = run_chunk(lambda x: double(x), ["a"], None, False)
        gc.collect()
    assert r.status is ResultStatus.ERROR and isinstance(r.error, TypeError)
    assert "cannot await" in str(r.error) and "backend='asyncio'" in str(r.error)


# -- refusals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"backend": "processes"}, "processes backend cannot run"),
    ({"backend": "dask"}, "dask backend cannot run"),
    ({"executor": ThreadPoolExecutor(1)}, "executor= cannot run"),
    ({"backend": ThreadBackend(2)}, "threads backend cannot run"),
])
def test_backends_that_cannot_run_coroutines_refuse_at_construction(kwargs, needle):
    try:
        with pytest.raises(TypeError, match=needle) as info:
            ProcessingEngine(double, **kwargs)
        assert "double" in str(info.value)
    finally:
        if "executor" in kwargs:
            kwargs["executor"].shutdown()


def test_an_async_generator_is_refused():
    async def gen(x):
        yield x

    with pytest.raises(TypeError, match="async generator"):
        ProcessingEngine(gen)


def test_async_backend_arguments():
    with pytest.raises(ValueError, match="max_workers"):
        AsyncBackend(0)
    with pytest.raises(TypeError, match="timeout"):
        AsyncBackend(2, timeout="1")
    with pytest.raises(ValueError, match="timeout"):
        AsyncBackend(2, timeout=0)
    assert AsyncBackend().max_workers == 32


# -- threads and loops -----------------------------------------------------------------------------------
def test_no_thread_outlives_a_batch_even_after_a_cancel(no_thread_leak):
    token = CancellationToken()
    token.cancel()
    result = ProcessingEngine(double).process_batch(range(5), cancellation_token=token)
    assert len(result) == 0 and list(result.unprocessed) == list(range(5))


def test_to_thread_inside_a_coroutine_is_cleaned_up(no_thread_leak):
    async def offload(x):
        return await asyncio.to_thread(str, x)

    result = ProcessingEngine(offload, max_workers=2).process_batch(range(4))
    assert sorted(r.value for r in result) == ["0", "1", "2", "3"]


def test_runs_while_the_callers_own_loop_is_running(no_thread_leak):
    async def main():
        engine = ProcessingEngine(double, max_workers=2)
        blocking = engine.process_batch([1, 2])  # blocks this loop, but the batch has its own
        handle = engine.start([3, 4])
        awaited = await handle
        return sorted(r.value for r in blocking), sorted(r.value for r in awaited)

    assert asyncio.run(main()) == ([2, 4], [6, 8])


def test_a_batch_started_in_the_background_can_be_stopped(no_thread_leak):
    started = Started()

    async def forever(x):
        started.hit()
        await asyncio.Event().wait()

    handle = ProcessingEngine(forever, max_workers=2).start(range(10))
    started.wait(2)
    handle.cancel()
    result = handle.result(timeout=10)
    assert_accounted(list(range(10)), result)
    assert len(result) == 2 and all(r.status is ResultStatus.CANCELLED for r in result)


# -- races ----------------------------------------------------------------------------------------------
def test_racing_cancels_at_random_moments_lose_nothing_and_leave_no_thread(no_thread_leak):
    """Many async batches, each cancelled by 4 threads at once at a random moment (or never): every
    symbol accounted for, exactly one cancel wins, statuses consistent, no loop thread left."""
    import random

    rng = random.Random(12)

    async def work(x):
        for _ in range(x % 4):
            await asyncio.sleep(0)
        if x % 11 == 0:
            raise ValueError(x)
        return x

    outcomes = Counter()
    for round_ in range(40):
        n = rng.randint(0, 400)
        symbols = list(range(n))
        token = CancellationToken()
        go = threading.Event()
        wins = []
        spins = rng.randint(0, 3000)

        def cancel(spins=spins, token=token, go=go, wins=wins):
            go.wait()
            for _ in range(spins):  # a random moment, without sleeping
                pass
            wins.append(token.cancel(f"round {round_}"))

        cancellers = [threading.Thread(target=cancel) for _ in range(4)] if round_ % 5 else []
        for t in cancellers:
            t.start()
        seen = []

        def callback(p, go=go, seen=seen):
            seen.append(p)
            go.set()

        result = ProcessingEngine(work, max_workers=rng.randint(1, 16)).process_batch(
            symbols, progress_callback=callback, cancellation_token=token)
        go.set()
        for t in cancellers:
            t.join()
        assert_accounted(symbols, result, seen)
        if cancellers:
            assert wins.count(True) == 1
        for r in result:
            if r.status is ResultStatus.ERROR:
                assert r.symbol % 11 == 0 and isinstance(r.error, ValueError)
            elif r.status is ResultStatus.SUCCESS:
                assert r.value == r.symbol
            else:
                assert result.cancelled and isinstance(r.error, ProcessingCancelledException)
            outcomes[r.status] += 1
        outcomes["cancelled batches"] += result.cancelled
    # the rounds did exercise the cancel path (CANCELLED results themselves are a race here: the
    # deterministic Stop tests above pin them)
    assert outcomes["cancelled batches"] >= 10 and outcomes[ResultStatus.SUCCESS], outcomes


@pytest.mark.parametrize("backend", ["asyncio", "threads"])
def test_a_processor_that_stops_the_running_loop_costs_a_logged_line_and_the_batch_goes_on(backend, no_thread_leak,
                                                                                           caplog):
    async def rogue(x):
        if x == 3:
            asyncio.get_running_loop().stop()
        await asyncio.sleep(0.01)
        return x

    symbols = list(range(40))
    processor = rogue if backend == "asyncio" else (lambda x: rogue(x))
    with caplog.at_level(logging.WARNING, logger="procengine_nb"):
        result = ProcessingEngine(processor, backend=backend, max_workers=2, chunk_size=1).process_batch(symbols)
    assert_accounted(symbols, result)  # no hang, no crash, nothing lost
    assert sorted(r.value for r in result) == symbols and not result.cancelled  # the loop was started again
    assert any("stopped the batch's event loop" in r.getMessage() for r in caplog.records)


# -- with the other batch features ------------------------------------------------------------------------
def test_retries_rerun_a_failing_coroutine(no_thread_leak):
    calls = Counter()

    async def flaky(x):
        calls[x] += 1
        await asyncio.sleep(0)
        if x % 2 and calls[x] < 3:
            raise ConnectionError(f"429 for {x}")
        return x

    result = ProcessingEngine(flaky, max_workers=3, retries=2).process_batch(range(6))
    assert sorted((r.symbol, r.status, r.attempts) for r in result) == [
        (s, ResultStatus.SUCCESS, 3 if s % 2 else 1) for s in range(6)]


def test_an_endless_generator_stops_on_a_deadline(no_thread_leak):
    import itertools

    token = CancellationToken()
    drawn = Started()

    async def work(x):
        drawn.hit()
        await asyncio.sleep(0)
        return x

    timer = threading.Thread(target=lambda: (drawn.wait(500), token.cancel("deadline")))
    timer.start()
    result = ProcessingEngine(work, max_workers=4).process_batch(itertools.count(), cancellation_token=token)
    timer.join()
    assert result.cancelled and result.cancel_reason == "deadline" and not result.input_exhausted
    assert len(result) >= 500 and all(r.value == r.symbol for r in result if r.status is ResultStatus.SUCCESS)


def test_a_store_skips_what_an_async_batch_already_did(tmp_path, no_thread_leak):
    async def fetch(x):
        await asyncio.sleep(0)
        return x * 2

    path = tmp_path / "results.sqlite"
    engine = ProcessingEngine(fetch, max_workers=4)
    engine.process_batch(range(10), store=path)
    again = engine.process_batch(range(15), store=path)
    assert sum(r.from_store for r in again) == 10
    assert sorted(r.value for r in again) == [2 * s for s in range(15)]
