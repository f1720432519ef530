"""The engine's future for one chunk sent to another process (loky, Dask), completed from the backend's."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any

from procengine_nb.backends._wire import Payload, decode_results
from procengine_nb.models import SymbolResult

__all__ = ["RemoteTask"]


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

