"""Durable results: an SQLite file that keeps every completed symbol, so a rerun skips what is done.

A :class:`ResultStore` is a path to an SQLite file (standard library ``sqlite3``, WAL mode) holding
results keyed by the batch's ``name`` and each symbol's ``key`` (``str(symbol)`` unless ``key=`` is
given). The batch's own thread (the driver, never a worker) writes each completed result in batched
transactions, at most ``commit_seconds`` (0.5 s) or ``commit_results`` (1,000 results) behind, so it
works the same with every backend. A rerun of the same batch with the same store does not run again a
symbol whose key already has a SUCCESS there: that symbol comes back with ``from_store=True``.

What is kept for each result: its status, the symbol and the value (pickled), the duration and, for a
failure, the exception's type, message and formatted traceback (text: never live frames). A value that
cannot be pickled is kept in memory for this run; the store records why it could not keep it, and a
rerun computes that symbol again. :func:`load_results` reads a store back as a
:class:`~procengine_nb.BatchResult`.

A store file is as trusted as a pickle file: open only stores you (or code you trust) wrote.

>>> import os, tempfile
>>> from procengine_nb import ProcessingEngine, ProcessingJob
>>> path = os.path.join(tempfile.mkdtemp(), "results.db")
>>> engine = ProcessingEngine(str.upper, max_workers=2)
>>> first = engine.process_batch(ProcessingJob(["a", "b"], name="letters"), store=path)
>>> again = engine.process_batch(ProcessingJob(["a", "b", "c"], name="letters"), store=path)
>>> sorted((r.value, r.from_store) for r in again), again.progress.from_store
([('A', True), ('B', True), ('C', False)], 2)
>>> sorted(r.value for r in load_results(path, "letters"))
['A', 'B', 'C']
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from procengine_nb._safe import describe, safe_repr, safe_str
from procengine_nb._tracebacks import format_text
from procengine_nb._validation import check_seconds
from procengine_nb.models import BatchResult, ProcessingJob, ResultStatus, SymbolResult

__all__ = [
    "FORMAT_VERSION",
    "KeyFunction",
    "NotStored",
    "ResultStore",
    "StoreVersionError",
    "StoredError",
    "load_results",
    "make_key_function",
]

_log = logging.getLogger("procengine_nb.store")

FORMAT_VERSION = 1
"""The store's schema version (``PRAGMA user_version``); a file of another version is refused."""

_APPLICATION_ID = 0x50454E42  # "PENB": marks an SQLite file as a procengine_nb result store
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MAX_TEXT = 64_000  # characters kept of an error message or traceback
_STATUS = {ResultStatus.SUCCESS: "success", ResultStatus.ERROR: "error", ResultStatus.CANCELLED: "cancelled"}
_STATUS_BACK = {text: status for status, text in _STATUS.items()}

_SCHEMA = """
CREATE TABLE procengine_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE procengine_results (
    batch TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('success', 'error', 'cancelled')),
    symbol BLOB,
    value BLOB,
    value_note TEXT,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    duration_ms REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    finished_at REAL NOT NULL,
    PRIMARY KEY (batch, key)
);
"""

_COLUMNS = ("batch", "key", "status", "symbol", "value", "value_note", "error_type", "error_message",
            "error_traceback", "duration_ms", "attempts", "finished_at")

# A newer outcome replaces an older one, except that a kept SUCCESS is never replaced by anything but
# another kept SUCCESS (two batches racing on one key must not lose a computed value).
_UPSERT = (
    f"INSERT INTO procengine_results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (batch, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
    + " WHERE NOT (procengine_results.status = 'success' AND procengine_results.value_note IS NULL)"
    " OR (excluded.status = 'success' AND excluded.value_note IS NULL)"
)

KeyFunction = Callable[[Any], str]
"""Turns a symbol into its key in the store (``str`` unless ``key=`` is given)."""


class StoreVersionError(ValueError):
    """The file is a result store written by another version of procengine_nb (nothing was changed)."""


class StoredError(Exception):
    """A failure read back from a store: the original exception's type name, message and traceback text.

    >>> error = StoredError("ValueError", "no data", "Traceback ...")
    >>> str(error), error.type_name
    ('ValueError: no data', 'ValueError')
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        """The original exception's type (``module.QualName``; builtins without a module)."""
        self.message = message
        """``str()`` of the original exception."""
        self.traceback_text = traceback_text
        """The original exception, formatted as ``traceback.format_exception`` does."""

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class NotStored:
    """The value of a SUCCESS read back from a store that could not keep it (it could not be pickled).

    >>> NotStored("TypeError: cannot pickle '_thread.lock' object")
    <value not stored: TypeError: cannot pickle '_thread.lock' object>
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason
        """Why the store could not keep the value."""

    def __repr__(self) -> str:
        return f"<value not stored: {self.reason}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotStored) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)


_ESCAPED = "\x00surrogates:"


def storable(text: str) -> str:
    """``text`` as SQLite can store it: unchanged, unless it holds a lone surrogate (which no UTF-8 text can
    carry); then a one-to-one escaped form, so two such names or keys never collide.

    >>> storable("AAPL")
    'AAPL'
    >>> storable("A" + chr(0xD800))
    '\\x00surrogates:A\\\\ud800'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _ESCAPED + text.encode("unicode_escape").decode("ascii")
    return text


def _shown_name(stored: str) -> str:
    """The batch name as the job had it (undoes :func:`storable`)."""
    if stored.startswith(_ESCAPED):
        return stored[len(_ESCAPED):].encode("ascii").decode("unicode_escape")
    return stored


def _str_key(symbol: Any) -> str:
    """The default key, ``str(symbol)``: a ``__str__`` that raises or returns a non-str is a ValueError naming
    the symbol (never the user's own exception escaping a store); a str subclass is made a plain str."""
    try:
        value = str(symbol)
    except Exception as exc:
        raise ValueError(f"a store keys each symbol by str(symbol), which raised {describe(exc, 200)} for the "
                         f"symbol {safe_repr(symbol, 80)}: pass key=") from exc
    return storable(value if type(value) is str else str.__str__(value))


def make_key_function(key: Callable[[Any], Any] | None) -> KeyFunction:
    """The key function a batch uses: ``str`` when ``key`` is None, else ``key`` checked at each call.

    A key that raises, or returns something other than a non-empty ``str``, is a ``ValueError`` or
    ``TypeError`` naming the symbol.

    >>> make_key_function(None)(42)
    '42'
    >>> make_key_function(lambda s: s["id"])({"name": "x"})
    Traceback (most recent call last):
    ...
    ValueError: key= raised KeyError('id') for the symbol {'name': 'x'}
    """
    if key is None:
        return _str_key
    if not callable(key):
        raise TypeError(f"key must be callable or None, not {type(key).__name__}")

    def checked(symbol: Any) -> str:
        try:
            value = key(symbol)
        except Exception as exc:
            raise ValueError(f"key= raised {_describe(exc)} for the symbol {_short_repr(symbol)}") from exc
        if type(value) is not str:
            if not isinstance(value, str):
                raise TypeError(
                    f"key= must return a str, not {type(value).__name__} (for the symbol {_short_repr(symbol)}); "
                    "wrap it, e.g. key=lambda s: str(...)"
                )
            value = str.__str__(value)  # a str subclass's own __eq__/__hash__ stay out of the store
        return storable(value)

    checked.__wrapped__ = key  # type: ignore[attr-defined]
    return checked


class ResultStore:
    """An SQLite file of batch results (WAL mode), keyed by batch name and symbol key.

    Creating one checks the file at once: a path in a missing folder is a ``FileNotFoundError``, a file
    that is not a result store of this version a ``ValueError`` (:class:`StoreVersionError` for another
    version), and such a file is never changed. A new or empty file gets the schema. The object itself
    holds no connection: each batch opens its own on its own thread, and reads open a short one, so a
    store may be shared by threads, batches and kernels (SQLite's locking, with a busy timeout of
    ``busy_timeout`` seconds, keeps concurrent writers from corrupting the file).

    Args:
        path: the SQLite file (created when missing).
        commit_seconds: a batch commits what it buffered at least this often (seconds).
        commit_results: ... and whenever this many results are buffered.
        busy_timeout: seconds a write waits for another writer before giving up (and retrying later).

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
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = _check_path(path)
        """The absolute path of the SQLite file."""
        for name, value in (("commit_seconds", commit_seconds), ("busy_timeout", busy_timeout)):
            check_seconds(value, name, strict=True)
        if isinstance(commit_results, bool) or not isinstance(commit_results, int):
            raise TypeError(f"commit_results must be an int, not {type(commit_results).__name__}")
        if commit_results < 1:
            raise ValueError(f"commit_results must be >= 1, got {commit_results!r}")
        self.commit_seconds = float(commit_seconds)
        self.commit_results = commit_results
        self.busy_timeout = float(busy_timeout)
        self._connect().close()  # check (or create) the file now, on the caller's thread

    # -- reading ------------------------------------------------------------------------------------
    def batches(self) -> list[str]:
        """The batch names the store holds results for, sorted."""
        with _closing(self._connect()) as conn:
            return [row[0] for row in conn.execute("SELECT DISTINCT batch FROM procengine_results ORDER BY batch")]

    def count(self, name: str | None = None) -> int:
        """How many results the store holds (for batch ``name``, or in all)."""
        with _closing(self._connect()) as conn:
            if name is None:
                return int(conn.execute("SELECT count(*) FROM procengine_results").fetchone()[0])
            _check_name(name)
            return int(conn.execute("SELECT count(*) FROM procengine_results WHERE batch = ?",
                                    (storable(name),)).fetchone()[0])

    def load(self, name: str | None = None) -> BatchResult:
        """The results of batch ``name`` as a :class:`~procengine_nb.BatchResult`, in the order they
        were written. ``name=None`` works when the store holds one batch (or none).

        Values come back unpickled (a value the store could not keep is a :class:`NotStored`), failures
        as :class:`StoredError`, and every result has ``from_store=True``.
        """
        with _closing(self._connect()) as conn:
            if name is None:
                names = [row[0] for row in conn.execute("SELECT DISTINCT batch FROM procengine_results LIMIT 6")]
                if len(names) > 1:
                    shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
                    raise ValueError(f"the store {str(self.path)!r} holds several batches ({shown}): pass name=")
                name = names[0] if names else None
            else:
                _check_name(name)
                name = storable(name)
            rows = [] if name is None else conn.execute(
                "SELECT key, status, symbol, value, value_note, error_type, error_message, error_traceback, "
                "duration_ms, attempts FROM procengine_results WHERE batch = ? ORDER BY finished_at, rowid",
                (name,),
            ).fetchall()
        results = [_loaded(row) for row in rows]
        job = ProcessingJob(tuple(r.symbol for r in results), name=_shown_name(name)) if name else None
        return BatchResult(results, job=job)

    # -- changing -----------------------------------------------------------------------------------
    def forget(self, name: str, keys: Iterable[str] | None = None) -> int:
        """Delete the results of batch ``name`` (only those of ``keys`` when given), so a rerun computes
        them again. Returns how many results were deleted."""
        _check_name(name)
        name = storable(name)
        with _closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if keys is None:
                    deleted = conn.execute("DELETE FROM procengine_results WHERE batch = ?", (name,)).rowcount
                else:
                    key_list = [k for k in keys]
                    for k in key_list:
                        if not isinstance(k, str):
                            raise TypeError(f"keys must be str, not {type(k).__name__}")
                    key_list = [storable(str.__str__(k)) for k in key_list]
                    deleted = 0
                    for part in _parts(key_list, 500):
                        deleted += conn.execute(
                            f"DELETE FROM procengine_results WHERE batch = ? AND key IN ({','.join('?' * len(part))})",
                            (name, *part),
                        ).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return int(deleted)

    # -- the batch's side ---------------------------------------------------------------------------
    def _session(self, name: str, key: KeyFunction, clock: Callable[[], float] = time.monotonic) -> StoreSession:
        """A writer for one batch, to open on the batch's own thread."""
        return StoreSession(self, name, key, clock)

    def _connect(self) -> sqlite3.Connection:
        """A new connection to a checked store (the schema created if the file is new)."""
        path = self.path
        if path.is_dir():
            raise ValueError(f"store path {str(path)!r} is a folder, not a file")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"store path {str(path)!r}: the folder {str(path.parent)!r} does not exist")
        _check_magic(path)
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.002
        while True:
            try:
                conn = sqlite3.connect(str(path), timeout=self.busy_timeout, isolation_level=None)
            except sqlite3.Error as exc:
                raise ValueError(f"cannot open the store {str(path)!r}: {exc}") from exc
            try:
                _prepare(conn, path)
            except _Busy as busy:
                # Switching a new file to WAL while another connection creates it can fail at once with
                # "database is locked" (SQLite skips the busy handler where waiting could deadlock).
                conn.close()
                if time.monotonic() >= deadline:
                    raise ValueError(f"cannot use {str(path)!r} as a result store: {busy.__cause__}") from busy
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            except BaseException:
                conn.close()
                raise
            return conn

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"


class StoreSession:
    """One batch's link to its store: which keys are done, and a buffered writer.

    Used by the batch's thread only (the connection is that thread's). ``open()`` first, ``close()``
    last (it commits what is buffered); between them ``done(keys)`` gives the stored SUCCESS results
    to return instead of running, ``add(results)`` buffers completed results and commits when due,
    and ``due(now)`` says how long the batch may wait before the next commit is due.
    """

    def __init__(self, store: ResultStore, name: str, key: KeyFunction, clock: Callable[[], float]) -> None:
        self.store = store
        self.name = storable(name)
        self.key = key
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._known: set[str] = set()
        self._rows: list[tuple[Any, ...]] = []
        self._last_commit = 0.0
        self._failed_commits = 0
        self._draining = False  # a due commit was cut into slices and rows are left: still due
        self._blocked_until = 0.0  # after a failed commit, the next try waits until then
        self.unkept = 0
        """Results whose value could not be pickled in this batch (kept in memory only)."""

    @property
    def has_known(self) -> bool:
        """True when some keys of this batch have a SUCCESS in the store (a rerun)."""
        return bool(self._known)

    def open(self) -> StoreSession:
        self._conn = self.store._connect()
        self._known = {row[0] for row in self._conn.execute(
            "SELECT key FROM procengine_results WHERE batch = ? AND status = 'success' AND value_note IS NULL",
            (self.name,),
        )}
        self._last_commit = self._clock()
        return self

    def is_known(self, key: str) -> bool:
        return key in self._known

    def done(self, symbols: Sequence[Any], keys: Sequence[str]) -> dict[int, SymbolResult]:
        """For the ``symbols`` whose key has a kept SUCCESS: ``{position: result}`` with
        ``from_store=True``. A stored value that no longer unpickles is not returned (the symbol runs)."""
        conn = self._conn
        assert conn is not None, "open() the session first"
        wanted: dict[str, list[int]] = {}
        for position, k in enumerate(keys):
            if k in self._known:
                wanted.setdefault(k, []).append(position)
        found: dict[int, SymbolResult] = {}
        for part in _parts(list(wanted), 500):
            rows = conn.execute(
                "SELECT key, value, duration_ms, attempts FROM procengine_results WHERE batch = ? AND "
                f"status = 'success' AND value_note IS NULL AND key IN ({','.join('?' * len(part))})",
                (self.name, *part),
            ).fetchall()
            for k, blob, duration_ms, attempts in rows:
                try:
                    value = pickle.loads(blob)
                except Exception as exc:  # e.g. its class is gone: compute it again
                    _log.warning("store %s: the stored value of %r (batch %r) does not unpickle (%s); "
                                 "running it again", self.store.path, k, self.name, _describe(exc))
                    self._known.discard(k)
                    continue
                for position in wanted[k]:
                    found[position] = _result(symbols[position], ResultStatus.SUCCESS, value, None,
                                              float(duration_ms), int(attempts), from_store=True)
        return found

    def add(self, results: Iterable[SymbolResult]) -> None:
        """Buffer completed results (those from the store are skipped). Committing is the batch's next
        step (:meth:`due`, :meth:`tick`), after it handed out new work: workers keep busy meanwhile."""
        rows = self._rows
        name = self.name
        key = self.key
        now_wall = time.time()
        success = ResultStatus.SUCCESS
        dumps = pickle.dumps
        protocol = pickle.HIGHEST_PROTOCOL
        append = rows.append
        for result in results:
            if result.from_store:
                continue
            symbol = result.symbol
            try:
                k = key(symbol)
            except (TypeError, ValueError) as exc:  # it passed when handed out; a copy from a worker may not
                _log.error("store %s: result of %s not stored: %s", self.store.path, _short_repr(symbol), exc)
                continue
            if result.status is success and type(symbol) is str and symbol == k:
                try:  # the common case, inline: a str symbol (read back as its key) and its pickled value
                    append((name, k, "success", None, dumps(result.value, protocol), None, None, None, None,
                            result.duration_ms, result.attempts, now_wall))
                    continue
                except Exception:  # the value does not pickle: the general path says why
                    pass
            append(self._row(name, k, result, now_wall))

    def due(self) -> float | None:
        """Seconds until buffered results must be committed (None when nothing is buffered; 0.0 once
        ``commit_results`` are buffered): the batch waits for its next completion at most this long,
        then calls :meth:`tick`."""
        rows = len(self._rows)
        if not rows:
            self._draining = False
            return None
        now = self._clock()
        if now < self._blocked_until:  # the last commit failed (a lock held too long): not before then
            return self._blocked_until - now
        if rows >= self.store.commit_results or self._draining:
            return 0.0
        return max(0.0, self._last_commit + self.store.commit_seconds - now)

    def tick(self) -> None:
        """Commit when it is due (``commit_results`` buffered, or the oldest waited ``commit_seconds``)."""
        if self.due() == 0.0:
            self.commit()

    def commit(self, limit: int | None = None) -> bool:
        """Write what is buffered (the oldest ``limit`` rows when given) in one transaction. While rows
        are left, :meth:`due` stays 0 (the batch writes the next slice at its next turn). On failure
        (another writer held the lock longer than the busy timeout, a full disk), keep the rows for the
        next try and return False."""
        rows = self._rows
        conn = self._conn
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
        else:
            self._last_commit = self._clock()
        if not rows or conn is None:
            return True
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _write(conn, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._failed_commits += 1
            self._blocked_until = self._clock() + self.store.commit_seconds  # try again then
            if self._failed_commits <= 3:
                _log.warning("store %s: could not commit %d result(s) (%s); will try again",
                             self.store.path, len(self._rows), exc)
            return False
        self._blocked_until = 0.0
        if len(rows) == len(self._rows):
            self._rows = []
            self._draining = False
        else:
            del self._rows[:len(rows)]
            self._draining = True
        return True

    def close(self) -> None:
        """Commit what is buffered and close the connection (idempotent)."""
        conn = self._conn
        if conn is None:
            return
        try:
            if not self.commit():
                self._conn = None
                _log.error("store %s: %d result(s) of batch %r could not be written (they are in the "
                           "returned BatchResult)", self.store.path, len(self._rows), self.name)
        finally:
            self._conn = None
            conn.close()

    def _row(self, name: str, k: str, result: SymbolResult, now_wall: float) -> tuple[Any, ...]:
        status = result.status
        value_blob = value_note = error_type = error_message = error_traceback = None
        if status is ResultStatus.SUCCESS:
            try:
                value_blob = pickle.dumps(result.value, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                value_note = f"could not pickle the value: {_describe(exc)}"
                self.unkept += 1
        else:
            error = result.error
            if error is not None:
                error_type, error_message, error_traceback = _error_text(error, result.traceback)
        symbol = result.symbol
        if type(symbol) is str and symbol == k:  # read back as its key: no need to pickle it
            symbol_blob = None
        else:
            try:
                symbol_blob = pickle.dumps(symbol, pickle.HIGHEST_PROTOCOL)
            except Exception:  # read back as its key
                symbol_blob = None
        return (name, k, status.value, symbol_blob, value_blob, value_note, error_type, error_message,
                error_traceback, float(result.duration_ms), int(result.attempts or 1), now_wall)


def load_results(path: str | os.PathLike[str] | ResultStore, name: str | None = None) -> BatchResult:
    """Read the results of batch ``name`` back from a store file as a :class:`~procengine_nb.BatchResult`.

    ``name=None`` works when the store holds a single batch. The file must exist (reading never creates
    one). Each result has ``from_store=True``; failures come back as :class:`StoredError` (type,
    message and traceback text), a value the store could not keep as :class:`NotStored`.

    >>> import os, tempfile
    >>> from procengine_nb import run
    >>> path = os.path.join(tempfile.mkdtemp(), "r.db")
    >>> _ = run(len, ["ab", "c"], name="lengths", store=path, display=False).result(timeout=10)
    >>> sorted(load_results(path).values)
    [('ab', 2), ('c', 1)]
    """
    if isinstance(path, ResultStore):
        return path.load(name)
    checked = _check_path(path)
    if not checked.exists():
        raise FileNotFoundError(f"no store at {str(checked)!r}")
    return ResultStore(checked).load(name)


def resolve_store(store: object) -> ResultStore | None:
    """``store=`` as a :class:`ResultStore` (a path is opened and checked now), or None."""
    if store is None or isinstance(store, ResultStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return ResultStore(store)
    raise TypeError(f"store must be a path (str or os.PathLike) or a ResultStore, not {type(store).__name__}")


def default_batch_name(processor: Callable[..., Any]) -> str | None:
    """The batch name used with ``store=`` when the job has none: the processor's ``module.qualname``
    for a named function or method; None for a lambda, a ``functools.partial`` or another callable
    (whose name would not tell two different calls apart)."""
    import inspect

    target = processor
    while hasattr(target, "__wrapped__"):
        target = target.__wrapped__
    if not (inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)):
        return None
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname:
        return None
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


# -- helpers ----------------------------------------------------------------------------------------
def _check_path(path: object) -> Path:
    if isinstance(path, ResultStore):
        return path.path
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"store path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError("store path must be a str path, not bytes")
    if not text or text == ":memory:" or text.startswith("file:"):
        raise ValueError(f"store path must name a file, got {text!r}")
    return Path(text).expanduser().absolute()


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")


def _check_magic(path: Path) -> None:
    """Refuse (without changing it) an existing non-empty file that is not an SQLite database."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ValueError(f"cannot read the store {str(path)!r}: {exc}") from exc
    if head and head != _SQLITE_MAGIC:
        raise ValueError(f"{str(path)!r} is not an SQLite file (not a result store); it was left unchanged")


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check that ``conn``'s file is a store of this version (creating the schema in a new file) and set
    the connection up. Never changes a file that is not a store of this version."""
    try:
        app_id, version, tables = _identity(conn)
        if app_id == 0 and version == 0 and tables == 0:  # a new, empty database: make it a store
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                app_id, version, tables = _identity(conn)  # another process may have made it meanwhile
                if app_id == 0 and version == 0 and tables == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO procengine_meta VALUES ('format', 'procengine_nb result store')")
                    conn.execute("INSERT INTO procengine_meta VALUES ('created', ?)",
                                 (time.strftime("%Y-%m-%dT%H:%M:%S%z"),))
                    conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                    app_id, version = _APPLICATION_ID, FORMAT_VERSION
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise _Busy() from exc
        raise ValueError(f"cannot use {str(path)!r} as a result store: {exc}; it was left unchanged") from exc
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"cannot use {str(path)!r} as a result store: {exc}; it was left unchanged") from exc
    if app_id != _APPLICATION_ID:
        raise ValueError(
            f"{str(path)!r} is an SQLite database but not a procengine_nb result store; it was left unchanged "
            "(use another file)"
        )
    if version != FORMAT_VERSION:
        raise StoreVersionError(
            f"{str(path)!r} is a result store of format {version}, written by another version of "
            f"procengine_nb (this one reads format {FORMAT_VERSION}); it was left unchanged: read it with "
            "that version, or use another file"
        )
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable when a process dies, fast commits


class _Busy(Exception):
    """Another connection held the lock where SQLite does not wait: try again."""


def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """Application id, schema version and table count, read in one snapshot (another connection may be
    creating the schema meanwhile)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    finally:
        if own:
            conn.execute("COMMIT")
    return int(app_id), int(version), int(tables)


class _closing:
    """``with _closing(conn) as conn``: close the connection at the end (sqlite3's own ``with`` only
    ends a transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """How many rows one INSERT may carry (SQLite's limit on ``?`` parameters: 32,766 since 3.32, 999
    before), so that a commit of ~1,000 results is one statement where SQLite allows it."""
    try:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[attr-defined]
    except AttributeError:  # Python < 3.11
        limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return max(1, min(2048, limit // len(_COLUMNS)))


@functools.lru_cache(maxsize=8)
def _upsert(rows: int) -> str:
    values = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return _UPSERT.replace(f"VALUES {values}", "VALUES " + ", ".join([values] * rows), 1)


def _write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with as few statements as possible. ``executemany`` would step once per row, and
    ``sqlite3`` lets go of the GIL and takes it back at each step: with busy worker threads each take-back
    waits its turn (up to the interpreter's switch interval), so a row cost tens of microseconds of the
    batch thread's time instead of a few."""
    per = _rows_per_statement(conn)
    full = len(rows) - len(rows) % per
    if full:
        statement = _upsert(per)
        for start in range(0, full, per):
            conn.execute(statement, [value for row in rows[start:start + per] for value in row])
    if full < len(rows):
        rest = rows[full:]
        conn.execute(_upsert(len(rest)), [value for row in rest for value in row])


def _parts(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _result(symbol: Any, status: ResultStatus, value: Any, error: BaseException | None, duration_ms: float,
            attempts: int, *, from_store: bool) -> SymbolResult:
    result = SymbolResult(symbol, status, value, error, duration_ms,
                          traceback=(error.traceback_text or None) if isinstance(error, StoredError) else None)
    if hasattr(result, "attempts"):
        result.attempts = attempts
    result.from_store = from_store
    return result


def _loaded(row: tuple[Any, ...]) -> SymbolResult:
    k, status_text, symbol_blob, value_blob, value_note, error_type, error_message, error_traceback, \
        duration_ms, attempts = row
    symbol: Any = k
    if symbol_blob is not None:
        try:
            symbol = pickle.loads(symbol_blob)
        except Exception:
            symbol = k
    status = _STATUS_BACK[status_text]
    value: Any = None
    error: BaseException | None = None
    if status is ResultStatus.SUCCESS:
        if value_note is not None:
            value = NotStored(value_note)
        else:
            try:
                value = pickle.loads(value_blob)
            except Exception as exc:
                value = NotStored(f"the stored value does not unpickle: {_describe(exc)}")
    elif error_type is not None:
        error = StoredError(error_type, error_message or "", error_traceback or "")
    return _result(symbol, status, value, error, float(duration_ms), int(attempts), from_store=True)


def _error_text(error: BaseException, formatted: str | None = None) -> tuple[str, str, str]:
    cls = type(error)
    module = getattr(cls, "__module__", "") or ""
    type_name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    try:
        message = safe_str(str(error))  # lone surrogates (which SQLite refuses) become U+FFFD
    except Exception:
        message = f"<{type_name} whose str() failed>"
    text = formatted if formatted is not None else format_text(error)  # ERROR results carry it
    return type_name, message[:_MAX_TEXT], text[-_MAX_TEXT:]


def _describe(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__}>"


def _short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
