"""One promise, every backend: the same tests on each shape of the ``backend`` fixture (conftest.py).

Accounting (results + unprocessed == the input, each symbol once), Stop (returns promptly; a running
cooperative processor sees its token cancelled within 100 ms, measured on the worker's side), timeouts
(from each symbol's own start), faults (BaseException subclasses, what cannot be pickled), progress
(one callback per symbol and a final snapshot) and closing what the batch runs on while it runs.
A backend-specific test (tests/backends/) is for what only that backend has.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from procengine_nb import CancellationToken, ResultStatus

from .conformance_procs import SLOW_SECONDS

pytestmark = pytest.mark.timeout(240)

STOP_SECONDS = 0.1
"""How soon a running cooperative processor must see a Stop (the contract's bound)."""


def assert_accounted(result, symbols) -> None:
    """Every input symbol is in the results or in ``unprocessed``, exactly once (by identity)."""
    seen = Counter(id(r.symbol) for r in result) + Counter(id(s) for s in result.unprocessed)
    assert seen == Counter(id(s) for s in symbols), (
        f"results {[r.symbol for r in result]!r} + unprocessed {list(result.unprocessed)!r} != input")


def wait_for_files(directory: Path, suffix: str, count: int, seconds: float = 60.0) -> list[Path]:
    deadline = time.monotonic() + seconds
    while True:
        found = sorted(directory.glob(f"*{suffix}"))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"only {len(found)} of {count} {suffix} files after {seconds}s"
        time.sleep(0.005)


# -- accounting ----------------------------------------------------------------------------------------
def test_successes_errors_and_cancels_are_each_one_result(backend):
    symbols = list(range(60))
    with backend.engine("mixed") as engine:
        result = engine.process_batch(symbols)
    assert_accounted(result, symbols)
    assert not result.cancelled and list(result.unprocessed) == []
    statuses = {r.symbol: r.status for r in result}
    assert statuses == {s: (ResultStatus.ERROR if s % 5 == 1 else
                            ResultStatus.CANCELLED if s % 5 == 2 else ResultStatus.SUCCESS) for s in symbols}
    assert all(r.value == 2 * r.symbol for r in result if r.ok)
    assert {type(r.error).__name__ for r in result.errors} == {"ValueError"}
    assert all(str(r.error) == f"bad {r.symbol}" for r in result.errors)
    assert all(r.traceback and r.error.__traceback__ is None for r in result.errors)


def test_a_stop_mid_batch_accounts_every_symbol_once(backend):
    symbols = list(range(300))
    token = CancellationToken()

    def stop_after_twenty(progress):
        if progress.completed_symbols >= 20:
            token.cancel()

    with backend.engine("slow_double") as engine:
        result = engine.process_batch(symbols, progress_callback=stop_after_twenty, cancellation_token=token)
    assert_accounted(result, symbols)
    assert result.cancelled and 20 <= len(result) < len(symbols)
    assert not result.errors, result.errors[:3]
    # what ran finished, or (a processor the Stop reached: asyncio cancels running coroutines) ended CANCELLED
    assert all(r.value == 2 * r.symbol for r in result if r.ok)
    assert len(result) - sum(r.ok for r in result) <= 2
    assert list(result.unprocessed) == sorted(result.unprocessed)  # input order


# -- Stop ----------------------------------------------------------------------------------------------
def test_stop_returns_promptly_and_running_processors_see_it_within_100ms(backend, tmp_path):
    symbols = list(range(8))
    tmp_path = backend.directory(tmp_path)
    with backend.engine("wait_for_stop", bound={"directory": str(tmp_path)}) as engine:
        handle = engine.start(symbols)
        wait_for_files(tmp_path, ".started", 2)
        time.sleep(0.05)  # let every worker settle into its wait
        started = sorted(tmp_path.glob("*.started"))
        stopped_at = time.time()
        handle.cancel()
        result = handle.result(timeout=60)
        returned_after = time.time() - stopped_at
        # (inside the block: closing the engine may end worker processes a Stop left running)
        seen = wait_for_files(tmp_path, ".seen", len(started), seconds=30)
    assert_accounted(result, symbols)
    assert result.cancelled
    assert returned_after < 5.0, f"the Stop took {returned_after:.2f}s to return"
    latencies = {p.name: round(float(p.read_text()) - stopped_at, 4) for p in seen}
    assert max(latencies.values()) < STOP_SECONDS, f"the token turned cancelled after {latencies} s"
    assert all(r.status is ResultStatus.CANCELLED for r in result), result


# -- timeout= ------------------------------------------------------------------------------------------
def test_timeout_counts_from_each_symbols_own_start(backend):
    symbols = list(range(8))  # 0 and 1 run 2.5 s, 2-7 run 0.05 s, queued behind them
    started = time.monotonic()
    with backend.engine("slow_first", timeout=1.0) as engine:
        result = engine.process_batch(symbols)
    elapsed = time.monotonic() - started
    assert_accounted(result, symbols)
    timed_out = sorted(r.symbol for r in result.errors if isinstance(r.error, TimeoutError))
    assert timed_out == [0, 1], [(r.symbol, r.error) for r in result.errors]
    assert sorted(r.symbol for r in result if r.ok) == list(range(2, 8))
    assert not result.cancelled and elapsed < 1.0 + SLOW_SECONDS + 30


# -- faults ---------------------------------------------------------------------------------------------
def test_base_exceptions_raised_by_the_processor_cost_only_their_symbol(backend):
    symbols = ["a", "keyboard", "exit", "fatal", "generator", "b"]
    with backend.engine("faults") as engine:
        result = engine.process_batch(symbols)
    assert_accounted(result, symbols)
    assert not result.cancelled
    assert {r.symbol: type(r.error).__name__ for r in result.errors} == {
        "keyboard": "KeyboardInterrupt", "exit": "SystemExit", "fatal": "Fatal", "generator": "GeneratorExit"}
    assert sorted(r.value for r in result if r.ok) == ["A", "B"]


def test_what_cannot_be_pickled_costs_only_its_symbol(backend):
    lock = threading.Lock()
    symbols = ["a", "lock", "lock-error", lock, "b"]
    with backend.engine("faults", chunk_size=5) as engine:
        result = engine.process_batch(symbols)
    assert_accounted(result, symbols)
    assert not result.cancelled
    by_symbol = {id(r.symbol): r for r in result}
    assert by_symbol[id("a")].value == "A" and by_symbol[id("b")].value == "B"
    errors = {repr(r.symbol): type(r.error).__name__ for r in result.errors}
    if backend.remote:  # a value, an exception or a symbol that cannot travel: that symbol's ERROR
        assert errors == {"'lock'": "RemoteSerializationError", "'lock-error'": "RemoteSerializationError",
                          repr(lock): "RemoteSerializationError"}
        messages = {repr(r.symbol): str(r.error) for r in result.errors}
        assert "value for symbol 'lock' cannot be sent back from the worker" in messages["'lock'"]
        assert "exception for symbol 'lock-error' cannot be sent back" in messages["'lock-error'"]
        assert "cannot be sent to a worker process" in messages[repr(lock)] and "lock" in messages[repr(lock)]
    else:  # nothing travels: the lock is a value, the exception is kept as it was raised
        assert errors == {"'lock-error'": "ValueError", repr(lock): "AttributeError"}


# -- progress -------------------------------------------------------------------------------------------
def test_one_callback_per_symbol_and_a_final_snapshot(backend):
    symbols = list(range(40))
    snapshots = []
    with backend.engine("mixed") as engine:
        result = engine.process_batch(symbols, progress_callback=snapshots.append)
    assert len(snapshots) == len(symbols) + 1
    completed = [p.completed_symbols for p in snapshots]
    assert completed == sorted(completed) and completed[-2:] == [40, 40]
    final = snapshots[-1]
    assert final.total_symbols == 40 and final.percentage == 100.0 and final.estimated_remaining_ms == 0.0
    assert final.errors_count == len(result.errors) == 8
    assert result.progress == final


# -- closing what the batch runs on ------------------------------------------------------------------------
def test_closing_what_the_batch_runs_on_ends_it_with_every_symbol_accounted(backend, tmp_path):
    """threads, asyncio: ``engine.close()``; ``executor=``: the pool shut down; processes: the engine
    closed and the pools shut down; Dask: the client closed (the user's own ``Client()`` closes its
    cluster with it; on the remote deployment, a client of its scheduler)."""
    symbols = list(range(40))
    tmp_path = backend.directory(tmp_path)
    engine = backend.closable_engine("note_and_sleep", bound={"directory": str(tmp_path)})
    handle = engine.start(symbols)
    try:
        wait_for_files(tmp_path, ".started", 3)
        backend.close_mid_batch(engine)
        result = handle.result(timeout=30)
    finally:
        if not handle.done():  # (a failure: do not leave the batch running)
            handle.cancel()
            handle.result(timeout=60)
        engine.close()
    assert_accounted(result, symbols)
    assert result.progress.completed_symbols == len(result)

