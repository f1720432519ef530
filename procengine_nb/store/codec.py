"""Rows <-> results: what one stored row holds, how a result becomes one and how it is read back.

A row keeps a result's status, its symbol (pickled, unless it is its own key) and value (pickled), the
duration and attempts, for a failure the exception's type, message and formatted traceback (text: never
live frames), and the code fingerprint of the processor that made it. Encoding never raises: a value
whose pickling raises anything (a ``BaseException`` included) is recorded as not kept, with the reason.
Decoding never raises either: a row that cannot be read back becomes that symbol's ERROR
(:class:`StoreLoadError`), never the whole load's.
"""

from __future__ import annotations

import functools
import pickle
import sqlite3
from typing import Any

from procengine_nb._safe import describe, safe_str
from procengine_nb._tracebacks import format_text
from procengine_nb.models import ResultStatus, SymbolResult
from procengine_nb.store.keys import qualified_type_name, shown_key

__all__ = ["COLUMNS", "READ_COLUMNS", "NotStored", "StoreLoadError", "StoredError", "decode", "encode",
           "load_value", "write"]

_MAX_TEXT = 64_000  # characters kept of an error message or traceback
STATUS = {ResultStatus.SUCCESS: "success", ResultStatus.ERROR: "error", ResultStatus.CANCELLED: "cancelled"}
_STATUS_BACK = {text: status for status, text in STATUS.items()}

COLUMNS = ("batch", "key", "status", "symbol", "value", "value_note", "error_type", "error_message",
           "error_traceback", "duration_ms", "attempts", "finished_at", "code")
READ_COLUMNS = ("key", "status", "symbol", "value", "value_note", "error_type", "error_message",
                "error_traceback", "duration_ms", "attempts")
"""What :func:`decode` reads, in this order."""

# A newer outcome replaces an older one, except that a kept SUCCESS is never replaced by anything but
# another kept SUCCESS of the same code (two batches racing on one key must not lose a computed value);
# an outcome of other code (the processor was edited) always replaces it.
_UPSERT = (
    f"INSERT INTO procengine_results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (batch, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:])
    + " WHERE NOT (procengine_results.status = 'success' AND procengine_results.value_note IS NULL)"
    " OR (excluded.status = 'success' AND excluded.value_note IS NULL)"
    " OR procengine_results.code IS NOT excluded.code"
)


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


class StoreLoadError(Exception):
    """The error of a stored result that could not be read back (its value no longer unpickles, say):
    that symbol alone is an ERROR; the rest of the load holds.

    >>> str(StoreLoadError("the stored value could not be loaded: ModuleNotFoundError: no_such_module"))
    'the stored value could not be loaded: ModuleNotFoundError: no_such_module'
    """


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


def _dumps(value: Any) -> tuple[bytes | None, str | None]:
    """``(pickle, None)``, or ``(None, why)`` when pickling raised anything (a ``BaseException`` too)."""
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL), None
    except BaseException as exc:  # a value's __reduce__ is user code: it costs the value only
        return None, describe(exc, 500)


def encode(result: SymbolResult, batch: str, key: str, code: str | None, finished_at: float
           ) -> tuple[tuple[Any, ...], str | None]:
    """``(row, note)``: the row of ``result`` and, for a SUCCESS whose value could not be pickled, why
    (the row then records it instead of the value). Never raises."""
    status = result.status
    value_blob = value_note = error_type = error_message = error_traceback = None
    if status is ResultStatus.SUCCESS:
        value_blob, why = _dumps(result.value)
        if why is not None:
            value_note = f"could not pickle the value: {why}"
    else:
        error = result.error
        if error is not None:
            error_type, error_message, error_traceback = _error_text(error, result.traceback)
    symbol = result.symbol
    symbol_blob = None if type(symbol) is str and symbol == key else _dumps(symbol)[0]  # else read back as its key
    try:
        duration_ms = float(result.duration_ms)
        attempts = int(result.attempts or 1)
    except Exception:  # pragma: no cover - a result whose fields were replaced by hostile objects
        duration_ms, attempts = 0.0, 1
    return (batch, key, STATUS[status], symbol_blob, value_blob, value_note, error_type, error_message,
            error_traceback, duration_ms, attempts, finished_at, code), value_note


def load_value(blob: bytes) -> Any:
    """Unpickle a stored value; anything it raises (but a Ctrl-C) is a :class:`StoreLoadError`."""
    try:
        return pickle.loads(blob)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a class's __setstate__ is user code
        raise StoreLoadError(f"the stored value could not be loaded: {describe(exc, 500)}") from None


def make_result(symbol: Any, status: ResultStatus, value: Any, error: BaseException | None, duration_ms: float,
                attempts: int) -> SymbolResult:
    """A result read back from the store (``from_store=True``)."""
    result = SymbolResult(symbol, status, value, error, duration_ms,
                          traceback=(error.traceback_text or None) if isinstance(error, StoredError) else None)
    result.attempts = attempts
    result.from_store = True
    return result


def decode(row: tuple[Any, ...]) -> SymbolResult:
    """The result of a row of :data:`READ_COLUMNS`. Never raises: a row that cannot be read back is that
    symbol's ERROR, with a :class:`StoreLoadError` saying why."""
    k = row[0]
    symbol: Any = shown_key(k) if isinstance(k, str) else k
    try:
        _, status_text, symbol_blob, value_blob, value_note, error_type, error_message, error_traceback, \
            duration_ms, attempts = row
        if symbol_blob is not None:
            try:
                symbol = load_value(symbol_blob)
            except StoreLoadError:
                pass  # read back as its key
        status = _STATUS_BACK[status_text]
        duration, tries = float(duration_ms), int(attempts)
        value: Any = None
        error: BaseException | None = None
        if status is ResultStatus.SUCCESS:
            value = NotStored(value_note) if value_note is not None else load_value(value_blob)
        elif error_type is not None:
            error = StoredError(error_type, error_message or "", error_traceback or "")
        return make_result(symbol, status, value, error, duration, tries)
    except StoreLoadError as exc:
        return make_result(symbol, ResultStatus.ERROR, None, exc, 0.0, 1)
    except Exception as exc:  # a damaged row (an unknown status, a value of the wrong type)
        error = StoreLoadError(f"the stored result could not be loaded: {describe(exc, 500)}")
        return make_result(symbol, ResultStatus.ERROR, None, error, 0.0, 1)


def _error_text(error: BaseException, formatted: str | None = None) -> tuple[str, str, str]:
    type_name = qualified_type_name(error)
    try:
        message = safe_str(str(error))  # lone surrogates (which SQLite refuses) become U+FFFD
    except BaseException:  # an exception's __str__ is user code
        message = f"<{type_name} whose str() failed>"
    try:
        text = formatted if formatted is not None else format_text(error)  # ERROR results carry it
    except Exception:  # pragma: no cover - format_text never raises
        text = ""
    return type_name, message[:_MAX_TEXT], safe_str(text)[-_MAX_TEXT:]


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """How many rows one INSERT may carry (SQLite's limit on ``?`` parameters: 32,766 since 3.32, 999
    before), so that a commit of ~1,000 results is one statement where SQLite allows it."""
    try:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - Python < 3.11
        limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return max(1, min(2048, limit // len(COLUMNS)))


@functools.lru_cache(maxsize=8)
def _upsert(rows: int) -> str:
    values = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    return _UPSERT.replace(f"VALUES {values}", "VALUES " + ", ".join([values] * rows), 1)


def write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with as few statements as possible (inside the caller's transaction)."""
    per = _rows_per_statement(conn)
    full = len(rows) - len(rows) % per
    if full:
        statement = _upsert(per)
        for start in range(0, full, per):
            conn.execute(statement, [value for row in rows[start:start + per] for value in row])
    if full < len(rows):
        rest = rows[full:]
        conn.execute(_upsert(len(rest)), [value for row in rest for value in row])
