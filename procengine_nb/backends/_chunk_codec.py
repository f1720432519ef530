"""A chunk's task for another process (loky, Dask): the parent pickles it, a worker unpickles it.

The parent pickles the processor (once per batch: :class:`ProcessorBlob`) and the chunk's symbols
itself with cloudpickle (functions defined in a notebook cell travel by value): a symbol that cannot
be pickled becomes that symbol's ERROR result at once, the processor failing to pickle makes every
symbol of the chunk an ERROR (:func:`encode_chunk`). The worker unpickles them (:func:`load_task`,
the processor cached per process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from procengine_nb._safe import describe as _describe
from procengine_nb._safe import safe_repr
from procengine_nb.backends._remote_task import RemoteTask
from procengine_nb.backends._wire import RemoteSerializationError, symbol_error

__all__ = ["ProcessorBlob", "encode_chunk", "load_task"]


class ProcessorBlob:
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
                self.error = (f"the processor {safe_repr(processor, 200)} cannot be sent to a worker process "
                              f"({_describe(exc)})")
        return self.blob, self.error


def encode_chunk(
    cache: ProcessorBlob,
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
        task._finish([symbol_error(s, processor_error or "") for s in symbols])
        return None, task
    try:
        symbols_blob = cloudpickle.dumps(symbols)
    except BaseException:  # find the symbols that cannot travel; send the others
        sendable = []
        for index, symbol in enumerate(symbols):
            try:
                cloudpickle.dumps(symbol)
            except BaseException as exc:
                task.local[index] = symbol_error(
                    symbol, f"symbol {safe_repr(symbol, 200)} cannot be sent to a worker process ({_describe(exc)})"
                )
            else:
                sendable.append(symbol)
        if not sendable:
            task._finish([task.local[i] for i in range(len(symbols))])
            return None, task
        symbols_blob = cloudpickle.dumps(tuple(sendable))
    return (processor_blob, symbols_blob, pass_token, marker), task



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

