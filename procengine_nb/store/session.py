"""One batch's link to its store: what the store already holds for it, and the hand-off to its writer.

The batch thread uses a session from ``open()`` to ``close()``. Nothing here waits on a lock another
connection holds: the reads run with a short busy timeout (a store that cannot be read at the batch's
start is run without reuse, and a log line says so), the writes go to the session's
:class:`~procengine_nb.store.writer.Writer` thread, and ``close()`` returns at once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from procengine_nb._safe import describe
from procengine_nb.models import ResultStatus, SymbolResult
from procengine_nb.store.codec import StoreLoadError, load_value, make_result
from procengine_nb.store.keys import KeyFunction, shown_key, shown_name, storable
from procengine_nb.store.schema import connect
from procengine_nb.store.writer import Writer, log_line, wait_for_writers

if TYPE_CHECKING:
    from procengine_nb.store.resultstore import ResultStore

__all__ = ["StoreSession"]

_READ_TIMEOUT = 0.2  # SQLite's busy timeout for the batch thread's reads (seconds)
_OPEN_WAIT = 5.0  # at most this long, a batch waits for this process's earlier writes to its file (while
# they make progress; never for a locked file)
_LOOKUP_PART = 500  # keys per lookup query


class StoreSession:
    """One batch's link to its store (see the module's docstring).

    ``open()`` first; between it and ``close()``, ``is_known(key)`` and ``done(symbols, keys)`` give the
    stored SUCCESS results to return instead of running (of the same processor code unless the store
    reuses ``"any"``), and ``add(results)`` hands completed results to the writer. ``flush(timeout)``
    waits until what was handed over is written (tests, and callers about to read the file).
    """

    def __init__(self, store: ResultStore, name: str, key: KeyFunction, code: str | None = None) -> None:
        self.store = store
        self.name = storable(name)
        self.key = key
        """The batch's key function (:func:`~procengine_nb.store.keys.default_key` unless ``key=``)."""
        self.code = code
        """The code fingerprint of the batch's processor (stored with each row; None: unknown)."""
        self._conn: sqlite3.Connection | None = None
        self._known: set[str] = set()
        self._writer = Writer(store.path, self.name, key, code, commit_seconds=store.commit_seconds,
                              commit_results=store.commit_results, give_up=store.busy_timeout)
        self._read_failed = False

    @property
    def has_known(self) -> bool:
        """True when some keys of this batch have a reusable SUCCESS in the store (a rerun)."""
        return bool(self._known)

    @property
    def unkept(self) -> int:
        """Results written without their value so far (it could not be pickled)."""
        return self._writer.unkept

    @property
    def writer(self) -> Writer:
        """The session's background writer."""
        return self._writer

    def open(self, cancelled: Callable[[], bool] | None = None) -> StoreSession:
        """Read which keys the store holds a reusable SUCCESS for. First waits (at most ``_OPEN_WAIT``
        seconds, and only while they make progress) for this process's earlier writes of this batch to the
        file, so a rerun right after a batch sees all of it; ``cancelled`` ends that wait early. Never raises for a
        locked or unreadable file: the batch then runs without reuse (logged)."""
        path = self.store.path
        if not wait_for_writers(path, _OPEN_WAIT, batch=self.name, skip_failing=True, cancelled=cancelled):
            log_line(logging.WARNING, "store %s: results of an earlier batch are still waiting to be written; "
                     "batch %r may run them again", path, shown_name(self.name))
        try:
            self._conn = connect(path, _READ_TIMEOUT)
            same_code = self.store.reuse == "same_code"
            rows = self._conn.execute(
                "SELECT key, code IS ? FROM procengine_results WHERE batch = ? AND status = 'success' "
                "AND value_note IS NULL", (self.code, self.name)).fetchall()
        except Exception as exc:  # locked where SQLite does not wait, damaged: run without reuse
            self._read_error("could not read what it holds", exc)
            return self
        self._known = {k for k, same in rows if same or not same_code}
        stale = len(rows) - len(self._known)
        if stale:
            log_line(logging.WARNING, "store %s: %d stored result(s) of batch %r were made by other code of the "
                     "processor (it changed since): they are computed again (ResultStore(..., reuse='any') "
                     "reuses them)", path, stale, shown_name(self.name))
        return self

    def is_known(self, key: str) -> bool:
        return key in self._known

    def done(self, symbols: Sequence[Any], keys: Sequence[str]) -> dict[int, SymbolResult]:
        """For the ``symbols`` whose key has a reusable SUCCESS: ``{position: result}`` with
        ``from_store=True``. A stored value that no longer loads is not returned (the symbol runs); a read
        that fails (a locked or damaged file) returns what it has (the rest runs)."""
        conn = self._conn
        wanted: dict[str, list[int]] = {}
        for position, k in enumerate(keys):
            if k in self._known:
                wanted.setdefault(k, []).append(position)
        found: dict[int, SymbolResult] = {}
        if conn is None or not wanted:
            return found
        code_clause = " AND code IS ?" if self.store.reuse == "same_code" else ""
        code_args = (self.code,) if code_clause else ()
        names = list(wanted)
        for start in range(0, len(names), _LOOKUP_PART):
            part = names[start:start + _LOOKUP_PART]
            try:
                rows = conn.execute(
                    "SELECT key, value, duration_ms, attempts FROM procengine_results WHERE batch = ? AND "
                    f"status = 'success' AND value_note IS NULL{code_clause} AND key IN ({','.join('?' * len(part))})",
                    (self.name, *code_args, *part),
                ).fetchall()
            except Exception as exc:
                self._read_error("could not read stored results", exc)
                return found
            for k, blob, duration_ms, attempts in rows:
                try:
                    value = load_value(blob)
                except StoreLoadError as exc:  # e.g. its class is gone: compute it again
                    log_line(logging.WARNING, "store %s: %s (key %r, batch %r); running it again",
                             self.store.path, exc, shown_key(k), shown_name(self.name))
                    self._known.discard(k)
                    continue
                for position in wanted[k]:
                    found[position] = make_result(symbols[position], ResultStatus.SUCCESS, value, None,
                                                  float(duration_ms), int(attempts))
        return found

    def add(self, results: Iterable[SymbolResult]) -> None:
        """Hand completed results to the writer (those from the store are skipped); never waits."""
        self._writer.add(results)

    def close(self) -> None:
        """The batch ended: close the reads; the writer writes what is left and ends (returns at once)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a connection that is not in use does not fail
                pass
        self._writer.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every result handed over so far is written (True), or ``timeout`` seconds (False)."""
        return self._writer.flush(timeout)

    def _read_error(self, what: str, exc: BaseException) -> None:
        if not self._read_failed:
            self._read_failed = True
            log_line(logging.WARNING, "store %s: %s for batch %r (%s); running without reusing them",
                     self.store.path, what, shown_name(self.name), describe(exc, 300))
        self._known = set()
