"""The small interface every backend implements, and the chunk it is given.

A *backend* is configuration (how many workers, which pool); for each batch it opens a
:class:`BatchExecutor`, which is given :class:`Chunk` records (``submit_chunk``), runs each by the
runner's rules (:mod:`procengine_nb.backends.runner`) and gives back a future of that chunk's results,
cancels the chunks not started, and closes at the end of the batch. Backends say honestly what they can
do (``shares_memory``, ``times_symbols``) so the engine never assumes a capability a backend lacks.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

__all__ = ["Backend", "BatchExecutor", "Chunk"]


class Chunk:
    """What a backend is given to run: some symbols, the batch's processor settings, and the hooks
    through which it reports, as it runs, that the chunk started and which symbol starts.

    The hooks are the engine's (called on any thread of this process; they must stay trivial). A
    backend whose workers share this process's memory (threads, a thread-pool ``executor=``, asyncio)
    has the runner call them on the worker; Dask calls them here as its workers' reports arrive (over
    the scheduler, :attr:`BatchExecutor.reports_running`); processes (and a process-pool ``executor=``)
    cannot send them there and report
    a chunk's start through :meth:`BatchExecutor.started`, and the running symbol and its start through
    :meth:`BatchExecutor.running_since`, instead.
    """

    __slots__ = ("symbols", "processor", "pass_token", "on_start", "on_symbol", "results")

    def __init__(self, symbols: Sequence[Any], processor: Callable[..., Any], pass_token: bool,
                 on_start: Callable[[], Any] | None = None,
                 on_symbol: Callable[[int], Any] | None = None,
                 results: list[Any] | None = None) -> None:
        self.symbols = symbols
        """The symbols, run one after another in this order."""
        self.processor = processor
        """The batch's processor."""
        self.pass_token = pass_token
        """True when the processor takes ``cancellation_token=`` (it gets the worker's token)."""
        self.on_start = on_start
        """``on_start()`` as the chunk begins on its worker (None: nobody asks)."""
        self.on_symbol = on_symbol
        """``on_symbol(i)`` just before symbol ``i`` runs, ``on_symbol(len(symbols))`` once none runs
        any more (None: nobody asks)."""
        self.results = results
        """Where workers share memory: the list the runner appends each symbol's result to as it runs
        (None: a list of its own), so once the chunk started its length is the index of the symbol
        running, at no cost per symbol."""

    def __repr__(self) -> str:
        return f"<Chunk of {len(self.symbols)} symbol(s)>"


class BatchExecutor(abc.ABC):
    """One batch's view of a backend: run chunks, drop pending ones, close at the end."""

    #: the token given to processors that accept one (None where the workers cannot see it)
    worker_token: CancellationToken | None = None
    #: True when the workers report which symbol each started chunk runs (:meth:`running_index`) and
    #: the executor calls the chunks' ``on_start``/``on_symbol`` from those reports (Dask): the batch then
    #: shows only those as running, never work still queued on the backend
    reports_running: bool = False

    @abc.abstractmethod
    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        """Schedule ``chunk`` to run by the runner's rules (:mod:`procengine_nb.backends.runner`) and
        return a future (``add_done_callback``/``result``/``cancel``) of its results: one
        :class:`SymbolResult` per symbol that ran, in order — a prefix of ``chunk.symbols``, shorter when
        a cancel stopped it between two symbols. A future that fails, or whose results are missing
        symbols without a cancel, means the backend lost the chunk (the engine makes those symbols
        ERRORs). May raise (an executor that was shut down): the batch then stops."""

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel the given chunks' futures that have not started (best effort; running ones keep running)."""
        for future in futures:
            future.cancel()

    def stop_running(self, futures: Iterable[Future[Any]]) -> None:  # noqa: B027 - optional hook
        """After the batch's token is cancelled, before the batch collects what finished: stop the
        given chunks that already run, where the backend can, and return once their outcomes are out
        (briefly: a cancel must stay prompt). Default: nothing (running chunks keep running)."""

    def take_back(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """At a pause: withdraw the given tasks that have not started on a worker, so that only running
        ones go on; return those withdrawn (the batch hands their symbols out again when it continues and
        ignores their futures from now on). Only where withdrawing is certain never to lose or repeat a
        started task. Default: none (what was handed over runs)."""
        return []

    def abandon(self, futures: Iterable[Future[Any]]) -> None:  # noqa: B027 - optional hook
        """Chunks the batch gave up on (past their ``timeout=``) that may still be running: a backend may
        give their workers' places to the chunks queued behind them. Default: nothing."""

    def started(self, future: Future[Any]) -> bool:
        """True once the chunk of ``future`` began running on a worker (``timeout=`` counts from then):
        how a backend whose workers cannot call ``Chunk.on_start`` reports the start; asked only by
        batches with a timeout, on backends whose workers do not share memory. Default: what the
        future says (``running()`` or ``done()``)."""
        return future.running() or future.done()

    def running_since(self, future: Future[Any]) -> tuple[int, float] | None:
        """``(index within its chunk of the symbol the task runs now, seconds it has run)``, where the
        backend reads it from its workers on demand (processes: the chunk's started file), for
        ``stalled()`` (from any thread). Default: None (not known this way)."""
        return None

    def running_index(self, future: Future[Any]) -> int | None:
        """Asked only when :attr:`reports_running` (from any thread): the index, within its chunk, of the
        symbol the task runs now; None when it has not started yet or no symbol of it runs any more."""
        return None

    @abc.abstractmethod
    def close(self, *, cancelled: bool) -> None:
        """End of the batch: release what this batch opened. Must not wait for running chunks when
        ``cancelled`` is True."""


#: the chunk target where chunks cross to another process (processes, a process-pool ``executor=``): each
#: hand-off costs the parent ~0.35 ms of CPU, so a chunk holds ~50 ms of work
CROSS_PROCESS_TASK_SECONDS = 0.05


class Backend(abc.ABC):
    """Where a batch's tasks run. Subclasses: threads (default), an ``executor=`` you pass, processes
    (loky), asyncio (coroutines), dask."""

    #: short name used in errors and views
    name: str = "backend"
    #: True when workers share this process's memory (the cancellation token reaches processors)
    shares_memory: bool = False
    #: True when the backend awaits coroutines itself (an ``async def`` processor may run on it)
    runs_coroutines: bool = False
    #: True when the backend enforces the per-symbol ``timeout`` itself, from each symbol's own start
    #: (the engine then gives it the timeout instead of timing tasks from their submission)
    times_symbols: bool = False
    #: False when the backend cannot tell when a symbol starts (an ``executor=`` whose workers do not
    #: share memory and may be on other hosts): the engine then refuses ``timeout=`` at construction
    supports_timeout: bool = True
    #: seconds of work the engine groups into one task when symbols are tiny (adaptive chunking);
    #: larger where handing a task over costs more (processes, a Dask cluster)
    target_task_seconds: float = 0.002


    @property
    @abc.abstractmethod
    def max_workers(self) -> int:
        """How many tasks run at once."""

    @abc.abstractmethod
    def open(self, token: CancellationToken) -> BatchExecutor:
        """Get ready for one batch whose cancellation token is ``token``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release long-lived resources (a cluster the backend started, a reusable pool)."""
