"""Store reruns (``store=``): what the store already holds for this batch is counted, not run again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from procengine_nb._safe import describe, logger, safe_str
from procengine_nb._tracebacks import detach
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import ResultStatus, SymbolResult
from procengine_nb.store import StoreSession

from .outcomes import Outcomes
from .source import LazySource, SizedSource

__all__ = ["Reruns"]

_log = logger("procengine_nb.engine")
_LOOKUP = 512  # a lazy input's symbols known to the store are looked up this many at a time


class Reruns:
    """The batch's link to its store for reuse: reads what the store holds before a symbol is handed out.

    Invariants: ``stored`` holds results found in the store and ``unkeyed`` the ERROR results of symbols
    whose key raised, both drawn from the input and not yet counted; :meth:`count` empties both through
    :class:`Outcomes` (the loop calls it after each draw and at the end), so each is counted once. A
    symbol in either is never handed out (a lazy input counts it in ``source.skipped``).
    """

    __slots__ = ("session", "stored", "unkeyed", "_outcomes", "_token", "_job_id")

    def __init__(self, session: StoreSession, outcomes: Outcomes, token: CancellationToken, job_id: Any) -> None:
        self.session = session
        self.stored: list[SymbolResult] = []
        self.unkeyed: list[SymbolResult] = []
        self._outcomes = outcomes
        self._token = token
        self._job_id = job_id

    @property
    def pending(self) -> bool:
        """True when results drawn from the store (or of unkeyed symbols) wait to be counted."""
        return bool(self.stored or self.unkeyed)

    def open(self, source: SizedSource | LazySource) -> None:
        """Before any symbol runs: read what the store holds for this batch (never waiting on a lock: a
        store that cannot be read runs without reuse, logged). A sized input: key every symbol (a key that
        raises is that symbol's ERROR, never run), count what the store holds as completed (``from_store``)
        and hand out only the rest, in input order. A lazy input: the same, symbol by symbol as it is drawn."""
        store = self.session
        try:
            store.open(cancelled=lambda: self._token.is_cancelled)
            if isinstance(source, LazySource):
                source.iterator = self._without_stored(source.iterator, source)
                return
            symbols = source.symbols
            keys: list[str | None] = []
            unkeyed: set[int] = set()
            for position, symbol in enumerate(symbols):
                try:
                    keys.append(store.key(symbol))
                except Exception as exc:  # key= and str() raise nothing else (they wrap it)
                    keys.append(None)
                    unkeyed.add(position)
                    self.unkeyed.append(_unkeyed_result(symbol, exc))
            found = store.done(symbols, keys) if store.has_known else {}  # type: ignore[arg-type]
        except KeyboardInterrupt:  # a Ctrl-C in key=: the batch's interrupt path (its end closes the store)
            self.unkeyed.clear()  # nothing ran: every symbol is unprocessed
            raise
        if found or unkeyed:
            self.stored = [found[i] for i in sorted(found)]
            source.symbols = tuple(symbol for i, symbol in enumerate(symbols) if i not in found and i not in unkeyed)
            self.count()

    def _without_stored(self, iterator: Iterator[Any], source: LazySource) -> Iterator[Any]:
        """A lazy input without the symbols the store holds: their results are kept for :meth:`count`
        (looked up a few hundred at a time); a stored value that no longer loads is yielded to run again;
        a symbol whose key raises is kept as its ERROR result, never run."""
        store = self.session
        held_symbols: list[Any] = []
        held_keys: list[str] = []
        for symbol in iterator:
            try:
                key = store.key(symbol)
            except KeyboardInterrupt:  # an interrupt: what was taken from the input stays unprocessed
                source.held.extend((*held_symbols, symbol))
                raise
            except Exception as exc:  # key= and str() raise nothing else (they wrap it)
                self.unkeyed.append(_unkeyed_result(symbol, exc))
                source.skipped += 1
                continue
            known = store.is_known(key)
            if known:
                held_symbols.append(symbol)
                held_keys.append(key)
                if len(held_symbols) < _LOOKUP:
                    continue
            if held_symbols:
                found = store.done(held_symbols, held_keys)
                self.stored.extend(found[i] for i in sorted(found))
                source.skipped += len(found)
                yield from (s for i, s in enumerate(held_symbols) if i not in found)
                held_symbols, held_keys = [], []
            if not known:
                yield symbol
        if held_symbols:
            found = store.done(held_symbols, held_keys)
            self.stored.extend(found[i] for i in sorted(found))
            source.skipped += len(found)
            yield from (s for i, s in enumerate(held_symbols) if i not in found)

    def count(self) -> None:
        """Count the results taken from the store as completed at once (``from_store``), one snapshot
        each, and the ERROR results of symbols whose key raised (then the error budget)."""
        stored, self.stored = self.stored, []
        unkeyed, self.unkeyed = self.unkeyed, []
        outcomes = self._outcomes
        if stored:
            outcomes.from_store(stored)
        if unkeyed:
            outcomes.failed(unkeyed, stored=False)
            outcomes.check_budget()

    def close(self) -> None:
        """Hand the store's writer the end of the batch (it writes what is left on its own thread, never
        waited for here); never raises."""
        try:
            self.session.close()
        except Exception as exc:  # pragma: no cover - close() only closes a connection and sets a flag
            _log.error("job %s: closing the store failed: %s", safe_str(self._job_id, 80), describe(exc))


def _unkeyed_result(symbol: Any, error: BaseException) -> SymbolResult:
    """The ERROR result of a symbol the store could not key (never run)."""
    text = detach(error)
    return SymbolResult(symbol, ResultStatus.ERROR, None, error, 0.0, traceback=text)
