"""The caller's ``executor=`` whose workers do not share this process's memory (a process pool).

Such an executor gets each chunk the way ``backend="processes"`` sends it (one path): the processor and
the symbols pickled here by :func:`~procengine_nb.backends._chunk_codec.encode_chunk` (a symbol that cannot
be pickled is its own ERROR), the worker runs :func:`~procengine_nb.backends._worker.run_encoded` (each
result pickled on its own), and the results are rebuilt here with the caller's own symbol objects. The
Stop and the start reports travel as on processes: the batch's stop marker and each chunk's started
file, in a temporary directory on this machine, which workers of this machine see (a
``ProcessPoolExecutor``'s, a loky executor's) and workers of another host ignore.

Which executors take this path, and which may use ``timeout=``, is decided by
:func:`procengine_nb.backends.threads.classify`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from typing import Any

from procengine_nb.backends._chunk_codec import ProcessorBlob, encode_chunk
from procengine_nb.backends._marker import BatchMarker
from procengine_nb.backends._remote_task import Decoding, RemoteTask
from procengine_nb.backends._started_file import claim, forget
from procengine_nb.backends._worker import run_encoded
from procengine_nb.backends.base import BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

__all__ = ["EncodedExecutorBatch"]


class EncodedExecutorBatch(BatchExecutor):
    """One batch on a caller's executor whose workers do not share memory (see the module docstring).

    The executor is the caller's: never shut down here. A Stop (or a pause) withdraws the chunks not
    started: on workers of this machine by claiming them (their started file created here), so the
    worker that takes one runs no symbol; elsewhere by ``Future.cancel()`` (only before the executor hands
    it over). Running processors see their token cancelled through the stop marker.
    """

    def __init__(self, executor: Executor, token: CancellationToken, *, local: bool) -> None:
        self._executor = executor
        self._token = token
        self._local = local
        self._marker = BatchMarker()
        self._blob = ProcessorBlob()
        self._registration = token.register(self._marker.cancel)
        self._decoding = Decoding()
        self.worker_token = None  # the engine's token cannot be pickled; workers get a MarkerToken

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        payload, task = encode_chunk(self._blob, chunk.processor, chunk.symbols, chunk.pass_token,
                                     self._marker.marker)
        if payload is None:  # nothing could be sent: the task holds the ERROR results already
            return task
        task.key = self._marker.started_file() if self._local else None
        task.inner = self._executor.submit(run_encoded, *payload, task.key)
        task.inner.add_done_callback(lambda future, task=task: self._complete(task, future))
        return task

    def _complete(self, task: RemoteTask, future: Future[Any]) -> None:
        """Complete the engine's future from the executor's (on whatever thread the executor calls back)."""
        if future.cancelled():
            task.complete_cancelled()
            return
        error = future.exception()
        if error is not None:  # the executor lost the task (a broken pool): the engine fails its symbols
            task.complete_with_error(error)
            return
        if task.key is not None:
            forget(task.key)
        self._decoding.complete(self._token, task, future.result())

    def started(self, future: Future[Any]) -> bool:
        """A chunk started once its started file exists (asked only with ``timeout=``, which needs
        workers on this machine)."""
        key = getattr(future, "key", None)
        return future.done() or key is None or os.path.exists(key)

    def _withdraw(self, future: Future[Any]) -> bool:
        """True when the chunk of ``future`` will never run a symbol: still queued in the executor, or
        handed to a worker that has not started it (claimed here)."""
        inner = getattr(future, "inner", None)
        if inner is None:
            return future.cancel()
        if inner.done():  # it ran: its results are on their way
            return False
        key = getattr(future, "key", None)
        if key is not None:
            # Claimed, never cancelled: a pool that breaks or is shut down with cancelled work items
            # still queued raises InvalidStateError in its manager thread (CPython 3.11's
            # ProcessPoolExecutor, loky), which logs it; a claimed chunk's worker runs nothing.
            return claim(key)
        return inner.cancel()

    def running_since(self, future: Future[Any]) -> tuple[int, float] | None:
        """The symbol a started chunk runs and for how long (workers of this machine write it in the
        chunk's started file): :meth:`RemoteTask.running_since`."""
        return future.running_since() if isinstance(future, RemoteTask) else None

    def stop_running(self, futures: Iterable[Future[Any]]) -> None:
        """Keep the chunks whose results are being decoded (a processor's cancel request stops the
        batch just before its own chunk completes)."""
        self._decoding.wait()

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        if self._token.is_cancelled:
            self._marker.cancel()  # (before the claims: the token's own callback may lag)
        for future in futures:
            if not future.done() and self._withdraw(future) and isinstance(future, RemoteTask):
                future.complete_cancelled()

    def take_back(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """At a pause: the chunks that will never start (see :meth:`_withdraw`)."""
        return [future for future in futures if self._withdraw(future)]

    def close(self, *, cancelled: bool) -> None:
        self._registration.unregister()
        if cancelled:
            self._marker.cancel()
        self._marker.close()  # a chunk of this batch that starts late runs no symbol

