"""The store file: path checks, the schema and its versions, connections and the one transaction helper.

A store is an SQLite file in WAL mode marked by ``PRAGMA application_id`` and versioned by ``PRAGMA
user_version`` (:data:`FORMAT_VERSION`). A file that is not a store, or a store of a newer format, is
refused and never changed; a store of format 1 (before rows carried the processor's code fingerprint) is
brought to format 2 by adding the ``code`` column (its old rows have none: they are reused only with
``reuse="any"``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from procengine_nb._safe import logger

__all__ = ["FORMAT_VERSION", "StoreBusy", "StoreVersionError", "check_name", "check_path", "connect", "transaction"]

_log = logger("procengine_nb.store")  # never raises (see procengine_nb._safe.GuardedLogger)

FORMAT_VERSION = 2
"""The store's schema version (``PRAGMA user_version``); format 1 files are upgraded, others refused."""

APPLICATION_ID = 0x50454E42  # "PENB": marks an SQLite file as a procengine_nb result store
_SQLITE_MAGIC = b"SQLite format 3\x00"

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
    code TEXT,
    PRIMARY KEY (batch, key)
);
"""
_UPGRADES = {1: "ALTER TABLE procengine_results ADD COLUMN code TEXT"}  # from format N to N + 1


class StoreVersionError(ValueError):
    """The file is a result store written by another version of procengine_nb (nothing was changed)."""


class StoreBusy(ValueError):
    """Another connection kept the store file locked for as long as this one would wait (it names the file)."""


class Busy(Exception):
    """Another connection held the lock where SQLite does not wait: try again."""


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """``BEGIN <mode>`` ... ``COMMIT``; rolled back when the block (or the commit) raises."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def check_path(path: object) -> Path:
    """``path`` as an absolute :class:`~pathlib.Path` to a file (a TypeError or ValueError otherwise)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"store path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError("store path must be a str path, not bytes")
    if not text or text == ":memory:" or text.startswith("file:"):
        raise ValueError(f"store path must name a file, got {text!r}")
    return Path(text).expanduser().absolute()


def check_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")


def connect(path: Path, timeout: float, *, create: bool = True, deadline: float | None = None,
            read_only: bool = False) -> sqlite3.Connection:
    """A new connection to a checked store: the schema created in a new (or empty) file when ``create``,
    a format 1 store upgraded. ``timeout`` is SQLite's busy timeout for this connection; ``deadline``
    (monotonic) bounds the retries of a file another connection is creating at the same moment.
    ``read_only``: a connection that never writes (no upgrade either), so a store on read-only media (a
    read-only mount, a share, a container layer) reads (see :func:`_open_read_only`)."""
    _check_kind(path)
    _check_magic(path)
    limit = deadline if deadline is not None else time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            if read_only:
                conn = _open_read_only(path, timeout)
            else:
                conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ValueError(f"cannot open the store {str(path)!r}: {exc}") from exc
        try:
            _prepare(conn, path, create and not read_only, read_only)
        except Busy as busy:
            # Switching a new file to WAL while another connection creates it can fail at once with
            # "database is locked" (SQLite skips the busy handler where waiting could deadlock).
            conn.close()
            if time.monotonic() >= limit:
                raise StoreBusy(f"cannot use {str(path)!r} as a result store: {busy.__cause__}") from busy
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
            continue
        except BaseException:
            conn.close()
            raise
        return conn


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_kind(path: Path) -> None:
    """Refuse at once, by ``os.stat`` and before anything opens it, a path that is not a regular file (a
    folder, a FIFO, a device such as ``/dev/null``, a socket: opening a FIFO to read blocks until a writer
    comes), or a path in a missing folder. A path that does not exist yet is fine (a new store)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"store path {str(path)!r}: the folder {str(path.parent)!r} does not exist") from None
        return
    except OSError as exc:
        raise ValueError(f"cannot read the store {str(path)!r}: {exc}") from exc
    if stat.S_ISDIR(mode):
        raise ValueError(f"store path {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise ValueError(f"store path {str(path)!r} is {kind}: a result store is a regular file (pass the path of "
                         "a store, or of a file to create)")


def _open_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-only connection (URI ``mode=ro``). Reading a WAL store needs its ``-shm`` file; where it can
    be neither found nor created (a read-only folder), the file is opened ``immutable=1`` instead: no
    locks and no WAL, which is right for a store on read-only media (nobody writes it), where a store a
    batch finished has its WAL merged back (a ``-wal`` file left there is not read: logged)."""
    uri = "file:" + urllib.parse.quote(str(path))
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if "unable to open" not in str(exc):
            raise
    wal = Path(str(path) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        _log.warning(
            "store %s: read as an immutable file (its folder is read-only); its write-ahead log %s is not "
            "read, so results written last may be missing", path, wal)
    return sqlite3.connect(uri + "?immutable=1", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


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


def _prepare(conn: sqlite3.Connection, path: Path, create: bool, read_only: bool = False) -> None:
    """Check that ``conn``'s file is a store of this version (creating the schema in a new file, upgrading
    an older format) and set the connection up. Never changes a file that is not a store. ``read_only``:
    an older format is read as it is (the read columns are in every format), never upgraded."""
    try:
        app_id, version, tables = _identity(conn)
        if app_id == 0 and version == 0 and tables == 0 and create:  # a new, empty database: make it a store
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            with transaction(conn):
                app_id, version, tables = _identity(conn)  # another process may have made it meanwhile
                if app_id == 0 and version == 0 and tables == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO procengine_meta VALUES ('format', 'procengine_nb result store')")
                    conn.execute("INSERT INTO procengine_meta VALUES ('created', ?)",
                                 (time.strftime("%Y-%m-%dT%H:%M:%S%z"),))
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                    app_id, version = APPLICATION_ID, FORMAT_VERSION
        if app_id == APPLICATION_ID and version in _UPGRADES and not read_only:
            with transaction(conn):
                app_id, version, tables = _identity(conn)
                while version in _UPGRADES:
                    conn.execute(_UPGRADES[version])
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise Busy() from exc
        raise ValueError(f"cannot use {str(path)!r} as a result store: {exc}; it was left unchanged") from exc
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"cannot use {str(path)!r} as a result store: {exc}; it was left unchanged") from exc
    if app_id != APPLICATION_ID:
        raise ValueError(
            f"{str(path)!r} is an SQLite database but not a procengine_nb result store; it was left unchanged "
            "(use another file)"
        )
    if version != FORMAT_VERSION and not (read_only and version in _UPGRADES):
        raise StoreVersionError(
            f"{str(path)!r} is a result store of format {version}, written by another version of "
            f"procengine_nb (this one reads formats 1-{FORMAT_VERSION}); it was left unchanged: read it with "
            "that version, or use another file"
        )
    if not read_only:
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable when a process dies, fast commits


def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """Application id, schema version and table count, read in one snapshot (another connection may be
    creating the schema meanwhile)."""
    with contextlib.ExitStack() as stack:
        if not conn.in_transaction:
            stack.enter_context(transaction(conn, "DEFERRED"))
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    return int(app_id), int(version), int(tables)
