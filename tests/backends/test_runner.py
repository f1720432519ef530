"""The one runner of a symbol's rules (backends/runner.py), sync and async, and its hooks."""

from __future__ import annotations

import asyncio

import pytest

from procengine_nb import CancellationToken, ProcessingCancelledException, ResultStatus
from procengine_nb.backends.runner import call_symbol, run_chunk, run_chunk_async


def _rules(symbol, cancellation_token=None):
    if symbol == "value":
        raise ValueError("bad")
    if symbol == "interrupt":
        raise KeyboardInterrupt
    if symbol == "cancel":
        raise ProcessingCancelledException("stop")
    if symbol == "token":
        return cancellation_token
    return symbol.upper()


def test_call_symbol_gives_the_value_or_the_failed_result_and_never_raises():
    value, ms, failed = call_symbol(_rules, "a", None, False)
    assert (value, failed) == ("A", None) and ms >= 0.0
    for symbol, status, kind in [("value", ResultStatus.ERROR, ValueError),
                                 ("interrupt", ResultStatus.ERROR, KeyboardInterrupt),
                                 ("cancel", ResultStatus.CANCELLED, ProcessingCancelledException)]:
        value, _, failed = call_symbol(_rules, symbol, None, False)
        assert value is None and failed.symbol == symbol and failed.status is status
        assert isinstance(failed.error, kind) and failed.error.__traceback__ is None
        assert (failed.traceback is not None) == (status is ResultStatus.ERROR)
    token = CancellationToken()
    assert call_symbol(_rules, "token", token, True)[0] is token
    assert call_symbol(_rules, "token", token, False)[0] is None  # not passed when not asked for


def test_run_chunk_reports_its_start_and_each_symbol_and_stops_between_two_on_a_cancel():
    token = CancellationToken()
    events = []

    def processor(symbol):
        if symbol == 2:
            token.cancel()
        return symbol

    results = run_chunk(processor, [0, 1, 2, 3, 4], token, False,
                        on_start=lambda: events.append("start"), on_symbol=events.append)
    assert [r.value for r in results] == [0, 1, 2]
    assert events == ["start", 0, 1, 2, 5]  # 5: no symbol of the chunk runs any more


def test_run_chunk_async_follows_the_same_rules_and_reports_the_same_way():
    events = []

    async def processor(symbol, cancellation_token=None):
        await asyncio.sleep(0)
        return _rules(symbol, cancellation_token)

    symbols = ["a", "value", "interrupt", "cancel", "b"]
    results = asyncio.run(run_chunk_async(processor, symbols, None, False,
                                          on_start=lambda: events.append("start"), on_symbol=events.append))
    assert [r.status.name for r in results] == ["SUCCESS", "ERROR", "ERROR", "CANCELLED", "SUCCESS"]
    assert [r.value for r in results if r.ok] == ["A", "B"]
    assert events == ["start", 0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("own_cancel", [False, True])
def test_run_chunk_async_timeout_and_a_processors_own_cancelled_error_are_errors(own_cancel):
    async def processor(symbol):
        if own_cancel:
            raise asyncio.CancelledError  # its own (an awaited future it cancelled): not a Stop
        await asyncio.sleep(10)

    (result,) = asyncio.run(run_chunk_async(processor, ["x"], None, False, timeout=0.01))
    assert result.status is ResultStatus.ERROR
    if own_cancel:
        assert isinstance(result.error, asyncio.CancelledError)
    else:
        assert isinstance(result.error, TimeoutError) and "within 0.01s of starting" in str(result.error)


def test_run_chunk_async_turns_its_tasks_cancellation_into_cancelled_and_stops():
    async def main():
        started = asyncio.Event()

        async def processor(symbol):
            started.set()
            await asyncio.sleep(10)

        task = asyncio.ensure_future(run_chunk_async(processor, ["x", "y"], None, False))
        await started.wait()
        task.cancel()
        return await task

    (result,) = asyncio.run(main())
    assert result.symbol == "x" and result.status is ResultStatus.CANCELLED
    assert isinstance(result.error, ProcessingCancelledException)
