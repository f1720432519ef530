"""The engine's future for one chunk sent to another process (loky, Dask), completed from the backend's."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any

from procengine_nb.backends._started_file import read_running
from procengine_nb.backends._wire import Payload, decode_results
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

__all__ = ["PROCESSOR_ASKED", "Decoding", "RemoteTask", "forward_cancel_request"]

PROCESSOR_ASKED = "a processor called cancellation_token.cancel()"
"""The batch's cancel reason when a worker process's processor cancelled its token without a reason."""


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
        self.withdrawn = False  # processes: taken back at a pause (claimed before it started): never runs

    def running_since(self) -> tuple[int, float] | None:
        """Processes and a process-pool ``executor=``: the index (in :attr:`symbols`) of the symbol the
        started chunk runs and for how long, from its started file (the worker writes the index and the
        start of each symbol there); None when not started, done, or no symbol runs."""
        key = self.key
        if not isinstance(key, str) or self.done():
            return None
        running = read_running(key)
        if running is None:
            return None
        index, at = running
        local = self.local
        if local:  # the worker counts only the symbols that were sent
            sent = [i for i in range(len(self.symbols)) if i not in local]
            if index >= len(sent):
                return None
            index = sent[index]
        elif index >= len(self.symbols):
            return None
        return index, max(0.0, (time.monotonic_ns() - at) / 1e9)

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



def forward_cancel_request(token: CancellationToken, payload: tuple[Any, ...]) -> None:
    """Parent side, before completing a chunk from ``payload`` (what ``run_encoded`` returned): when a
    processor of the batch cancelled its token (``payload[3]``: its reason; see
    :class:`~procengine_nb.backends._marker.MarkerToken`), cancel the batch's ``token`` with that reason
    (:data:`PROCESSOR_ASKED` without one), as a processor on threads does."""
    if len(payload) > 3 and not token.is_cancelled:
        reason = payload[3]
        token.cancel(reason if isinstance(reason, str) else PROCESSOR_ASKED)


_DECODING_WAIT = 0.1  # seconds a stopping batch waits at most for results being decoded (a Stop stays prompt)


class Decoding:
    """Counts the chunks whose results are being decoded on the executor's callback thread, so that a
    batch stopping (``BatchExecutor.stop_running``) keeps those it already has: a processor's cancel
    request cancels the batch just before its chunk's results complete (:func:`forward_cancel_request`)."""

    __slots__ = ("_condition", "_count")

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._count = 0

    def complete(self, token: CancellationToken, task: RemoteTask, payload: Payload) -> None:
        """Forward a cancel request in ``payload``, then complete ``task`` from it, counted meanwhile."""
        with self._condition:
            self._count += 1
        try:
            forward_cancel_request(token, payload)  # before the results: a short chunk is then a cancel
            task.complete_with_blobs(payload)
        finally:
            with self._condition:
                self._count -= 1
                self._condition.notify_all()

    def wait(self, timeout: float = _DECODING_WAIT) -> None:
        """Return once no chunk is being decoded (at most ``timeout`` seconds)."""
        with self._condition:
            self._condition.wait_for(lambda: self._count == 0, timeout)
