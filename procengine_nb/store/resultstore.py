"""The :class:`ResultStore` object: a checked path to a store file and its options."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable

from procengine_nb._validation import check_seconds
from procengine_nb.models import BatchResult
from procengine_nb.store import reader
from procengine_nb.store.keys import KeyFunction, storable
from procengine_nb.store.schema import StoreBusy, check_name, check_path, connect, transaction
from procengine_nb.store.session import StoreSession
from procengine_nb.store.writer import wait_for_writers

__all__ = ["REUSE", "ResultStore"]

REUSE = ("same_code", "any")
"""What a rerun may take from the store: ``"same_code"`` (the default) only what the same processor code
stored; ``"any"`` whatever the processor's code was."""

_READ_WAIT = 10.0  # reads first wait at most this long for this process's writes to the file (while they progress)


class ResultStore:
    """An SQLite file of batch results (WAL mode), keyed by batch name and symbol key.

    Creating one checks the file at once: a path in a missing folder is a ``FileNotFoundError``, a file
    that is not a result store of this version a ``ValueError`` (:class:`StoreVersionError` for another
    version), and such a file is never changed. A new or empty file gets the schema. The object itself
    holds no connection: each batch reads on its own thread and writes on a background writer thread of
    its own, and reads here open a short connection, so a store may be shared by threads, batches and
    kernels (SQLite's locking keeps concurrent writers from corrupting the file).

    Args:
        path: the SQLite file (created when missing).
        commit_seconds: a batch's writer commits at least this often (seconds) while results arrive.
        commit_results: ... and whenever this many results wait.
        busy_timeout: seconds an operation on the caller's thread (creating the store, ``forget``, reads)
            waits for another writer's lock; and how long a batch's writer keeps trying a locked file after
            its batch ended before it gives up (logging how many results were not stored).
        reuse: ``"same_code"`` (default): a rerun reuses only results stored by the same processor code
            (edit the function and its symbols are computed again); ``"any"``: reuse them whatever the
            code (results of every earlier version, and of stores written before code was recorded).

    Reads (``batches``, ``count``, ``load``) first wait, at most 10 s and only while writing makes
    progress, for results this process still has to write to the file; :meth:`flush` waits for all of them.

    >>> import os, tempfile
    >>> store = ResultStore(os.path.join(tempfile.mkdtemp(), "r.db"))
    >>> store.batches()
    []
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        commit_seconds: float = 0.5,
        commit_results: int = 1000,
        busy_timeout: float = 10.0,
        reuse: str = "same_code",
    ) -> None:
        self.path = check_path(path)
        """The absolute path of the SQLite file."""
        for name, value in (("commit_seconds", commit_seconds), ("busy_timeout", busy_timeout)):
            check_seconds(value, name, strict=True)
        if isinstance(commit_results, bool) or not isinstance(commit_results, int):
            raise TypeError(f"commit_results must be an int, not {type(commit_results).__name__}")
        if commit_results < 1:
            raise ValueError(f"commit_results must be >= 1, got {commit_results!r}")
        if not isinstance(reuse, str):
            raise TypeError(f"reuse must be a str, one of {', '.join(map(repr, REUSE))}; not {type(reuse).__name__}")
        if reuse not in REUSE:
            raise ValueError(f"reuse must be 'same_code' (reuse only what the same processor code stored) or 'any' "
                             f"(reuse whatever the code), got {reuse!r}")
        self.commit_seconds = float(commit_seconds)
        self.commit_results = commit_results
        self.busy_timeout = float(busy_timeout)
        self.reuse = reuse
        """``"same_code"`` or ``"any"``: what a rerun may take from the store."""
        self._connect().close()  # check (or create) the file now, on the caller's thread

    @classmethod
    def _existing(cls, path: str | os.PathLike[str]) -> ResultStore:
        """A store over a file that must already be one (reading never creates one)."""
        checked = check_path(path)
        if not checked.exists():
            raise FileNotFoundError(f"no store at {str(checked)!r}")
        if checked.is_file() and checked.stat().st_size == 0:
            raise ValueError(f"{str(checked)!r} is empty (0 bytes): not a result store, and reading never makes "
                             "one (pass the path of a store a batch wrote)")
        store = cls.__new__(cls)
        store.path = checked
        store.commit_seconds, store.commit_results, store.busy_timeout, store.reuse = 0.5, 1000, 10.0, "same_code"
        store._connect(read_only=True).close()
        return store

    @classmethod
    def _for_batch(cls, path: str | os.PathLike[str]) -> ResultStore:
        """``store="path"``: the store of that file, checked at once (a missing folder, not a regular file,
        not a store, another version: refused), never waiting for a lock. A file another connection keeps
        locked is taken as it is, as a ``ResultStore`` made before the lock would be: the batch runs
        without reuse (its session logs that) and its writer stores the results once the lock is gone."""
        store = cls.__new__(cls)
        store.path = check_path(path)
        store.commit_seconds, store.commit_results, store.busy_timeout, store.reuse = 0.5, 1000, 10.0, "same_code"
        try:
            connect(store.path, 0.0, deadline=time.monotonic()).close()
        except StoreBusy:
            pass  # the batch's session says so (WARNING "... running without reusing them")
        return store

    # -- reading ------------------------------------------------------------------------------------
    def batches(self) -> list[str]:
        """The batch names the store holds results for, sorted."""
        with self._reading() as conn:
            return reader.batch_names(conn)

    def count(self, name: str | None = None) -> int:
        """How many results the store holds (for batch ``name``, or in all)."""
        if name is not None:
            check_name(name)
        with self._reading() as conn:
            return reader.count(conn, name)

    def load(self, name: str | None = None) -> BatchResult:
        """The results of batch ``name`` as a :class:`~procengine_nb.BatchResult`, in the order they
        were written. ``name=None`` works when the store holds one batch (or none); a name the store does
        not hold is a ``ValueError`` listing the names it holds.

        Values come back unpickled (a value the store could not keep is a :class:`NotStored`), failures
        as :class:`StoredError`, a row that cannot be read back as that symbol's ERROR
        (:class:`StoreLoadError`), and every result has ``from_store=True``.
        """
        if name is not None:
            check_name(name)
        with self._reading() as conn:
            return reader.load_batch(conn, self.path, name)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the results this process's batches handed to their writers for this file are written
        (or given up on, and logged): True, or False once ``timeout`` seconds passed first. ``None`` waits as
        long as it takes (bounded by ``busy_timeout`` after each batch's end when the file stays locked)."""
        if timeout is not None:
            check_seconds(timeout, "timeout")
        return wait_for_writers(self.path, timeout)

    # -- changing -----------------------------------------------------------------------------------
    def forget(self, name: str, keys: Iterable[str] | None = None) -> int:
        """Delete the results of batch ``name`` (only those of ``keys`` when given: a str symbol's key is
        the symbol; another symbol's is ``procengine_nb.store.default_key(symbol)``, or what ``key=``
        returned), so a rerun computes them again. Returns how many results were deleted."""
        check_name(name)
        name = storable(name)
        key_list = None
        if keys is not None:
            key_list = list(keys)
            for k in key_list:
                if not isinstance(k, str):
                    raise TypeError(f"keys must be str, not {type(k).__name__}")
            key_list = [storable(str.__str__(k)) for k in key_list]
        self.flush(_READ_WAIT)
        with reader.Reading(self.path, self._connect) as conn, transaction(conn):
            if key_list is None:
                return int(conn.execute("DELETE FROM procengine_results WHERE batch = ?", (name,)).rowcount)
            deleted = 0
            for start in range(0, len(key_list), 500):
                part = key_list[start:start + 500]
                deleted += conn.execute(
                    f"DELETE FROM procengine_results WHERE batch = ? AND key IN ({','.join('?' * len(part))})",
                    (name, *part),
                ).rowcount
            return int(deleted)

    # -- the batch's side ---------------------------------------------------------------------------
    def _session(self, name: str, key: KeyFunction, code: str | None = None) -> StoreSession:
        """One batch's session (its reads on the batch's thread, its writes on a writer thread)."""
        return StoreSession(self, name, key, code)

    def _connect(self, *, create: bool = True, read_only: bool = False) -> sqlite3.Connection:
        """A new connection to a checked store (the schema created if the file is new and ``create``;
        ``read_only``: one that never writes, for reads, so a store on read-only media loads)."""
        return connect(self.path, self.busy_timeout, create=create, deadline=time.monotonic() + self.busy_timeout,
                       read_only=read_only)

    def _reading(self) -> reader.Reading:
        """``with self._reading() as conn``: this process's writes to the file first (bounded), then a
        connection closed at the end; SQLite errors become a ValueError naming the file."""
        wait_for_writers(self.path, _READ_WAIT, skip_failing=True)
        return reader.Reading(self.path, lambda: self._connect(read_only=True))

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

