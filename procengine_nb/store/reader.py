"""Reading a store back: :func:`load_results` and the queries behind ``ResultStore``'s reads.

Reading never creates a store (a missing or 0-byte file is an error naming it), an SQLite error while
reading (a damaged file) is a ``ValueError`` naming the file, and a row that cannot be read back costs only
its symbol (an ERROR result with a :class:`~procengine_nb.store.codec.StoreLoadError`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from procengine_nb.models import BatchResult, ProcessingJob
from procengine_nb.store.codec import READ_COLUMNS, decode
from procengine_nb.store.keys import shown_name, storable

if TYPE_CHECKING:
    from procengine_nb.store.resultstore import ResultStore

__all__ = ["Reading", "batch_names", "count", "load_batch", "load_results"]


class Reading:
    """``with Reading(path, connect) as conn``: a connection closed at the end, and an SQLite error raised
    inside (a damaged file) turned into a ``ValueError`` that names the file."""

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection]) -> None:
        self.path = path
        self._connect = connect
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return self._conn

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if self._conn is not None:
            self._conn.close()
        if isinstance(exc, sqlite3.Error):
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> ValueError:
        return ValueError(f"cannot read the store {str(self.path)!r}: {exc} (is the file damaged, or not a "
                          "result store?)")


def batch_names(conn: sqlite3.Connection, limit: int | None = None) -> list[str]:
    """The batch names stored (as the jobs had them), sorted; at most ``limit``."""
    query = "SELECT DISTINCT batch FROM procengine_results ORDER BY batch"
    rows = conn.execute(query + (f" LIMIT {int(limit)}" if limit is not None else "")).fetchall()
    return [shown_name(row[0]) for row in rows]


def count(conn: sqlite3.Connection, name: str | None) -> int:
    if name is None:
        return int(conn.execute("SELECT count(*) FROM procengine_results").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM procengine_results WHERE batch = ?",
                            (storable(name),)).fetchone()[0])


def _listed(names: list[str], limit: int) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")


def load_batch(conn: sqlite3.Connection, path: Path, name: str | None) -> BatchResult:
    """Batch ``name``'s results in the order they were written (``None``: the store's one batch)."""
    if name is None:
        names = batch_names(conn, 6)
        if len(names) > 1:
            raise ValueError(f"the store {str(path)!r} holds several batches ({_listed(names, 5)}): pass name=")
        if not names:
            return BatchResult([], job=None)
        name = names[0]
    rows = conn.execute(
        f"SELECT {', '.join(READ_COLUMNS)} FROM procengine_results WHERE batch = ? ORDER BY finished_at, rowid",
        (storable(name),),
    ).fetchall()
    if not rows:
        names = batch_names(conn, 21)
        held = f"it holds {_listed(names, 20)}" if names else "it holds no batch yet"
        raise ValueError(f"the store {str(path)!r} holds no batch named {name!r}; {held}")
    results = [decode(row) for row in rows]
    return BatchResult(results, job=ProcessingJob(tuple(r.symbol for r in results), name=name))


def load_results(path: str | os.PathLike[str] | ResultStore, name: str | None = None) -> BatchResult:
    """Read the results of batch ``name`` back from a store file as a :class:`~procengine_nb.BatchResult`.

    ``name=None`` works when the store holds a single batch; a name the store does not hold is a
    ``ValueError`` listing the names it holds. The file must exist and be a store (reading never creates
    one: a missing file is a ``FileNotFoundError``, a 0-byte or damaged file a ``ValueError`` naming it).
    Each result has ``from_store=True``; failures come back as :class:`StoredError` (type, message and
    traceback text), a value the store could not keep as :class:`NotStored`, and a row that cannot be
    read back (its value no longer unpickles, say) as that symbol's ERROR with a :class:`StoreLoadError`.
    Results this process's batches still have to write to the file are waited for first (at most 10 s,
    and only while writing makes progress).

    >>> import os, tempfile
    >>> from procengine_nb import run
    >>> path = os.path.join(tempfile.mkdtemp(), "r.db")
    >>> _ = run(len, ["ab", "c"], name="lengths", store=path, display=False).result(timeout=10)
    >>> sorted(load_results(path).values)
    [('ab', 2), ('c', 1)]
    """
    from procengine_nb.store.resultstore import ResultStore

    if isinstance(path, ResultStore):
        return path.load(name)
    return ResultStore._existing(path).load(name)
