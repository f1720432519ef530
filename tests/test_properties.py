"""Property tests (hypothesis): for random batches, nothing is lost, counted twice, or shown wrong.

Random symbol counts, worker counts, chunk sizes, failure patterns, task durations (tiny work or a
wait on an event, never a long sleep) and cancel moments (from the callback, from a processor, from
another thread, cooperatively). For every run:

- the symbols of the results plus ``unprocessed`` are exactly the input (as multisets), and
  ``unprocessed`` is in input order;
- ``completed_symbols`` never goes backwards across the snapshots a callback sees;
- ``percentage`` stays in 0..100; the ETA is never negative, and 0 in the final snapshot;
- ``errors_count`` equals the number of ERROR results;
- the last callback call sees the final state (``result.progress``).

``assert_accounted`` is shared with the stress and fault tests.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from threadcheck import wait_for_threads

from procengine_nb import (
    BatchResult,
    CancellationToken,
    ProcessingCancelledException,
    ProcessingEngine,
    ProcessingProgress,
    ResultStatus,
)

# Moderate and deadline-free, so CI on 2 shared cores is stable. PROCENGINE_PROPERTY_EXAMPLES lowers or
# raises it; the mutation check runs these tests with fewer examples and no shrinking.
EXAMPLES = int(os.environ.get("PROCENGINE_PROPERTY_EXAMPLES", "100"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the tree; failures print their reproducer
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
    # the mutation check only needs to see a failure, not its smallest example
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("PROCENGINE_PROPERTY_NO_SHRINK") else list(Phase),
)


class Boom(Exception):
    """The failure a processor raises for a symbol in the failure pattern."""


# -- the invariants -------------------------------------------------------------------------------
def assert_snapshot_sane(p: ProcessingProgress, total: int, lazy: bool = False) -> None:
    """What must hold for every snapshot anyone sees. ``lazy``: the input was drawn lazily and ``total``
    is how many were drawn by the end (a snapshot counts the symbols drawn so far, or the hint)."""
    if lazy:
        assert p.total_symbols >= p.completed_symbols
        if not p.total_known:
            assert p.total_symbols <= total
    else:
        assert p.total_symbols == total
    assert 0 <= p.completed_symbols <= total
    assert p.retrying >= 0
    if not p.total_known:
        assert p.estimated_remaining_ms is None or p.finished
    assert 0 <= p.errors_count <= p.completed_symbols
    assert 0.0 <= p.percentage <= 100.0
    assert p.estimated_remaining_ms is None or p.estimated_remaining_ms >= 0
    assert p.elapsed_time_ms >= 0
    assert p.running_symbols >= 0


def assert_accounted(
    symbols: Sequence[Any],
    result: BatchResult,
    snapshots: Sequence[ProcessingProgress] | None = None,
    *,
    lazy: bool = False,
    retries: int = 0,
) -> None:
    """Every accounting guarantee of a finished batch (see the module docstring). For a lazy input,
    ``symbols`` are the symbols drawn from it (the rest stayed in the iterator)."""
    total = len(symbols)
    # nothing lost, nothing counted twice
    seen = Counter(r.symbol for r in result) + Counter(result.unprocessed)
    assert seen == Counter(symbols), "results + unprocessed differ from the input"
    assert len(result) + len(result.unprocessed) == total
    # unprocessed in input order: its positions are ascending and point at those symbols
    indices = list(result.unprocessed.indices) if hasattr(result.unprocessed, "indices") else None
    if indices is not None:
        assert indices == sorted(set(indices)), "unprocessed is not in input order"
        assert [symbols[i] for i in indices] == list(result.unprocessed)
    # no symbol both in the results and unprocessed (by position, for unique inputs)
    if len(set(symbols)) == total:
        assert not {r.symbol for r in result} & set(result.unprocessed)
    # the final snapshot
    final = result.progress
    assert_snapshot_sane(final, total, lazy)
    assert final.finished is True
    assert final.retrying == 0
    if not lazy or not final.total_known:
        assert final.total_symbols == total
    if lazy and result.input_exhausted:
        assert final.total_known and final.total_symbols == total
    assert final.completed_symbols == len(result)
    assert final.errors_count == sum(1 for r in result if r.status is ResultStatus.ERROR)
    assert final.errors_count == len(result.errors)
    assert final.estimated_remaining_ms == 0
    assert final.cancelled is result.cancelled
    if not result.cancelled:
        assert len(result.unprocessed) == 0
        assert final.percentage == 100.0
    for r in result:
        assert (r.status is ResultStatus.SUCCESS) == (r.error is None)
        assert r.duration_ms >= 0
        assert 1 <= r.attempts <= retries + 1
    if snapshots is not None:
        assert snapshots, "the callback was never called (it must be, once more at the end)"
        previous = -1
        previous_errors = -1
        for p in snapshots:
            assert_snapshot_sane(p, total, lazy)
            assert p.completed_symbols >= previous, "completed_symbols went backwards"
            assert p.errors_count >= previous_errors, "errors_count went backwards"
            previous, previous_errors = p.completed_symbols, p.errors_count
        assert snapshots[-1] == final, "the last callback did not see the final state"
        assert sum(1 for p in snapshots if p.finished) == 1, "exactly one final snapshot"
        assert len(snapshots) == len(result) + 1 or result.cancelled


class Recorder:
    """A progress callback that keeps every snapshot it sees (called from one thread at a time)."""

    def __init__(self, cancel_at: int | None = None, token: CancellationToken | None = None) -> None:
        self.snapshots: list[ProcessingProgress] = []
        self.cancel_at = cancel_at
        self.token = token

    def __call__(self, p: ProcessingProgress) -> None:
        self.snapshots.append(p)
        if self.cancel_at is not None and self.token is not None and p.completed_symbols >= self.cancel_at:
            self.token.cancel("cancelled by the property test")


# -- strategies -----------------------------------------------------------------------------------
symbol_lists = st.integers(min_value=0, max_value=120).map(lambda n: [f"S{i}" for i in range(n)])
workers = st.integers(min_value=1, max_value=8)
chunk_sizes = st.one_of(st.none(), st.integers(min_value=1, max_value=7))


def make_processor(failing: frozenset[int], work: int, fatal: frozenset[int] = frozenset()):
    """A processor that does ``work`` units of tiny CPU work and fails on the chosen positions."""

    def processor(symbol: str) -> int:
        index = int(symbol[1:])
        acc = 0
        for k in range(work):
            acc += k * k
        if index in fatal:
            raise KeyboardInterrupt(f"interrupt on {symbol}")
        if index in failing:
            raise Boom(f"failed on {symbol}")
        return index + acc * 0

    return processor


# -- the properties -------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(symbols=symbol_lists, n_workers=workers, chunk=chunk_sizes, data=st.data(),
       work=st.integers(min_value=0, max_value=300))
def test_accounting_without_cancel(symbols, n_workers, chunk, data, work):
    failing = frozenset(data.draw(st.sets(st.integers(0, max(0, len(symbols) - 1)))) if symbols else set())
    recorder = Recorder()
    engine = ProcessingEngine(make_processor(failing, work), max_workers=n_workers, chunk_size=chunk)
    result = engine.process_batch(symbols, progress_callback=recorder)
    assert_accounted(symbols, result, recorder.snapshots)
    assert not result.cancelled and result.cancel_reason is None
    assert {r.symbol for r in result.errors} == {symbols[i] for i in failing if i < len(symbols)}
    assert all(isinstance(r.error, Boom) for r in result.errors)
    assert sorted(r.value for r in result.successes) == sorted(
        i for i in range(len(symbols)) if i not in failing
    )


@PROPERTY_SETTINGS
@given(symbols=symbol_lists, n_workers=workers, chunk=chunk_sizes, data=st.data(),
       work=st.integers(min_value=0, max_value=300))
def test_accounting_with_cancel_from_the_callback(symbols, n_workers, chunk, data, work):
    failing = frozenset(data.draw(st.sets(st.integers(0, max(0, len(symbols) - 1)))) if symbols else set())
    cancel_at = data.draw(st.integers(min_value=0, max_value=len(symbols) + 1))
    token = CancellationToken()
    recorder = Recorder(cancel_at=cancel_at, token=token)
    engine = ProcessingEngine(make_processor(failing, work), max_workers=n_workers, chunk_size=chunk)
    if cancel_at == 0:
        token.cancel("before the start")
    result = engine.process_batch(symbols, progress_callback=recorder, cancellation_token=token)
    assert_accounted(symbols, result, recorder.snapshots)
    if cancel_at == 0:
        assert result.cancelled and len(result) == 0 and list(result.unprocessed) == symbols
    if cancel_at > len(symbols):  # the cancel moment never came
        assert not result.cancelled and len(result) == len(symbols)


@PROPERTY_SETTINGS
@given(symbols=symbol_lists.filter(bool), n_workers=workers, chunk=chunk_sizes, data=st.data(),
       cooperative=st.booleans())
def test_accounting_with_cancel_from_a_processor(symbols, n_workers, chunk, data, cooperative):
    """A processor cancels the batch while other symbols are in flight; a cooperative one also stops
    itself (CANCELLED results). Symbols in flight at the cancel may end either way, never twice."""
    trigger = data.draw(st.integers(0, len(symbols) - 1))
    failing = frozenset(data.draw(st.sets(st.integers(0, len(symbols) - 1), max_size=len(symbols))))
    token = CancellationToken()

    if cooperative:
        def processor(symbol: str, cancellation_token: CancellationToken) -> int:
            index = int(symbol[1:])
            if index == trigger:
                token.cancel("a processor stopped the batch")
            cancellation_token.throw_if_cancelled()
            if index in failing:
                raise Boom(symbol)
            return index
    else:
        def processor(symbol: str) -> int:  # type: ignore[misc]
            index = int(symbol[1:])
            if index == trigger:
                token.cancel("a processor stopped the batch")
            if index in failing:
                raise Boom(symbol)
            return index

    recorder = Recorder()
    engine = ProcessingEngine(processor, max_workers=n_workers, chunk_size=chunk)
    result = engine.process_batch(symbols, progress_callback=recorder, cancellation_token=token)
    assert_accounted(symbols, result, recorder.snapshots)
    assert result.cancelled and result.cancel_reason == "a processor stopped the batch"
    if cooperative:
        assert symbols[trigger] in {r.symbol for r in result.cancelled_results} | set(result.unprocessed)
        for r in result.cancelled_results:
            assert isinstance(r.error, ProcessingCancelledException)


@PROPERTY_SETTINGS
@given(symbols=symbol_lists.filter(bool), n_workers=workers, chunk=chunk_sizes, data=st.data())
def test_accounting_with_cancel_from_another_thread_while_tasks_block(symbols, n_workers, chunk, data):
    """Tasks wait on events (never a sleep): some finish, some are still blocked when another thread
    cancels. The batch returns without waiting for the blocked ones; they are unprocessed."""
    n_done = data.draw(st.integers(0, len(symbols)))
    finish_first = set(data.draw(st.permutations(range(len(symbols))))[:n_done])
    failing = frozenset(data.draw(st.sets(st.integers(0, len(symbols) - 1))))
    release = threading.Event()
    token = CancellationToken()
    started = threading.Semaphore(0)

    def processor(symbol: str) -> int:
        index = int(symbol[1:])
        if index not in finish_first:
            started.release()
            release.wait(30)
        if index in failing:
            raise Boom(symbol)
        return index

    recorder = Recorder()
    engine = ProcessingEngine(processor, max_workers=n_workers, chunk_size=chunk)
    handle = engine.start(symbols, progress_callback=recorder, cancellation_token=token)
    if len(finish_first) < len(symbols):
        assert started.acquire(timeout=30)  # at least one task is blocked now
    token.cancel("stopped by another thread")
    try:
        result = handle.result(timeout=30)
    finally:
        release.set()
    assert_accounted(symbols, result, recorder.snapshots)
    assert result.cancelled or len(result) == len(symbols)
    assert handle.progress == result.progress


@PROPERTY_SETTINGS
@given(n=st.integers(0, 60), distinct=st.integers(1, 5), n_workers=workers, chunk=chunk_sizes,
       cancel_at=st.integers(0, 70))
def test_duplicate_symbols_are_accounted_as_a_multiset(n, distinct, n_workers, chunk, cancel_at):
    symbols = [f"S{i % distinct}" for i in range(n)]
    token = CancellationToken()
    recorder = Recorder(cancel_at=cancel_at or None, token=token)
    result = ProcessingEngine(lambda s: s, max_workers=n_workers, chunk_size=chunk).process_batch(
        symbols, progress_callback=recorder, cancellation_token=token
    )
    assert_accounted(symbols, result, recorder.snapshots)


@PROPERTY_SETTINGS
@given(symbols=symbol_lists, n_workers=workers, data=st.data())
def test_error_budget_keeps_the_accounting(symbols, n_workers, data):
    failing = frozenset(data.draw(st.sets(st.integers(0, max(0, len(symbols) - 1)))) if symbols else set())
    max_errors = data.draw(st.integers(0, 10))
    recorder = Recorder()
    engine = ProcessingEngine(make_processor(failing, 0), max_workers=n_workers, max_errors=max_errors)
    result = engine.process_batch(symbols, progress_callback=recorder)
    assert_accounted(symbols, result, recorder.snapshots)
    n_failing = len([i for i in failing if i < len(symbols)])
    if n_failing <= max_errors:
        assert not result.cancelled
    if result.cancelled:
        assert len(result.errors) > max_errors
        assert "error budget" in (result.cancel_reason or "")


@PROPERTY_SETTINGS
@given(symbols=symbol_lists.filter(bool), n_workers=workers, data=st.data())
def test_fatal_exceptions_in_processors_are_per_symbol_errors(symbols, n_workers, data):
    """KeyboardInterrupt raised by a processor ends that symbol as ERROR; the batch goes on."""
    fatal = frozenset(data.draw(st.sets(st.integers(0, len(symbols) - 1), min_size=1)))
    recorder = Recorder()
    result = ProcessingEngine(make_processor(frozenset(), 0, fatal), max_workers=n_workers).process_batch(
        symbols, progress_callback=recorder
    )
    assert_accounted(symbols, result, recorder.snapshots)
    assert not result.cancelled
    assert {r.symbol for r in result.errors} == {symbols[i] for i in fatal}
    assert all(isinstance(r.error, KeyboardInterrupt) for r in result.errors)


class _Drawing:
    """A lazy input: an iterator over ``symbols`` that remembers how many it handed out."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self._it = iter(symbols)
        self.drawn: list[str] = []

    def __iter__(self) -> _Drawing:
        return self

    def __next__(self) -> str:
        symbol = next(self._it)
        self.drawn.append(symbol)
        return symbol


@PROPERTY_SETTINGS
@given(symbols=symbol_lists, n_workers=workers, chunk=chunk_sizes, data=st.data(),
       hint=st.sampled_from(["none", "exact", "low", "high"]))
def test_accounting_of_lazy_inputs_with_cancels_and_resume(symbols, n_workers, chunk, data, hint):
    """A generator input, cancelled at a random completion (or never): everything drawn is accounted
    for exactly once, and ``resume`` then processes exactly the rest of the input."""
    failing = frozenset(data.draw(st.sets(st.integers(0, max(0, len(symbols) - 1)))) if symbols else set())
    cancel_at = data.draw(st.integers(min_value=1, max_value=len(symbols) + 1))
    total = {"none": None, "exact": len(symbols), "low": len(symbols) // 2, "high": len(symbols) * 2 + 1}[hint]
    before = set(threading.enumerate())
    token = CancellationToken()
    recorder = Recorder(cancel_at=cancel_at, token=token)
    source = _Drawing(symbols)
    engine = ProcessingEngine(make_processor(failing, 0), max_workers=n_workers, chunk_size=chunk)
    result = engine.process_batch(source, progress_callback=recorder, cancellation_token=token, total=total)
    assert_accounted(source.drawn, result, recorder.snapshots, lazy=True)
    assert source.drawn == symbols[:len(source.drawn)]  # drawn in order, never past what was needed
    if result.input_exhausted:
        assert source.drawn == symbols
    expected_rest = [*result.unprocessed, *symbols[len(source.drawn):]]
    rest = engine.resume(result)
    assert_accounted(expected_rest, rest, lazy=True)
    assert Counter(r.symbol for r in [*result, *rest]) == Counter(symbols)
    assert not wait_for_threads(before), "a thread outlived its batch"


@PROPERTY_SETTINGS
@given(symbols=symbol_lists, n_workers=workers, chunk=chunk_sizes, data=st.data(),
       retries=st.integers(0, 3), lazy=st.booleans())
def test_accounting_with_retries_and_cancels(symbols, n_workers, chunk, data, retries, lazy):
    """Symbols fail a random number of times; with ``retries`` each is retried until it succeeds or has
    used its attempts. Cancelled at a random completion (or never): every symbol is accounted for exactly
    once (a symbol waiting to retry at the cancel is its last ERROR), and ``attempts`` is right."""
    fails = {s: data.draw(st.integers(0, 4)) for s in symbols}
    cancel_at = data.draw(st.integers(min_value=1, max_value=len(symbols) + 1))
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def processor(symbol: str) -> str:
        with lock:
            calls[symbol] += 1
            call = calls[symbol]
        if call <= fails[symbol]:
            raise Boom(f"{symbol} call {call}")
        return symbol

    before = set(threading.enumerate())
    token = CancellationToken()
    recorder = Recorder(cancel_at=cancel_at, token=token)
    source = _Drawing(symbols) if lazy else symbols
    engine = ProcessingEngine(processor, max_workers=n_workers, chunk_size=chunk, retries=retries)
    result = engine.process_batch(source, progress_callback=recorder, cancellation_token=token)
    drawn = source.drawn if lazy else symbols
    assert_accounted(drawn, result, recorder.snapshots, lazy=lazy, retries=retries)
    for r in result:
        assert r.attempts == calls[r.symbol] or result.cancelled  # a stopped retry may still be running
        if r.ok:
            assert r.attempts == fails[r.symbol] + 1
        elif not result.cancelled:
            assert r.attempts == retries + 1 and fails[r.symbol] > retries
    if not result.cancelled:
        assert sorted(r.symbol for r in result.errors) == sorted(s for s in symbols if fails[s] > retries)
    assert result.progress.errors_count == len(result.errors)
    assert not wait_for_threads(before), "a thread outlived its batch"


def test_assert_accounted_rejects_a_lost_symbol():
    """The checker itself can fail: a result with one symbol missing is refused."""
    engine = ProcessingEngine(str, max_workers=2)
    result = engine.process_batch(["A", "B", "C"])
    broken = BatchResult(result[:-1], unprocessed=[], progress=result.progress)
    with pytest.raises(AssertionError):
        assert_accounted(["A", "B", "C"], broken)
