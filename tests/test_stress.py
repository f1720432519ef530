"""Stress (marker ``slow``, run in CI too): many symbols, many cancellers, many batches in a row.

- 10,000 symbols on 16 workers while 8 threads cancel at random moments, repeated: every symbol is
  accounted for, exactly one ``cancel()`` wins, no thread is left behind.
- ``register()`` callbacks run exactly once (or never, when unregistered first) under races with
  ``cancel()``, on plain and linked tokens.
- 100 batches in a row leave no thread, thread pool or file descriptor behind, and memory stays flat
  (tracemalloc).
"""

from __future__ import annotations

import gc
import random
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from test_properties import Recorder, assert_accounted

from procengine_nb import CancellationToken, ProcessingCancelledException, ProcessingEngine

pytestmark = pytest.mark.slow

WAIT = 60  # safety net only


def _processor(symbol: int, cancellation_token: CancellationToken) -> int:
    if symbol % 97 == 0:
        raise ValueError(f"bad symbol {symbol}")
    if symbol % 89 == 0:
        cancellation_token.throw_if_cancelled()  # a cooperative one
    return symbol * 2


class _Trigger(Recorder):
    """Records snapshots and opens ``gate`` once ``target`` symbols have completed."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target
        self.gate = threading.Event()

    def __call__(self, p):
        super().__call__(p)
        if p.completed_symbols >= self.target or p.finished:
            self.gate.set()


@pytest.mark.parametrize("round_", range(10))
def test_ten_thousand_symbols_on_16_workers_with_8_racing_cancellers(round_, no_thread_leak):
    rng = random.Random(round_)
    symbols = list(range(10_000))
    token = CancellationToken()
    # the cancel moment: from "before the first completion" to "after the end" (target > 10,000)
    recorder = _Trigger(target=rng.randint(0, 12_000))
    engine = ProcessingEngine(_processor, max_workers=16)
    never = threading.Event()
    wins: list[bool] = []
    lock = threading.Lock()

    def canceller(jitter: float, use_handle: bool) -> None:
        recorder.gate.wait(WAIT)
        never.wait(jitter)  # the 8 cancels race around that moment
        won = handle.cancel(f"canceller {jitter:.5f}") if use_handle else token.cancel(f"canceller {jitter:.5f}")
        with lock:
            wins.append(won)

    handle = engine.start(symbols, progress_callback=recorder, cancellation_token=token)
    threads = [threading.Thread(target=canceller, args=(rng.uniform(0, 0.002), i % 2 == 0)) for i in range(8)]
    for t in threads:
        t.start()
    if recorder.target == 0:
        recorder.gate.set()
    result = handle.result(timeout=WAIT)
    for t in threads:
        t.join(WAIT)
    assert_accounted(symbols, result, recorder.snapshots)
    assert wins.count(True) == 1 and len(wins) == 8  # exactly one cancel() changed the token
    if result.cancelled:
        assert result.cancel_reason == token.reason
        assert len(result) >= recorder.target  # the cancel came after the chosen moment, never before
    for r in result.errors:
        assert r.symbol % 97 == 0 and isinstance(r.error, ValueError)
    for r in result.cancelled_results:
        assert isinstance(r.error, ProcessingCancelledException)
    for r in result.successes:
        assert r.value == 2 * r.symbol


def test_ten_thousand_symbols_without_cancel_complete(no_thread_leak):
    symbols = list(range(10_000))
    recorder = Recorder()
    result = ProcessingEngine(_processor, max_workers=16).process_batch(symbols, progress_callback=recorder)
    assert_accounted(symbols, result, recorder.snapshots)
    assert not result.cancelled
    assert len(result.errors) == len([s for s in symbols if s % 97 == 0])
    assert len(recorder.snapshots) == 10_001


@pytest.mark.parametrize("round_", range(3))
def test_register_runs_each_callback_exactly_once_under_races(round_):
    rng = random.Random(round_)
    for _ in range(200):
        token = CancellationToken()
        counts = [0] * 64
        removed = [None] * 64
        lock = threading.Lock()
        start = threading.Barrier(6)

        def bump(i: int) -> None:
            with lock:
                counts[i] += 1

        def registrar(offset: int, unregister_some: bool) -> None:
            start.wait(WAIT)
            for i in range(offset, offset + 16):
                registration = token.register(lambda i=i: bump(i))
                if unregister_some and i % 3 == 0:
                    removed[i] = registration.unregister()

        def canceller() -> None:
            start.wait(WAIT)
            token.cancel("race")

        workers = [threading.Thread(target=registrar, args=(16 * k, rng.random() < 0.5)) for k in range(4)]
        workers += [threading.Thread(target=canceller) for _ in range(2)]
        rng.shuffle(workers)
        for t in workers:
            t.start()
        for t in workers:
            t.join(WAIT)
        assert token.is_cancelled
        for i in range(64):
            if removed[i] is True:  # removed before it ran: never runs
                assert counts[i] == 0, i
            else:  # kept, or removed too late: ran exactly once
                assert counts[i] == 1, (i, removed[i], counts[i])


def test_linked_tokens_under_racing_parents_cancel_once():
    for _ in range(300):
        parents = [CancellationToken() for _ in range(4)]
        child = CancellationToken.linked(*parents)
        calls = []
        child.register(lambda: calls.append(1))
        start = threading.Barrier(4)
        threads = [threading.Thread(target=lambda p=p: (start.wait(WAIT), p.cancel(f"parent {id(p)}")))
                   for p in parents]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert child.is_cancelled and calls == [1]
        assert child.reason in {p.reason for p in parents}


def _live_pools() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, ThreadPoolExecutor))


def _run_batches(n: int, rng: random.Random) -> None:
    """A mix of finished, cancelled, failing and background batches; nothing kept afterwards."""
    for i in range(n):
        engine = ProcessingEngine(_processor, max_workers=rng.randint(1, 8))
        symbols = list(range(rng.randint(0, 300)))
        token = CancellationToken()
        if i % 4 == 1:
            token.cancel("before the start")
        if i % 4 == 2:
            recorder = Recorder(cancel_at=len(symbols) // 2, token=token)
        else:
            recorder = Recorder()
        if i % 2:
            result = engine.start(symbols, progress_callback=recorder, cancellation_token=token).result(WAIT)
        else:
            result = engine.process_batch(symbols, progress_callback=recorder, cancellation_token=token)
        assert len(result) + len(result.unprocessed) == len(symbols)


def _forget_ended_jobs() -> None:
    """``jobs()`` keeps the last 20 ended jobs with their results by design (bounded:
    ``test_control_room.py::test_jobs_keeps_the_last_20_ended``); forgotten here, so that what stays is a leak."""
    from procengine_nb import _registry

    with _registry._lock:
        _registry._ended.clear()


def test_a_hundred_batches_leave_no_thread_pool_or_descriptor_and_memory_stays_flat():
    from threadcheck import wait_for_threads

    rng = random.Random(7)
    process = psutil.Process()
    _run_batches(10, rng)  # warm-up: imports, caches, logging handlers
    gc.collect()
    threads_before = set(threading.enumerate())
    assert not wait_for_threads(threads_before)
    fds_before = process.num_fds()
    pools_before = _live_pools()

    # What the test harness itself allocates is not ours: coverage keeps a tracer per thread it saw.
    harness = [tracemalloc.Filter(False, "*/coverage/*"), tracemalloc.Filter(False, tracemalloc.__file__)]
    tracemalloc.start()
    try:
        _run_batches(10, rng)
        _forget_ended_jobs()
        gc.collect()
        baseline = sum(s.size for s in tracemalloc.take_snapshot().filter_traces(harness).statistics("filename"))
        _run_batches(100, rng)
        _forget_ended_jobs()
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(harness)
        after = sum(s.size for s in snapshot.statistics("filename"))
    finally:
        tracemalloc.stop()

    leftovers = wait_for_threads(threads_before)
    assert not leftovers, f"threads left running: {[t.name for t in leftovers]}"
    assert _live_pools() == pools_before, "a thread pool outlived its batch"
    assert process.num_fds() <= fds_before, "a file descriptor was left open"
    growth = after - baseline
    top = "\n".join(str(s) for s in snapshot.statistics("lineno")[:5])
    # 100 batches of up to 300 symbols: a leak of one result list per batch would be megabytes
    assert growth < 256 * 1024, f"memory grew by {growth} bytes over 100 batches; top allocations:\n{top}"
