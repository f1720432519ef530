"""The edges of the promise (issue 11): hostile user objects, results that must not hold memory, huge
timeouts. Each test here fails on the code before this round (61754e0) and names one class of failure."""

from __future__ import annotations

import builtins
import gc
import tracemalloc
import weakref

import pytest

from procengine_nb import ProcessingEngine, ResultStatus, SymbolResult


# -- resources: an ERROR result keeps the message and the formatted traceback, never the frames --------
class Payload:
    """A big local of a failing call (weakref-able, so a test can see it freed)."""

    def __init__(self, size: int = 0) -> None:
        self.data = bytearray(size)


def _failing(sink: list[weakref.ref], size: int = 0):
    def processor(symbol):
        local = Payload(size)  # kept alive only by the frame
        sink.append(weakref.ref(local))
        try:
            raise KeyError(symbol)
        except KeyError as inner:  # a chained exception: its traceback holds frames too
            raise ValueError(f"no data for {symbol}") from inner

    return processor


def test_error_results_keep_the_traceback_text_but_not_the_frames_or_their_locals():
    refs: list[weakref.ref] = []
    result = ProcessingEngine(_failing(refs), max_workers=2).process_batch(["A", "B", "C"])
    gc.collect()
    assert len(refs) == 3 and all(ref() is None for ref in refs), "a failed call's locals are still alive"
    for r in result.errors:
        assert isinstance(r.error, ValueError) and str(r.error) == f"no data for {r.symbol}"
        assert r.error.__traceback__ is None and r.error.__cause__.__traceback__ is None
        assert isinstance(r.error.__cause__, KeyError)
        assert "in processor" in r.traceback and "raise ValueError" in r.traceback
        assert "The above exception was the direct cause" in r.traceback
        assert r.traceback.rstrip().endswith(f"ValueError: no data for {r.symbol}")


def test_twenty_failures_with_big_locals_keep_no_memory():
    """20 failures with 2 MB locals each: +40 MB if the tracebacks stayed alive; here ~nothing."""
    refs: list[weakref.ref] = []
    gc.collect()
    tracemalloc.start()
    try:
        result = ProcessingEngine(_failing(refs, 2_000_000), max_workers=2).process_batch(range(20))
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.errors) == 20
    assert held < 2_000_000, f"{held / 1e6:.1f} MB still held by 20 ERROR results"


@pytest.mark.skipif(not hasattr(builtins, "ExceptionGroup"), reason="exception groups need Python >= 3.11")
def test_context_chains_exception_groups_and_loops_are_all_released():
    from procengine_nb._tracebacks import detach

    group_type = builtins.ExceptionGroup

    def inner():
        raise OSError("disk")

    try:
        try:
            inner()
        except OSError as first:
            group = group_type("several", [first, RuntimeError("other")])
            raise group  # noqa: B904 - the implicit __context__ is what is tested
    except group_type as exc:
        exc.__context__.__context__ = exc  # a loop in the chain must not hang the walk
        text = detach(exc)
        error = exc
    assert "OSError: disk" in text and "ExceptionGroup: several" in text
    assert error.__traceback__ is None
    assert all(e.__traceback__ is None for e in error.exceptions)


def test_a_backend_failure_gets_a_traceback_text_and_no_frames():
    from concurrent.futures import ThreadPoolExecutor

    class Refusing(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            def broken():
                raise MemoryError("the pool lost the task")
            return super().submit(broken)

    with Refusing(max_workers=1) as pool:
        result = ProcessingEngine(str, executor=pool).process_batch(["A"])
    (failed,) = result.errors
    assert failed.error.__traceback__ is None and "MemoryError: the pool lost the task" in failed.traceback


def test_symbol_result_traceback_is_the_last_field_with_a_default():
    result = SymbolResult("A", ResultStatus.ERROR, None, ValueError("x"), 1.0)
    assert result.traceback is None
    assert SymbolResult.__dataclass_fields__["traceback"].default is None


def test_async_processors_errors_keep_no_frames_either():
    refs: list[weakref.ref] = []

    async def processor(symbol):
        local = Payload(10)
        refs.append(weakref.ref(local))
        raise ValueError(f"no data for {symbol}")

    result = ProcessingEngine(processor, max_workers=2).process_batch(["A", "B"])
    gc.collect()
    assert len(result.errors) == 2 and all(ref() is None for ref in refs)
    assert all(r.error.__traceback__ is None and "ValueError: no data" in r.traceback for r in result.errors)
