"""Sending chunks to other processes (loky, Dask) so that a serialization failure costs one symbol.

Both out-of-process backends use this protocol instead of letting the pool pickle the task and the
result as a whole, where one bad object fails (or, for loky, breaks) everything around it:

- the parent pickles the processor and the chunk's symbols itself with cloudpickle (functions defined
  in a notebook cell travel by value); a symbol that cannot be pickled becomes that symbol's ERROR
  result at once, the processor failing to pickle makes every symbol of the chunk an ERROR;
- the worker runs the runner's rules (:func:`run_columns`) and pickles each result on its own,
  so a value (or exception) that cannot be pickled turns only that symbol into an ERROR;
- the parent unpickles each result on its own, so a result that cannot be unpickled here is only
  that symbol's ERROR, and rebuilds each :class:`SymbolResult` with the caller's own symbol object;
- what the engine sees is a plain :class:`concurrent.futures.Future` (:class:`RemoteTask`) whose
  result is the chunk's ``list[SymbolResult]``, completed from the backend's own future.

The Stop and the "started" news travel per backend. Processes (loky, workers on this machine by
nature) use files: the token a processor gets (when it declares ``cancellation_token``) is a
worker-local :class:`MarkerToken` that turns cancelled when the batch's *cancel marker* — a file in the
batch's temporary directory on this machine — appears, or when that directory is removed (the batch is
over), so workers see Stop within a few milliseconds and a chunk stops between two symbols, even one
that only starts after the batch returned; a chunk's started file (:func:`run_encoded`) tells a started
chunk from a queued one. Dask does not use these files (its workers may be on other hosts): its channel
is the scheduler, see :mod:`~procengine_nb.backends._dask_channel`, which reuses only :func:`load_task`,
:func:`run_columns` and :func:`encode_results` from here.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import shutil
import socket
import struct
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from itertools import repeat
from typing import Any

import cloudpickle

from procengine_nb._safe import describe as _describe
from procengine_nb._safe import safe_repr
from procengine_nb._validation import check_seconds
from procengine_nb.backends.runner import call_symbol
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import ResultStatus, SymbolResult

__all__ = [
    "BatchMarker",
    "MarkerToken",
    "RemoteSerializationError",
    "RemoteTask",
    "RemoteTraceback",
    "decode_results",
    "encode_chunk",
    "encode_results",
    "read_progress",
    "run_columns",
    "run_encoded",
]

Columns = tuple[Sequence[Any], Sequence[float]]  # (values, durations_ms) of plain SUCCESS results
Payload = tuple[bytes, bytes, "list[int] | None"]  # what a worker sends back: see encode_results

_CHECK_EVERY = 0.005  # seconds between two looks at the cancel marker on a worker
_CHECK_EVERY_MS = _CHECK_EVERY * 1000.0
_HOSTNAME = socket.gethostname()


class RemoteSerializationError(RuntimeError):
    """A task or a result could not cross the process boundary (pickling or unpickling failed)."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker process (set as its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


# -- the cancel marker ----------------------------------------------------------------------------
def _remove_directory(directory: str) -> None:
    for _attempt in range(3):  # a worker may create a started file while it is being removed
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.isdir(directory):
            return


class BatchMarker:
    """One batch's temporary directory on this machine (parent side).

    ``marker`` = ``(host name, path of the "stopped" file)`` goes to the workers; ``cancel()`` creates
    that file; ``started_file()`` names a chunk's started file. ``close()`` at the end of the batch
    removes the directory (also when this object is garbage-collected or the interpreter exits), and
    workers of this machine then treat the batch as over: a chunk that starts late runs no symbol.
    """

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="procengine-batch-")
        self.marker = (_HOSTNAME, os.path.join(self.directory, "stopped"))
        self._finalizer = weakref.finalize(self, _remove_directory, self.directory)
        self._chunks = itertools.count()

    def cancel(self) -> None:
        try:
            with open(self.marker[1], "x"):
                pass
        except OSError:  # already there, or the batch is closed (the directory is gone)
            pass

    def started_file(self) -> str:
        # unique within the batch's own directory: a counter (uuid4 read os.urandom for every chunk)
        return os.path.join(self.directory, f"{next(self._chunks)}.started")

    def close(self) -> None:
        self._finalizer()


class MarkerToken(CancellationToken):
    """A worker-local token that cancels itself once the batch's "stopped" file exists, or once the
    batch's directory is gone (the batch is over) — on the engine's machine only.

    ``marker`` is ``(hostname, path)``. On another host the file cannot be seen, so the token is
    never cancelled there. It looks at the file at most every 5 ms (a ``stat``), only while someone
    asks ``is_cancelled``, ``throw_if_cancelled()`` or ``wait()``; ``register`` callbacks run on the
    thread that notices.
    """

    __slots__ = ("_marker", "_next_check")

    def __init__(self, marker: tuple[str, str] | None) -> None:
        super().__init__()
        self._marker = marker
        self._next_check = 0.0

    def _poll(self) -> bool:
        if self._event.is_set():
            return True
        marker = self._marker
        if marker is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + _CHECK_EVERY
                host, path = marker
                if host != _HOSTNAME:
                    self._marker = None  # another machine: the marker cannot reach us
                elif os.path.exists(path):
                    self.cancel("the batch was stopped")
                elif not os.path.isdir(os.path.dirname(path)):
                    self.cancel("the batch is over")
        return self._event.is_set()

    @property
    def is_cancelled(self) -> bool:
        """True once the batch was stopped (seen through the marker file) or ``cancel()`` was called."""
        return self._poll()

    def throw_if_cancelled(self) -> None:
        self._poll()
        super().throw_if_cancelled()

    def wait(self, timeout: float | None = None) -> bool:
        check_seconds(timeout, "timeout", allow_none=True)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._poll():
            remaining = _CHECK_EVERY if deadline is None else min(_CHECK_EVERY, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._event.wait(remaining)
        return True

    def __reduce__(self) -> tuple[Any, ...]:  # a processor may pass its token on to a subprocess
        return (MarkerToken, (self._marker,))


# -- parent side: encode a chunk ------------------------------------------------------------------
def _safe_repr(obj: object) -> str:
    return safe_repr(obj, 200)


def _symbol_error(symbol: Any, message: str) -> SymbolResult:
    return SymbolResult(symbol, ResultStatus.ERROR, None, RemoteSerializationError(message), 0.0)


class _ProcessorBlob:
    """Pickles the processor once per batch (it is the same object for every chunk)."""

    __slots__ = ("processor", "blob", "error")

    def __init__(self) -> None:
        self.processor: Any = None
        self.blob: bytes | None = None
        self.error: str | None = None

    def get(self, processor: Callable[..., Any]) -> tuple[bytes | None, str | None]:
        if self.processor is not processor or (self.blob is None and self.error is None):
            self.processor = processor
            try:
                self.blob, self.error = cloudpickle.dumps(processor), None
            except BaseException as exc:  # whatever pickling raises fails the chunk only
                self.blob = None
                self.error = (f"the processor {_safe_repr(processor)} cannot be sent to a worker process "
                              f"({_describe(exc)})")
        return self.blob, self.error


def encode_chunk(
    cache: _ProcessorBlob,
    processor: Callable[..., Any],
    symbols: Sequence[Any],
    pass_token: bool,
    marker: tuple[str, str] | None,
) -> tuple[tuple[Any, ...] | None, RemoteTask]:
    """Return ``(args for run_encoded or None, the RemoteTask to complete)`` for one chunk.

    When nothing can be sent (the processor or every symbol fails to pickle), the task is already
    complete with ERROR results and the args are None. Never raises for a user object (its pickling,
    ``repr`` or ``str`` may fail: that symbol is an ERROR).
    """
    symbols = tuple(symbols)
    task = RemoteTask(symbols)
    processor_blob, processor_error = cache.get(processor)
    if processor_blob is None:
        task._finish([_symbol_error(s, processor_error or "") for s in symbols])
        return None, task
    try:
        symbols_blob = cloudpickle.dumps(symbols)
    except BaseException:  # find the symbols that cannot travel; send the others
        sendable = []
        for index, symbol in enumerate(symbols):
            try:
                cloudpickle.dumps(symbol)
            except BaseException as exc:
                task.local[index] = _symbol_error(
                    symbol, f"symbol {_safe_repr(symbol)} cannot be sent to a worker process ({_describe(exc)})"
                )
            else:
                sendable.append(symbol)
        if not sendable:
            task._finish([task.local[i] for i in range(len(symbols))])
            return None, task
        symbols_blob = cloudpickle.dumps(tuple(sendable))
    return (processor_blob, symbols_blob, pass_token, marker), task


# -- worker side ----------------------------------------------------------------------------------
# Results travel as one byte string holding one independent pickle per symbol plus the end offset of
# each: a result that fails to pickle here or to unpickle in the parent costs only its own symbol, and
# the standard pickler is tried first (a cloudpickle pickler per result cost ~40 µs, more than a tiny
# task; pickle.dumps of a small result ~1 µs).
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
        f"({_describe(exc)}){detail}"
    )
    return (1, None, error, result.duration_ms, trace)


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _plain(value: Any) -> bool:
    """True for values that unpickle anywhere, for sure: builtin scalars, or a short tuple/list of them."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if (kind is tuple or kind is list) and len(value) <= 16:
        return all(type(item) in _PLAIN for item in value)
    return False


def encode_results(results: Sequence[SymbolResult], head: Columns = ((), ())) -> Payload:
    """``(head, rest, offsets)``: what :func:`decode_results` turns back into the chunk's results.

    ``head`` holds the values and durations of the chunk's leading SUCCESS results whose values are
    plain (builtin scalars, or short tuples/lists of them: they unpickle anywhere), as two columns in
    one pickle (~0.1 µs a symbol; no result object is made for them in the worker). ``results`` are the
    ones after: when all are plain SUCCESS values they are one pickle of rows and ``offsets`` is None;
    otherwise each is pickled on its own with the standard pickler, else with cloudpickle (a value of a
    class defined in a notebook travels by value), else replaced by its symbol's ERROR, and ``offsets``
    says where each ends.
    """
    values, durations = head
    head_blob = pickle.dumps((values, durations), _PROTOCOL) if values else b""
    if not results:
        return head_blob, b"", None
    success = ResultStatus.SUCCESS
    if all(r.status is success and _plain(r.value) for r in results):
        try:
            return head_blob, pickle.dumps([(0, r.value, None, r.duration_ms, None) for r in results], _PROTOCOL), None
        except BaseException:  # pragma: no cover - plain values always pickle; go one by one
            pass
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


def run_columns(processor: Callable[..., Any], symbols: Sequence[Any], token: CancellationToken,
                pass_token: bool, progress: Any = None) -> tuple[Columns, list[SymbolResult]]:
    """:func:`~procengine_nb.backends.runner.run_chunk` for a worker process: the same rules (each symbol
    is :func:`~procengine_nb.backends.runner.call_symbol`, the token is checked between two symbols), a
    cheaper collection: while the values are plain, keep only ``(values, durations_ms)``; from the first
    symbol that raises or returns anything else on, the :class:`SymbolResult` objects.

    The runner's ``on_symbol(i)`` report, as a plain store (a call would cost more than a tiny symbol's
    own bookkeeping): ``progress`` (a writable sequence, e.g. a memory-mapped file) gets ``i`` in its
    slot 0 just before symbol ``i`` runs, and ``len(symbols)`` once none runs any more, so the parent can
    tell, if this process dies, which symbol was running, which had run and which never started — or
    that the chunk had ended and only its result was lost.
    """
    values: list[Any] = []
    durations: list[float] = []
    rest: list[SymbolResult] = []
    add_value, add_duration, add_result = values.append, durations.append, rest.append
    plain = _PLAIN
    success = ResultStatus.SUCCESS
    call = call_symbol
    is_set = token._event.is_set  # the token's own flag: every time; its full check (a marker file's
    since_check = _CHECK_EVERY_MS  # stat) once ~5 ms of symbols ran since the last one
    columns = True
    for index, symbol in enumerate(symbols):
        if since_check >= _CHECK_EVERY_MS:
            if token.is_cancelled:
                break
            since_check = 0.0
        elif is_set():
            break
        if progress is not None:
            progress[0] = index
        value, duration_ms, failed = call(processor, symbol, token, pass_token)
        since_check += duration_ms
        if failed is None:
            if columns and (type(value) in plain or _plain(value)):
                add_value(value)
                add_duration(duration_ms)
                continue
            add_result(SymbolResult(symbol, success, value, None, duration_ms))
        else:
            add_result(failed)
        columns = False
    if progress is not None:
        progress[0] = len(symbols)  # no symbol of this chunk runs any more (its result is on its way)
    return (values, durations), rest


_PROTOCOL = 5
_worker_processor: tuple[bytes, Any] | None = None  # the last processor this worker unpickled


def _load_processor(blob: bytes) -> Any:
    global _worker_processor
    cached = _worker_processor
    if cached is not None and cached[0] == blob:  # the same batch's next chunk: no unpickling
        return cached[1]
    processor = cloudpickle.loads(blob)
    _worker_processor = (blob, processor)
    return processor


def load_task(processor_blob: bytes, symbols_blob: bytes) -> tuple[Any, Any]:
    """``(processor, symbols)`` unpickled on a worker (the processor cached per process); raises
    :class:`RemoteSerializationError` when they cannot be unpickled there."""
    try:
        return _load_processor(processor_blob), cloudpickle.loads(symbols_blob)
    except Exception as exc:
        raise RemoteSerializationError(f"the worker could not unpickle the task ({_describe(exc)})") from None


def run_encoded(
    processor_blob: bytes,
    symbols_blob: bytes,
    pass_token: bool,
    marker: tuple[str, str] | None,
    started_file: str | None = None,
) -> Payload:
    """The task a worker process (processes) runs: unpickle, :func:`run_columns`, :func:`encode_results`.

    With ``started_file`` (a path next to the marker, on the engine's machine), the chunk creates that
    file as it starts (memory-mapped, see :class:`_Progress`) and leaves it there (the parent removes it
    once it has the result, or with the batch's directory), so the engine can tell a chunk that started
    from one still queued in the pool — also after a pool broke and lost both. Whoever creates it first
    owns the chunk: when the parent did (it sent the chunk again elsewhere), this runs no symbol.
    """
    if started_file is not None and (marker is None or marker[0] != _HOSTNAME):
        started_file = None
    progress = None
    if started_file is not None:
        try:
            progress = _Progress(started_file)
        except FileExistsError:  # the parent claimed it (its pool broke, it was sent again): not ours
            return encode_results([])
        except OSError:  # the batch is over (no directory): the token stops the chunk anyway
            pass
    try:
        processor, symbols = load_task(processor_blob, symbols_blob)
        slots = None if progress is None else progress.view
        head, rest = run_columns(processor, symbols, MarkerToken(marker), pass_token, slots)
        return encode_results(rest, head)
    finally:
        if progress is not None:
            progress.close()


class _Progress:
    """A chunk's started file, memory-mapped: ``[0]`` is the index of the symbol running (-1: none yet;
    the chunk's length: it ended), ``[1]`` this worker's pid. Plain memory writes (~40 ns), read by the
    parent after a pool broke."""

    __slots__ = ("_map", "view")

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, PROGRESS_BYTES)
            self._map = mmap.mmap(fd, PROGRESS_BYTES)
        finally:
            os.close(fd)
        self.view = memoryview(self._map).cast("q")
        self.view[0] = -1
        self.view[1] = os.getpid()

    def close(self) -> None:
        self.view.release()
        self._map.close()


PROGRESS_BYTES = 16


def read_progress(path: str) -> tuple[int, int] | None:
    """``(index of the symbol that was running, pid)`` from a chunk's started file; None when it holds
    no progress (the parent claimed it, or it is gone)."""
    try:
        with open(path, "rb") as file:
            data = file.read(PROGRESS_BYTES)
    except OSError:
        return None
    if len(data) != PROGRESS_BYTES:
        return None
    index, pid = struct.unpack("qq", data)
    return index, pid


# -- parent side: the engine's future -------------------------------------------------------------
class RemoteTask(Future):  # type: ignore[type-arg]
    """The engine's future for one chunk sent to another process.

    Its result is the chunk's ``list[SymbolResult]`` (a prefix of the chunk, in order, rebuilt with the
    caller's symbol objects). It is completed from the backend's future by ``complete_*``; when the
    backend lost the whole task (a dead worker, a broken pool), it holds that exception, which the
    engine turns into one ERROR result per symbol.
    """

    def __init__(self, symbols: tuple[Any, ...]) -> None:
        super().__init__()
        self.symbols = symbols
        self.local: dict[int, SymbolResult] = {}  # results made here (symbols that could not be sent)
        self.inner: Any = None  # the backend's future
        self.key: Any = None  # Dask: the task's key; processes: the chunk's started-file path
        self.payload: tuple[Any, ...] = ()  # processes: what the worker is sent (kept to send it again)
        self.resends = 0  # processes: times it was sent again after a broken pool lost it unstarted
        self.deaths: dict[int, int] = {}  # processes: index -> breaks of a pool while it was running
        self.pool: Any = None  # processes: the pool it was last sent to

    def _finish(self, results: list[SymbolResult]) -> None:
        try:
            self.set_result(results)
        except InvalidStateError:  # already cancelled by the engine
            pass

    def complete_with_error(self, error: BaseException) -> None:
        try:
            self.set_exception(error)
        except InvalidStateError:
            pass

    def complete_cancelled(self) -> None:
        self.cancel()  # a RemoteTask is never 'running', so this always succeeds unless already done

    def complete_with_results(self, results: Mapping[int, SymbolResult]) -> None:
        """Complete with the results at their index, up to the first index without one (a prefix)."""
        ordered: list[SymbolResult] = []
        for index in range(len(self.symbols)):
            found = results.get(index)
            if found is None:
                break
            ordered.append(found)
        self._finish(ordered)

    def complete_with_blobs(self, payload: Payload) -> None:
        """Decode what ``run_encoded`` returned and complete with the chunk's results."""
        try:
            decoded = decode_results(self.symbols, payload, self.local)
        except BaseException as exc:  # a malformed payload fails the chunk, never the batch
            self.complete_with_error(exc)
        else:
            self._finish(decoded)


def decode_results(symbols: Sequence[Any], payload: Payload,
                   local: Mapping[int, SymbolResult]) -> list[SymbolResult]:
    """Rebuild the chunk's results: ``local`` ones (made here) at their index, the others from
    ``payload`` (see :func:`encode_results`) in order; a prefix of the chunk when the worker stopped
    early (a cancel)."""
    head_blob, blob, offsets = payload
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


def _decode_rest(symbols: Sequence[Any], blob: bytes, offsets: Sequence[int] | None) -> list[SymbolResult]:
    if offsets is None:  # plain values, one pickle of rows
        success = ResultStatus.SUCCESS
        return [SymbolResult(symbol, success, row[1], None, row[3])
                for symbol, row in zip(symbols, pickle.loads(blob), strict=False)]
    view = memoryview(blob)
    loads = pickle.loads
    results: list[SymbolResult] = []
    append = results.append
    start = 0
    for symbol, end in zip(symbols, offsets, strict=False):
        try:
            status, value, error, duration_ms, trace = loads(view[start:end])
        except BaseException as exc:  # only this symbol's result is lost
            append(_symbol_error(symbol, f"the result for symbol {_safe_repr(symbol)} cannot be unpickled "
                                         f"here ({_describe(exc)})"))
            start = end
            continue
        start = end
        if trace is not None and isinstance(error, BaseException) and error.__cause__ is None:
            error.__cause__ = RemoteTraceback(trace)
        append(SymbolResult(symbol, _STATUSES[status], value, error, duration_ms, traceback=trace))
    return results
