"""The wire format of a chunk's results between a worker process (loky, Dask) and the engine.

A result that fails to pickle in the worker or to unpickle here costs only its own symbol: results
travel as one byte string holding one independent pickle per symbol plus the end offset of each (the
standard pickler first: a cloudpickle pickler per result cost ~40 µs, more than a tiny task;
``pickle.dumps`` of a small result ~1 µs), after a *head*: the values and durations of the chunk's
leading plain SUCCESS results as two columns in one pickle (see :func:`encode_results`). The parent
rebuilds each :class:`SymbolResult` with the caller's own symbol object (:func:`decode_results`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import cloudpickle

from procengine_nb._safe import describe as _describe
from procengine_nb._safe import safe_repr
from procengine_nb.models import ResultStatus, SymbolResult

__all__ = ["PLAIN", "Columns", "Payload", "RemoteSerializationError", "RemoteTraceback", "decode_results",
           "encode_results", "plain", "symbol_error"]

Columns = tuple[Sequence[Any], Sequence[float]]  # (values, durations_ms) of plain SUCCESS results
Payload = tuple[bytes, bytes, "list[int]"]  # what a worker sends back: see encode_results

_PROTOCOL = 5


class RemoteSerializationError(RuntimeError):
    """A task or a result could not cross the process boundary (pickling or unpickling failed).

    Standing in for a processor's exception that could not be sent back, it carries that exception's
    classes as names (``original_types``: ``module.qualname`` along its MRO), so that ``retry_on=``
    still matches it by its original class."""

    def __init__(self, message: str = "", *, original_types: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.original_types = original_types


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker process (set as its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""



def _safe_repr(obj: object) -> str:
    return safe_repr(obj, 200)


def symbol_error(symbol: Any, message: str) -> SymbolResult:
    """The ERROR result of a symbol whose task or result could not cross the process boundary."""
    return SymbolResult(symbol, ResultStatus.ERROR, None, RemoteSerializationError(message), 0.0)


_STATUS_CODES = {ResultStatus.SUCCESS: 0, ResultStatus.ERROR: 1, ResultStatus.CANCELLED: 2}
_STATUSES = (ResultStatus.SUCCESS, ResultStatus.ERROR, ResultStatus.CANCELLED)


def _result_fields(result: SymbolResult) -> tuple[Any, ...]:
    error = result.error
    trace = result.traceback  # the runner formatted it (and dropped the frames)
    return (_STATUS_CODES[result.status], result.value, error, result.duration_ms, trace)


def _replacement(result: SymbolResult, exc: BaseException, trace: str | None) -> tuple[Any, ...]:
    what = "value" if result.status is ResultStatus.SUCCESS else "exception"
    detail = f"; the processor raised {_describe(result.error)}" if result.error is not None else ""
    error = RemoteSerializationError(
        f"the {what} for symbol {_safe_repr(result.symbol)} cannot be sent back from the worker "
        f"({_describe(exc)}){detail}",
        original_types=_type_names(result.error),
    )
    return (1, None, error, result.duration_ms, trace)


def _type_names(error: BaseException | None) -> tuple[str, ...]:
    """``module.qualname`` of each class along ``type(error)``'s MRO (() for None, or when they cannot
    be read)."""
    if error is None:
        return ()
    try:
        return tuple(f"{kind.__module__}.{kind.__qualname__}" for kind in type(error).__mro__
                     if isinstance(kind.__module__, str) and isinstance(kind.__qualname__, str))
    except Exception:
        return ()


PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def plain(value: Any) -> bool:
    """True for values that unpickle anywhere, for sure: builtin scalars, or a short tuple/list of them."""
    kind = type(value)
    if kind in PLAIN:
        return True
    if (kind is tuple or kind is list) and len(value) <= 16:
        return all(type(item) in PLAIN for item in value)
    return False



def encode_results(results: Sequence[SymbolResult], head: Columns = ((), ())) -> Payload:
    """``(head, rest, offsets)``: what :func:`decode_results` turns back into the chunk's results.

    ``head`` holds the values and durations of the chunk's leading SUCCESS results whose values are
    plain (builtin scalars, or short tuples/lists of them: they unpickle anywhere), as two columns in
    one pickle (~0.1 µs a symbol; no result object is made for them in the worker). ``results`` are the
    ones after (from the first that failed or returned anything else: see
    :func:`~procengine_nb.backends._worker.run_columns`): each is pickled on its own with the standard
    pickler, else with cloudpickle (a value of a class defined in a notebook travels by value), else
    replaced by its symbol's ERROR, and ``offsets`` says where each ends.
    """
    values, durations = head
    head_blob = pickle.dumps((values, durations), _PROTOCOL) if values else b""
    parts: list[bytes] = []
    offsets: list[int] = []
    end = 0
    dumps = pickle.dumps
    for result in results:
        fields = _result_fields(result)
        try:
            part = dumps(fields, _PROTOCOL)
        except BaseException:
            try:
                part = cloudpickle.dumps(fields, protocol=_PROTOCOL)
            except BaseException as exc:  # only this symbol's result is lost
                part = cloudpickle.dumps(_replacement(result, exc, fields[4]), protocol=_PROTOCOL)
        parts.append(part)
        end += len(part)
        offsets.append(end)
    return head_blob, b"".join(parts), offsets


def decode_results(symbols: Sequence[Any], payload: Payload,
                   local: Mapping[int, SymbolResult]) -> list[SymbolResult]:
    """Rebuild the chunk's results: ``local`` ones (made here) at their index, the others from
    ``payload`` (see :func:`encode_results`) in order; a prefix of the chunk when the worker stopped
    early (a cancel). (A fourth element, a processor's cancel request, is the batch's: see
    ``_remote_task.forward_cancel_request``.)"""
    head_blob, blob, offsets = payload[:3]
    sent = symbols if not local else [s for i, s in enumerate(symbols) if i not in local]
    remote: list[SymbolResult] = []
    done = 0
    if head_blob:
        values, durations = pickle.loads(head_blob)
        done = len(values)
        remote = list(map(SymbolResult, sent[:done], repeat(ResultStatus.SUCCESS), values, repeat(None), durations))
    if blob:
        remote.extend(_decode_rest(sent[done:], blob, offsets))
    if not local:
        return remote
    results: list[SymbolResult] = []
    ours = iter(remote)
    for index in range(len(symbols)):
        found = local.get(index)
        if found is None:
            found = next(ours, None)
            if found is None:  # the worker stopped early
                break
        results.append(found)
    return results


def _decode_rest(symbols: Sequence[Any], blob: bytes, offsets: Sequence[int]) -> list[SymbolResult]:
    view = memoryview(blob)
    loads = pickle.loads
    results: list[SymbolResult] = []
    append = results.append
    start = 0
    for symbol, end in zip(symbols, offsets, strict=False):
        try:
            status, value, error, duration_ms, trace = loads(view[start:end])
        except BaseException as exc:  # only this symbol's result is lost
            append(symbol_error(symbol, f"the result for symbol {_safe_repr(symbol)} cannot be unpickled "
                                        f"here ({_describe(exc)})"))
            start = end
            continue
        start = end
        if trace is not None and isinstance(error, BaseException) and error.__cause__ is None:
            error.__cause__ = RemoteTraceback(trace)
        append(SymbolResult(symbol, _STATUSES[status], value, error, duration_ms, traceback=trace))
    return results
