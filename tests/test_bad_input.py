"""Bad input table: every public entry point, given a wrong type or value, raises a TypeError or a
ValueError whose message names the parameter — at once (nothing hangs), and without half-applying
anything (no thread started, no token touched, no view or callback kept)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from procengine_nb import (
    BatchResult,
    CancellationToken,
    JobType,
    ProcessingEngine,
    ProcessingJob,
    ProcessingProgress,
    ProgressTracker,
    ResultStatus,
    SymbolResult,
    UnprocessedView,
)

pytestmark = pytest.mark.timeout(20)

NAN = math.nan
INF = math.inf


def _engine(**kwargs: Any) -> ProcessingEngine:
    return ProcessingEngine(str, max_workers=2, **kwargs)


def _done_handle():
    handle = _engine().start(["a"])
    handle.result(timeout=10)
    return handle


_release = threading.Event()


def _running_handle():
    """A job blocked on an event until the module ends (released in the fixture below)."""
    return ProcessingEngine(lambda s: _release.wait(30), max_workers=1).start(["a"])


@pytest.fixture(autouse=True, scope="module")
def _release_blocked_jobs():
    yield
    _release.set()


# (entry point, call, exception type, text the message must contain: the parameter's name)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # ProcessingEngine(...)
    ("engine processor None", lambda: ProcessingEngine(None), TypeError, "processor"),
    ("engine processor str", lambda: ProcessingEngine("len"), TypeError, "processor"),
    ("engine max_workers float", lambda: ProcessingEngine(str, max_workers=2.0), TypeError, "max_workers"),
    ("engine max_workers str", lambda: ProcessingEngine(str, max_workers="4"), TypeError, "max_workers"),
    ("engine max_workers bool", lambda: ProcessingEngine(str, max_workers=True), TypeError, "max_workers"),
    ("engine max_workers 0", lambda: ProcessingEngine(str, max_workers=0), ValueError, "max_workers"),
    ("engine max_workers -1", lambda: ProcessingEngine(str, max_workers=-1), ValueError, "max_workers"),
    ("engine max_errors -1", lambda: ProcessingEngine(str, max_errors=-1), ValueError, "max_errors"),
    ("engine max_errors float", lambda: ProcessingEngine(str, max_errors=1.5), TypeError, "max_errors"),
    ("engine timeout 0", lambda: ProcessingEngine(str, timeout=0), ValueError, "timeout"),
    ("engine timeout -1", lambda: ProcessingEngine(str, timeout=-1), ValueError, "timeout"),
    ("engine timeout nan", lambda: ProcessingEngine(str, timeout=NAN), ValueError, "timeout"),
    ("engine timeout inf", lambda: ProcessingEngine(str, timeout=INF), ValueError, "timeout"),
    ("engine timeout str", lambda: ProcessingEngine(str, timeout="1"), TypeError, "timeout"),
    ("engine chunk_size 0", lambda: ProcessingEngine(str, chunk_size=0), ValueError, "chunk_size"),
    ("engine chunk_size float", lambda: ProcessingEngine(str, chunk_size=2.5), TypeError, "chunk_size"),
    ("engine eta_smoothing 0", lambda: ProcessingEngine(str, eta_smoothing=0), ValueError, "eta_smoothing"),
    ("engine eta_smoothing 2", lambda: ProcessingEngine(str, eta_smoothing=2), ValueError, "eta_smoothing"),
    ("engine eta_smoothing str", lambda: ProcessingEngine(str, eta_smoothing="x"), TypeError, "eta_smoothing"),
    ("engine executor str", lambda: ProcessingEngine(str, executor="pool"), TypeError, "executor"),
    ("engine backend int", lambda: ProcessingEngine(str, backend=3), TypeError, "backend"),
    ("engine backend unknown", lambda: ProcessingEngine(str, backend="gpu"), ValueError, "backend"),
    ("engine clock", lambda: ProcessingEngine(str, clock=0.0), TypeError, "clock"),
    ("engine unknown option", lambda: ProcessingEngine(str, colour="red"), TypeError, "colour"),
    ("engine retries -1", lambda: ProcessingEngine(str, retries=-1), ValueError, "retries"),
    ("engine retries float", lambda: ProcessingEngine(str, retries=2.0), TypeError, "retries"),
    ("engine retry_on int", lambda: ProcessingEngine(str, retry_on=int), TypeError, "retry_on"),
    ("engine retry_on instance", lambda: ProcessingEngine(str, retry_on=ValueError()), TypeError, "retry_on"),
    ("engine retry_on empty", lambda: ProcessingEngine(str, retry_on=()), ValueError, "retry_on"),
    ("engine backoff -1", lambda: ProcessingEngine(str, backoff=-1), ValueError, "backoff"),
    ("engine backoff nan", lambda: ProcessingEngine(str, backoff=NAN), ValueError, "backoff"),
    ("engine backoff inf", lambda: ProcessingEngine(str, backoff=INF), ValueError, "backoff"),
    # process_batch / start
    ("process_batch None", lambda: _engine().process_batch(None), TypeError, "job_or_symbols"),
    ("process_batch int", lambda: _engine().process_batch(5), TypeError, "job_or_symbols"),
    ("process_batch str", lambda: _engine().process_batch("AAPL"), TypeError, "job_or_symbols"),
    ("process_batch dict", lambda: _engine().process_batch({"a": 1}), TypeError, "job_or_symbols"),
    ("process_batch callback", lambda: _engine().process_batch(["a"], progress_callback=3), TypeError,
     "progress_callback"),
    ("process_batch token", lambda: _engine().process_batch(["a"], cancellation_token=threading.Event()),
     TypeError, "cancellation_token"),
    ("process_batch memoryview", lambda: _engine().process_batch(memoryview(b"ab")), TypeError, "job_or_symbols"),
    ("process_batch total -1", lambda: _engine().process_batch(iter([]), total=-1), ValueError, "total"),
    ("process_batch total str", lambda: _engine().process_batch(iter([]), total="3"), TypeError, "total"),
    ("process_batch total != len", lambda: _engine().process_batch(["a"], total=2), ValueError, "total"),
    ("start None", lambda: _engine().start(None), TypeError, "job_or_symbols"),
    ("start total float", lambda: _engine().start(iter([]), total=1.0), TypeError, "total"),
    ("start str", lambda: _engine().start("AAPL"), TypeError, "job_or_symbols"),
    ("start callback", lambda: _engine().start(["a"], progress_callback="print"), TypeError, "progress_callback"),
    ("start token", lambda: _engine().start(["a"], cancellation_token=True), TypeError, "cancellation_token"),
    # retry / resume
    ("retry list", lambda: _engine().retry([]), TypeError, "previous"),
    ("resume None", lambda: _engine().resume(None), TypeError, "previous"),
    ("retry include_cancelled str", lambda: _engine().retry(BatchResult(), include_cancelled="no"), TypeError,
     "include_cancelled"),
    # ProcessingJob
    ("job symbols None", lambda: ProcessingJob(None), TypeError, "symbols"),
    ("job symbols str", lambda: ProcessingJob("AAPL"), TypeError, "symbols"),
    ("job job_type str", lambda: ProcessingJob(["a"], job_type="fetch"), TypeError, "job_type"),
    ("job job_id int", lambda: ProcessingJob(["a"], job_id=5), TypeError, "job_id"),
    ("job job_id empty", lambda: ProcessingJob(["a"], job_id=""), ValueError, "job_id"),
    ("job name int", lambda: ProcessingJob(["a"], name=5), TypeError, "name"),
    # CancellationToken
    ("token cancel reason", lambda: CancellationToken().cancel(5), TypeError, "reason"),
    ("token wait str", lambda: CancellationToken().wait("1"), TypeError, "timeout"),
    ("token wait -1", lambda: CancellationToken().wait(-1), ValueError, "timeout"),
    ("token wait nan", lambda: CancellationToken().wait(NAN), ValueError, "timeout"),
    ("token wait inf", lambda: CancellationToken().wait(INF), ValueError, "timeout"),
    ("token cancel_after str", lambda: CancellationToken().cancel_after("1"), TypeError, "seconds"),
    ("token cancel_after -1", lambda: CancellationToken().cancel_after(-1), ValueError, "seconds"),
    ("token cancel_after inf", lambda: CancellationToken().cancel_after(INF), ValueError, "seconds"),
    ("token cancel_after bool", lambda: CancellationToken().cancel_after(True), TypeError, "seconds"),
    ("token register None", lambda: CancellationToken().register(None), TypeError, "callback"),
    ("token linked str", lambda: CancellationToken.linked(CancellationToken(), "t"), TypeError, "parents[1]"),
    # ProcessingProgress / ProgressTracker
    ("progress total str", lambda: ProcessingProgress(total_symbols="3"), TypeError, "total_symbols"),
    ("progress total -1", lambda: ProcessingProgress(total_symbols=-1), ValueError, "total_symbols"),
    ("progress completed > total", lambda: ProcessingProgress(total_symbols=1, completed_symbols=2), ValueError,
     "completed_symbols"),
    ("progress errors > completed", lambda: ProcessingProgress(total_symbols=3, completed_symbols=1,
                                                               errors_count=2), ValueError, "errors_count"),
    ("progress eta -1", lambda: ProcessingProgress(total_symbols=3, estimated_remaining_ms=-1), ValueError,
     "estimated_remaining_ms"),
    ("progress elapsed str", lambda: ProcessingProgress(total_symbols=3, elapsed_time_ms="1.5"), TypeError,
     "elapsed_time_ms"),
    ("tracker total str", lambda: ProgressTracker("3"), TypeError, "total"),
    ("tracker total -1", lambda: ProgressTracker(-1), ValueError, "total"),
    ("tracker smoothing 0", lambda: ProgressTracker(3, smoothing=0), ValueError, "smoothing"),
    ("tracker clock", lambda: ProgressTracker(3, clock=1.0), TypeError, "clock"),
    ("tracker record too many", lambda: ProgressTracker(0).record("a"), ValueError, "completions"),
    ("tracker record count 0", lambda: ProgressTracker(3).record("a", count=0), ValueError, "count"),
    ("tracker record count -1", lambda: ProgressTracker(3).record("a", count=-1), ValueError, "count"),
    # results
    ("batch result items", lambda: BatchResult([1, 2]), TypeError, "results[0]"),
    ("batch result unprocessed None", lambda: BatchResult([], unprocessed=None), TypeError, "unprocessed"),
    ("unprocessed view tail", lambda: UnprocessedView([1, 2], tail_start=5), ValueError, "tail_start"),
    ("unprocessed view head", lambda: UnprocessedView([1, 2], [5]), ValueError, "head"),
    # JobHandle
    ("handle result timeout str", lambda: _done_handle().result(timeout="1"), TypeError, "timeout"),
    ("handle result timeout -1", lambda: _running_handle().result(timeout=-1), ValueError, "timeout"),
    ("handle wait timeout str", lambda: _running_handle().wait(timeout="1"), TypeError, "timeout"),
    ("handle wait timeout nan", lambda: _done_handle().wait(timeout=NAN), ValueError, "timeout"),
    ("handle cancel reason", lambda: _done_handle().cancel(5), TypeError, "reason"),
    ("handle attach None", lambda: _done_handle().attach(None), TypeError, "view"),
    ("handle attach object", lambda: _running_handle().attach(object()), TypeError, "view"),
    ("handle add_done_callback", lambda: _done_handle().add_done_callback(None), TypeError, "fn"),
    ("handle running_symbols str", lambda: _done_handle().running_symbols("3"), TypeError, "limit"),
    ("handle running_symbols -1", lambda: _done_handle().running_symbols(-1), ValueError, "limit"),
]


@pytest.mark.parametrize(("call", "error", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_the_parameter_named(call, error, needle):
    with pytest.raises(error) as info:
        call()
    assert needle in str(info.value), f"{info.value!r} does not name {needle!r}"


# -- nothing half-applied -------------------------------------------------------------------------
def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


@pytest.mark.parametrize(
    "kwargs",
    [{"progress_callback": 3}, {"cancellation_token": "stop"}, {"total": "2"}],
    ids=["callback", "token", "total"],
)
def test_a_refused_start_starts_no_thread_and_calls_nothing(kwargs):
    calls = []
    before = _threads()
    with pytest.raises(TypeError):
        ProcessingEngine(calls.append, max_workers=2).start(["a", "b"], **kwargs)
    assert _threads() == before and calls == []
    drawn = []
    source = (drawn.append(s) or s for s in "ab")  # a lazy input is not drawn by a refused call
    with pytest.raises(TypeError):
        ProcessingEngine(calls.append, max_workers=2).start(source, **kwargs)
    assert _threads() == before and calls == [] and drawn == []


def test_a_refused_batch_leaves_the_callers_token_alone():
    token = CancellationToken()
    with pytest.raises(TypeError):
        _engine().process_batch(["a"], progress_callback=1, cancellation_token=token)
    assert not token.is_cancelled and token._callbacks == []


def test_a_refused_deadline_changes_nothing():
    token = CancellationToken()
    before = _threads()
    for bad in (-1, INF, NAN, "1"):
        with pytest.raises((TypeError, ValueError)):
            token.cancel_after(bad)
    assert token._timer is None and not token.is_cancelled and _threads() == before


def test_a_refused_link_registers_nothing_on_the_good_parents():
    good = CancellationToken()
    with pytest.raises(TypeError):
        CancellationToken.linked(good, None)
    assert good._callbacks == []


def test_a_refused_cancel_reason_does_not_cancel():
    token = CancellationToken()
    seen = []
    token.register(lambda: seen.append(1))
    with pytest.raises(TypeError):
        token.cancel(reason=42)
    assert not token.is_cancelled and seen == []
    assert token.cancel("now") and seen == [1]


def test_a_refused_view_is_not_kept():
    release = threading.Event()
    handle = ProcessingEngine(lambda s: release.wait(30), max_workers=1).start(["a"])
    try:
        views_before = list(handle._batch.publisher._views)
        with pytest.raises(TypeError):
            handle.attach(object())
        assert list(handle._batch.publisher._views) == views_before
    finally:
        release.set()
    handle.result(timeout=10)


def test_a_refused_tracker_record_changes_no_count():
    tracker = ProgressTracker(3)
    tracker.record("a")
    with pytest.raises(ValueError):
        tracker.record("b", count=5)
    with pytest.raises(ValueError):
        tracker.record("b", count=0)
    assert tracker.completed == 1 and tracker.snapshot.completed_symbols == 1


def test_an_engine_that_refused_its_arguments_was_never_half_built():
    before = _threads()
    with pytest.raises(ValueError):
        ProcessingEngine(str, max_workers=2, timeout=-1)
    assert _threads() == before


def test_odd_but_valid_inputs_are_accepted():
    """Not everything unusual is wrong: generators, sets, tuples, None symbols, an empty batch."""
    engine = _engine()
    assert len(engine.process_batch(x for x in "abc")) == 3
    assert len(engine.process_batch({1, 2})) == 2
    assert len(engine.process_batch((None, None))) == 2
    assert len(engine.process_batch([])) == 0
    job = ProcessingJob(range(3), JobType.FETCH, job_id="x1", name="n")
    assert engine.process_batch(job).job is job
    assert BatchResult([SymbolResult("a", ResultStatus.SUCCESS)], unprocessed=("b",)).counts()["unprocessed"] == 1
