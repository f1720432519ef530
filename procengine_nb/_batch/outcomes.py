"""Final outcomes: the one way a symbol's final result is recorded, whichever path ends it.

A final outcome goes, in this order of concerns, into the batch's results list, to the store's writer
(``store=``; results that came from the store are not handed back), into the tracker's counts (one
snapshot each, published), and, for an ERROR, to the views' ``failed()``. Every path that ends a symbol
comes here: a finished task (:meth:`Outcomes.completed`), an ERROR decided by the batch itself (a timeout,
a key that raised, a retry that waited when the batch stopped: :meth:`Outcomes.failed`) and a result
taken from the store (:meth:`Outcomes.from_store`). Then the error budget is checked (:meth:`check_budget`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

from procengine_nb._tracebacks import detach
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, ResultStatus, SymbolResult
from procengine_nb.observe import Publisher
from procengine_nb.progress import ProgressTracker
from procengine_nb.store import StoreSession

__all__ = ["Outcomes", "task_results"]

_status_of = attrgetter("status")
_symbol_of = attrgetter("symbol")


class Outcomes:
    """Where the batch's final outcomes go (the batch's thread is the only caller).

    Invariants: every result in ``results`` was counted once by ``tracker`` (``completed`` or
    ``from_store``) and published once; every ERROR in it was passed to ``publisher.failed`` once; every
    result that ran (not from the store) was handed to ``store`` once, when there is one. ``sample`` is
    given each finished chunk's results (the stall threshold's durations).
    """

    __slots__ = ("results", "tracker", "publisher", "token", "store", "max_errors", "sample")

    def __init__(self, results: BatchResult, tracker: ProgressTracker, publisher: Publisher,
                 token: CancellationToken, store: StoreSession | None, max_errors: int | None,
                 sample: Callable[[list[SymbolResult]], None]) -> None:
        self.results = results
        self.tracker = tracker
        self.publisher = publisher
        self.token = token
        self.store = store
        self.max_errors = max_errors
        self.sample = sample

    def completed(self, chunk: list[SymbolResult]) -> None:
        """The final outcomes of a finished task (the hot path): into the results (and the store), one
        snapshot each to the callback from one clock reading for the chunk, failures to the views."""
        self.results.extend(chunk)
        self.sample(chunk)
        if self.store is not None:
            self.store.add(chunk)
        error_status = ResultStatus.ERROR
        failed = list(map(is_, map(_status_of, chunk), repeat(error_status)))
        publisher = self.publisher
        publisher.updates(self.tracker.record_group(list(map(_symbol_of, chunk)), failed, each=publisher.wants_each),
                          cancelled=self.token.cancelled_now)
        if True in failed:
            for r in chunk:
                if r.status is error_status:
                    publisher.failed(r)

    def failed(self, errors: Sequence[SymbolResult], *, stored: bool = True, published: bool = True) -> None:
        """ERROR outcomes the batch decided (a timeout, a key that raised, a retry still waiting at the
        end), counted one by one: into the results (and the store unless ``stored=False``: a symbol
        without a key), one snapshot each (published unless ``published=False``: at the end, the final
        snapshot carries them), each to the views' ``failed()``."""
        if stored and self.store is not None:
            self.store.add(errors)
        results, tracker, publisher = self.results, self.tracker, self.publisher
        for result in errors:
            results.append(result)
            snapshot = tracker.record(result.symbol, error=True)
            if published:
                publisher.update(snapshot)
            publisher.failed(result)

    def from_store(self, stored: list[SymbolResult]) -> None:
        """Results taken from the store (never run, never handed back to it): into the results, counted
        as completed and ``from_store`` (not toward the rate), one snapshot each."""
        self.results.extend(stored)
        self.publisher.updates(self.tracker.record_stored([r.symbol for r in stored]),
                               cancelled=self.token.cancelled_now)

    def check_budget(self) -> None:
        """Cancel the batch once its final errors exceed ``max_errors``."""
        max_errors = self.max_errors
        if max_errors is not None and self.tracker.errors > max_errors:
            self.token.cancel(f"error budget exceeded: {self.tracker.errors} errors > max_errors={max_errors}")


def task_results(future: Future[Any], symbols: Any) -> list[SymbolResult]:
    """What a finished task's future holds: its results (fewer than its symbols when it stopped early on
    a cancel; none when it was cancelled), or one ERROR per symbol when the backend failed the whole task
    (pickling, a lost worker, ...)."""
    try:
        return future.result()
    except CancelledError:
        return []
    except BaseException as exc:
        text = detach(exc)
        return [SymbolResult(symbol, ResultStatus.ERROR, None, exc, 0.0, traceback=text) for symbol in symbols]
