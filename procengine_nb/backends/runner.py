"""The one runner of a symbol's rules, in a sync and an async form; every backend runs chunks with it.

The rules, written once here:

- the processor is called with the symbol, plus ``cancellation_token=`` when it takes one (``pass_token``);
- a value that is an awaitable is awaited (the sync form on the batch's event loop, found by the worker
  token: see :mod:`procengine_nb.backends._loop`; where there is none, the symbol is an ERROR saying so;
  the async form awaits it itself), so a coroutine object is never a value;
- every exception the call raises, ``KeyboardInterrupt`` and ``SystemExit`` included, is that symbol's
  result (:func:`failed_result`): :class:`ProcessingCancelledException` is CANCELLED, anything else ERROR
  with its formatted traceback; the exception keeps no frames, so a failed call's locals are freed;
- a chunk runs its symbols one after another and stops between two symbols once the token is cancelled
  (the symbols after it are the engine's unprocessed ones); it reports ``on_start()`` as it begins and
  ``on_symbol(i)`` just before symbol ``i`` runs, then ``on_symbol(len(symbols))`` once none runs any more.

:func:`call_symbol` / :func:`run_chunk` are the sync form (threads, ``executor=``, worker processes:
see ``_worker.run_columns``, a cheaper collection of :func:`call_symbol`'s outcomes);
:func:`run_symbol_async` / :func:`run_chunk_async` the async form (the asyncio backend), which adds what
only a loop has: a ``timeout=`` around each coroutine from its own start, and the task's own
cancellation (a Stop) turning the symbol CANCELLED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from procengine_nb._tracebacks import detach, release
from procengine_nb.backends._loop import _NOT_AWAITABLE, Escaped, awaiter_for, cannot_await, is_awaitable, resolve
from procengine_nb.cancellation import CancellationToken, ProcessingCancelledException
from procengine_nb.models import ResultStatus, SymbolResult

__all__ = ["call_symbol", "failed_result", "run_chunk", "run_chunk_async", "run_symbol_async"]

_SUCCESS = ResultStatus.SUCCESS
_clock = time.perf_counter


def failed_result(symbol: Any, exc: BaseException, duration_ms: float) -> SymbolResult:
    """The result of a call that raised ``exc``: CANCELLED for :class:`ProcessingCancelledException`,
    else ERROR with the formatted traceback; the exception keeps no frames (nor their locals)."""
    if isinstance(exc, ProcessingCancelledException):
        release(exc)
        return SymbolResult(symbol, ResultStatus.CANCELLED, None, exc, duration_ms)
    return SymbolResult(symbol, ResultStatus.ERROR, None, exc, duration_ms, traceback=detach(exc))


def call_symbol(processor: Callable[..., Any], symbol: Any, token: CancellationToken | None,
                pass_token: bool) -> tuple[Any, float, SymbolResult | None]:
    """Run one symbol by the rules (see the module docstring); never raises. Returns ``(value,
    duration_ms, None)`` when the call returned ``value``, ``(None, duration_ms, failed)`` when it
    raised (``failed``: its CANCELLED or ERROR result). Callers make the SUCCESS result themselves, or
    keep only the value and the duration (``_worker.run_columns``: a result object costs ~0.3 µs)."""
    start = _clock()
    try:
        value = processor(symbol, cancellation_token=token) if pass_token else processor(symbol)
        while type(value) not in _NOT_AWAITABLE and is_awaitable(value):  # (it may resolve to another)
            awaiter = awaiter_for(token)
            if awaiter is None:
                raise cannot_await(value)
            value = awaiter.wait(value)
    except BaseException as exc:
        duration_ms = (_clock() - start) * 1000.0
        return None, duration_ms, failed_result(symbol, exc, duration_ms)
    return value, (_clock() - start) * 1000.0, None


def run_chunk(
    processor: Callable[..., Any],
    symbols: Sequence[Any],
    token: CancellationToken | None,
    pass_token: bool,
    on_start: Callable[[], Any] | None = None,
    on_symbol: Callable[[int], Any] | None = None,
    results: list[SymbolResult] | None = None,
) -> list[SymbolResult]:
    """Run ``symbols`` one after another (:func:`call_symbol`) and return their results, in order.

    Stops early (returning only the results of the symbols it ran) when ``token`` is cancelled between
    two symbols. ``on_start()`` is called first, ``on_symbol(i)`` just before symbol ``i`` and
    ``on_symbol(len(symbols))`` at the end (what they raise is the caller's: keep them trivial).
    ``results``: the list to append to (and return), so that another thread can tell by its length which
    symbol runs.
    """
    if on_start is not None:
        on_start()
    if results is None:
        results = []
    append = results.append
    call = call_symbol
    success = _SUCCESS
    for index, symbol in enumerate(symbols):
        if token is not None and token.is_cancelled:
            break
        if on_symbol is not None:
            on_symbol(index)
        value, duration_ms, failed = call(processor, symbol, token, pass_token)
        append(SymbolResult(symbol, success, value, None, duration_ms) if failed is None else failed)
    if on_symbol is not None:
        on_symbol(len(symbols))
    return results


async def run_symbol_async(processor: Callable[..., Any], symbol: Any, token: CancellationToken | None,
                           pass_token: bool, timeout: float | None = None) -> SymbolResult:
    """:func:`call_symbol` on an event loop, returning the symbol's result: the awaitable the call
    returns is awaited here, within ``timeout`` seconds of the symbol's own start (past it: ERROR, a
    ``TimeoutError``, even when the coroutine swallows the cancel: see :func:`_within`). The running
    task's own cancellation (a Stop) makes the symbol CANCELLED; a ``CancelledError`` the processor raises
    of its own (an awaited future it cancelled) is an ERROR like any exception."""
    start = _clock()
    try:
        value = processor(symbol, cancellation_token=token) if pass_token else processor(symbol)
        if is_awaitable(value):
            if timeout is None:
                while is_awaitable(value):
                    value = await value
            else:
                value = await _within(value, timeout - (_clock() - start))
    except BaseException as exc:
        error: BaseException = exc
        if isinstance(exc, _TimedOut):
            error = TimeoutError(f"did not finish within {timeout:g}s of starting")
        elif isinstance(exc, Escaped):
            error = exc.exception
        elif isinstance(exc, asyncio.CancelledError) and _being_cancelled():
            release(exc)
            reason = token.reason if token is not None else None
            error = ProcessingCancelledException(
                "processing was cancelled" + (f": {reason}" if reason else ""), reason=reason,
            )
        return failed_result(symbol, error, (_clock() - start) * 1000.0)
    return SymbolResult(symbol, _SUCCESS, value, None, (_clock() - start) * 1000.0)


class _TimedOut(Exception):
    """The symbol's own ``timeout=`` ran out (told apart from a ``TimeoutError`` the processor raises)."""


async def _within(awaitable: Any, seconds: float) -> Any:
    """Await ``awaitable`` as a task of its own for at most ``seconds``; past them it is cancelled and
    :class:`_TimedOut` raised at once: the symbol ends at its timeout, and a coroutine that swallows the
    cancel is never waited for (it is left on the loop, which cancels it again at the end of the batch
    and then abandons it: ``LoopThread``), like the thread a sync symbol past its timeout keeps. A cancel
    of the awaiting task (a Stop) cancels it and waits for it to unwind, as a coroutine awaited directly
    would."""
    inner = asyncio.get_running_loop().create_task(resolve(awaitable))
    try:
        done, _ = await asyncio.wait((inner,), timeout=max(0.0, seconds))
    except asyncio.CancelledError:
        inner.cancel()
        await asyncio.wait((inner,))  # a second cancel of this task ends the wait (it propagates)
        _retrieve(inner)
        raise
    if done:
        return inner.result()
    inner.cancel()
    inner.add_done_callback(_retrieve)  # whatever it ends with later is no "never retrieved" report
    raise _TimedOut


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def run_chunk_async(
    processor: Callable[..., Any],
    symbols: Sequence[Any],
    token: CancellationToken | None,
    pass_token: bool,
    timeout: float | None = None,
    on_start: Callable[[], Any] | None = None,
    on_symbol: Callable[[int], Any] | None = None,
    results: list[SymbolResult] | None = None,
) -> list[SymbolResult]:
    """:func:`run_chunk` on an event loop (:func:`run_symbol_async` per symbol). It also stops after a
    symbol that ended CANCELLED because its task is being cancelled (a Stop). ``results``: a list to
    append to (so a caller keeps what ran when the task is cancelled between two symbols)."""
    if results is None:
        results = []
    if on_start is not None:
        on_start()
    for index, symbol in enumerate(symbols):
        if token is not None and token.is_cancelled:
            break
        if on_symbol is not None:
            on_symbol(index)
        result = await run_symbol_async(processor, symbol, token, pass_token, timeout)
        results.append(result)
        if result.status is ResultStatus.CANCELLED and _being_cancelled():
            break
    if on_symbol is not None:
        on_symbol(len(symbols))
    return results


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
