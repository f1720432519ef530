"""Jobs and results: what goes into a batch and what comes out of it.

Invariant of every :class:`BatchResult`: the symbols of its results plus its ``unprocessed`` symbols
are exactly the job's symbols (as a multiset) — nothing lost, nothing counted twice.

>>> r = BatchResult([SymbolResult("A", ResultStatus.SUCCESS, value=1)], unprocessed=["B"])
>>> len(r), r.cancelled, list(r.unprocessed)
(1, False, ['B'])
"""

from __future__ import annotations

import enum
import itertools
import numbers
import pickle
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from procengine_nb._safe import describe, safe_repr, safe_str, type_name
from procengine_nb._tracebacks import format_text
from procengine_nb.cancellation import ProcessingCancelledException
from procengine_nb.progress import ProcessingProgress

__all__ = [
    "BatchResult",
    "ErrorStandIn",
    "JobType",
    "ProcessingJob",
    "ResultStatus",
    "SymbolResult",
    "UnprocessedView",
    "coerce_symbols",
]


class JobType(enum.Enum):
    """What kind of batch a job is; informational (shown by views, kept in results)."""

    GENERIC = "generic"
    FETCH = "fetch"
    ANALYSIS = "analysis"
    EXPORT = "export"
    RETRY = "retry"
    """A batch of symbols that failed before (made by ``ProcessingEngine.retry``)."""
    RESUME = "resume"
    """A batch of symbols that were never processed (made by ``ProcessingEngine.resume``)."""


def _refuse_ambiguous(symbols: object, name: str) -> None:
    """Raise a TypeError for inputs whose iteration is not a batch of symbols (saying what to pass)."""
    if symbols is None:
        raise TypeError(f"{name} must be an iterable of symbols, not None")
    if isinstance(symbols, (str, bytes, bytearray, memoryview)):
        kind = type_name(symbols)
        hint = f"did you mean [{safe_repr(symbols, 80)}]?" if isinstance(symbols, (str, bytes)) else \
            "pass a list of symbols; to process its bytes one by one, pass list(...)"
        raise TypeError(f"{name} must be an iterable of symbols, not a single {kind} ({hint})")
    kind = _dataframe_kind(type(symbols))
    if kind == "pandas":
        raise TypeError(
            f"{name} is a pandas DataFrame, which iterates over its column labels: pass df.index (the row "
            "labels), df.itertuples() (one namedtuple a row), df.to_dict(\"records\") (one dict a row) or "
            "a column, df[\"name\"]"
        )
    if kind == "polars":
        raise TypeError(
            f"{name} is a polars DataFrame, which iterates over its columns: pass df.iter_rows(named=True) "
            "(one dict a row), df.rows() or a column, df[\"name\"]"
        )
    if isinstance(symbols, Mapping):
        raise TypeError(
            f"{name} must be an iterable of symbols, not a {type_name(symbols)} (a mapping): pass list(d) "
            "for its keys, d.values() or d.items()"
        )


def _dataframe_kind(cls: type) -> str | None:
    """'pandas' or 'polars' for a DataFrame class (or a subclass), without importing either."""
    for klass in cls.__mro__:
        if klass.__name__ == "DataFrame":
            module = getattr(klass, "__module__", "") or ""
            if module == "pandas" or module.startswith("pandas."):
                return "pandas"
            if module == "polars" or module.startswith("polars."):
                return "polars"
    return None


def coerce_symbols(symbols: object, name: str = "symbols") -> Sequence[Any] | Iterator[Any]:
    """Return ``symbols`` the way a batch reads them, or raise a TypeError that says what to pass.

    - a ``tuple`` or ``range``: used as it is (no copy);
    - anything else with ``len()`` (a list, a set, a pandas Series or Index, a NumPy array, dict views):
      copied into a tuple once, so changing it while the batch runs cannot change the batch;
    - anything without ``len()`` (an iterator, a generator, a file): an iterator, drawn lazily by the
      batch (see ``ProcessingEngine.process_batch``);
    - refused: ``None``, a ``str``/``bytes``/``bytearray``/``memoryview`` (one value, not a batch), a
      mapping (``dict``: pass ``list(d)``, ``d.values()`` or ``d.items()``) and a pandas or polars
      ``DataFrame`` (it iterates over its columns: pass ``df.index``, ``df.itertuples()``,
      ``df.to_dict("records")``).

    >>> coerce_symbols(["A", "B"])
    ('A', 'B')
    >>> coerce_symbols({"A": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: symbols must be an iterable of symbols, not a dict (a mapping): pass list(d) for its keys, ...
    """
    _refuse_ambiguous(symbols, name)
    if isinstance(symbols, (tuple, range)):
        return symbols
    if isinstance(symbols, Iterator):
        return symbols
    if hasattr(type(symbols), "__len__"):
        try:
            return tuple(symbols)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(f"{name} must be an iterable of symbols, not {type_name(symbols)}") from None
    try:
        return iter(symbols)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of symbols, not {type_name(symbols)}") from None


@dataclass(frozen=True)
class ProcessingJob:
    """A batch of symbols to process, with an id, a name and a :class:`JobType`.

    >>> job = ProcessingJob(["AAPL", "MSFT"], name="prices")
    >>> job.symbols, job.job_type
    (('AAPL', 'MSFT'), <JobType.GENERIC: 'generic'>)
    """

    symbols: Sequence[Any] | Iterator[Any]
    """The symbols in input order (any objects; shown with ``str()``): a tuple (or the ``range`` given),
    or, for an input without ``len()``, the iterator the batch draws from lazily (see ``lazy``)."""
    job_type: JobType = JobType.GENERIC
    """What kind of batch this is."""
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """A unique id (random unless given)."""
    name: str | None = None
    """A human-readable name shown by views (defaults to the job type)."""
    total: int | None = None
    """How many symbols a lazy input will yield, when you know (a hint for the percentage and ETA);
    None: unknown. For an input with ``len()`` it must equal that length."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", coerce_symbols(self.symbols))
        if self.total is not None:
            if isinstance(self.total, bool) or not isinstance(self.total, int):
                raise TypeError(f"total must be an int or None, not {type_name(self.total)}")
            object.__setattr__(self, "total", int.__int__(self.total))  # an int subclass's methods stay out
            if self.total < 0:
                raise ValueError(f"total must be >= 0, got {self.total}")
            if not self.lazy and self.total != len(self.symbols):  # type: ignore[arg-type]
                raise ValueError(f"total={self.total} but the input has {len(self.symbols)} symbols "  # type: ignore[arg-type]
                                 "(total= is a hint for inputs without len(), such as generators)")
        if not isinstance(self.job_type, JobType):
            raise TypeError(f"job_type must be a JobType, not {type_name(self.job_type)}")
        if not isinstance(self.job_id, str):
            raise TypeError(f"job_id must be a str, not {type_name(self.job_id)}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, not {type_name(self.name)}")
        for attribute in ("job_id", "name"):  # a str subclass's own methods stay out of every message
            value = getattr(self, attribute)
            if value is not None and type(value) is not str:
                object.__setattr__(self, attribute, str.__str__(value))
        if not self.job_id:
            raise ValueError("job_id must not be empty")

    @property
    def display_name(self) -> str:
        """``name`` or, when unset, a name made from the job type."""
        return self.name if self.name else f"{self.job_type.value} job"

    @property
    def lazy(self) -> bool:
        """True when the symbols are an iterator drawn as the batch runs (an input without ``len()``)."""
        return isinstance(self.symbols, Iterator)

    def __len__(self) -> int:
        if isinstance(self.symbols, Iterator):
            raise TypeError("a lazy job (an iterator of symbols) has no len(); job.total is its hint")
        return len(self.symbols)

    def __repr__(self) -> str:
        # never raises and stays short, however many symbols and whatever they are (a lazy input is not
        # drawn: its iterator's type is shown)
        if isinstance(self.symbols, Iterator):
            symbols = f"<lazy {type_name(self.symbols)}>"
        else:
            n = len(self.symbols)
            shown = ", ".join(safe_repr(s, 80) for s in self.symbols[:5]) + (f", ... ({n - 5} more)" if n > 5 else "")
            symbols = f"({shown})"
        total = f", total={self.total}" if self.total is not None else ""
        return (f"ProcessingJob(symbols={symbols}, job_type={self.job_type}, job_id={safe_repr(self.job_id, 80)}, "
                f"name={safe_repr(self.name, 80)}{total})")

    def __reduce__(self) -> Any:
        # a lazy job travels without its iterator (a generator cannot be pickled, and what is left in it
        # belongs to this process): it arrives as a used-up lazy job with the same id, name and total
        symbols = iter(()) if isinstance(self.symbols, Iterator) else self.symbols
        return (ProcessingJob, (symbols, self.job_type, self.job_id, self.name, self.total))


class ResultStatus(enum.Enum):
    """How one symbol ended."""

    SUCCESS = "success"
    """The processor returned a value."""
    ERROR = "error"
    """The processor raised (the exception is in ``SymbolResult.error``)."""
    CANCELLED = "cancelled"
    """The processor started, then stopped cooperatively by raising ProcessingCancelledException."""


class ErrorStandIn(Exception):
    """What a pickled result holds in place of an exception that could not make the trip (it could
    not be pickled, e.g. it holds a lock, or not be unpickled, e.g. its ``__init__`` needs arguments
    or its class is gone): the original type's name, its message and its traceback text.

    >>> error = ErrorStandIn("mylib.QuotaError", "quota exceeded")
    >>> str(error), error.type_name
    ('mylib.QuotaError: quota exceeded', 'mylib.QuotaError')
    """

    def __init__(self, type_name: str, message: str = "", traceback: str | None = None) -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        """The qualified name of the original exception's type."""
        self.message = message
        """``str()`` of the original exception."""
        self.traceback = traceback
        """The original exception's formatted traceback, when it was known."""

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


def _qualified_name(error: BaseException) -> str:
    kind = type(error)
    module = safe_str(getattr(kind, "__module__", "") or "")
    name = safe_str(getattr(kind, "__qualname__", None) or type_name(error))
    return name if module in ("", "builtins") else f"{module}.{name}"


def _pack_error(error: BaseException | None, trace: str | None) -> tuple[Any, ...] | None:
    """An exception as a pickled result carries it: its own pickle (None when it has none) plus what a
    stand-in needs if that pickle does not load (type name, message, traceback text)."""
    if error is None:
        return None
    if _round_trips(error):  # the common case (a builtin exception with a plain message): as it is
        return error  # type: ignore[return-value]
    try:
        blob: bytes | None = pickle.dumps(error, pickle.HIGHEST_PROTOCOL)
    except KeyboardInterrupt:
        raise
    except BaseException:  # e.g. it holds a lock
        blob = None
    if trace is None and blob is None:
        trace = format_text(error)
    return (blob, _qualified_name(error), safe_str(error), trace)


_PLAIN_ARGS = frozenset({str, int, float, bool, type(None)})


def _round_trips(error: BaseException) -> bool:
    """True for what surely pickles and unpickles as it is: a builtin exception type whose ``args`` are
    plain values and that holds no other attribute."""
    kind = type(error)
    if kind.__module__ != "builtins":
        return False
    try:
        return (all(type(arg) in _PLAIN_ARGS for arg in error.args)
                and not getattr(error, "__dict__", None) and not isinstance(error, OSError))
    except KeyboardInterrupt:
        raise
    except BaseException:
        return False


def _unpack_error(packed: Any) -> BaseException | None:
    """The exception back, or its :class:`ErrorStandIn` when it does not load here: it fails alone."""
    if packed is None or isinstance(packed, BaseException):  # (None, or an exception pickled as it is)
        return packed
    blob, name, message, trace = packed
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except KeyboardInterrupt:
            raise
        except BaseException:  # e.g. an __init__ that needs arguments, a class that is gone
            pass
        else:
            if isinstance(error, BaseException):
                return error
    return ErrorStandIn(name, message, trace)


@dataclass(slots=True)
class SymbolResult:
    """The outcome of processing one symbol.

    >>> SymbolResult("AAPL", ResultStatus.ERROR, error=ValueError("no data")).ok
    False
    """

    symbol: Any
    """The input symbol."""
    status: ResultStatus
    """SUCCESS, ERROR or CANCELLED."""
    value: Any = None
    """What the processor returned (None unless SUCCESS)."""
    error: BaseException | None = None
    """The exception the processor raised (None for SUCCESS)."""
    duration_ms: float = 0.0
    """Time spent in the processor for this symbol, in milliseconds."""
    from_store: bool = False
    """True when the result was read from a ``store=`` (a rerun that did not run this symbol again)."""
    traceback: str | None = None
    """The formatted traceback of ``error`` (ERROR results). The exception object is kept without its
    frames (``error.__traceback__`` is None), so a failed call's locals are not kept alive."""
    attempts: int = 1
    """How many calls of the processor this outcome took (more than 1 when ``retries=`` retried it)."""

    @property
    def ok(self) -> bool:
        """True for SUCCESS."""
        return self.status is ResultStatus.SUCCESS

    def __reduce__(self) -> Any:
        # the exception travels in a pickle of its own: one that cannot make the trip becomes an
        # ErrorStandIn (type name, message, traceback text) and costs nothing else of the result
        return (_rebuild_symbol_result, (self.symbol, self.status, self.value, _pack_error(self.error, self.traceback),
                                         self.duration_ms, self.from_store, self.traceback, self.attempts))

    def __copy__(self) -> SymbolResult:
        return SymbolResult(self.symbol, self.status, self.value, self.error, self.duration_ms, self.from_store,
                            self.traceback, self.attempts)

    def __repr__(self) -> str:
        # never raises and stays short, whatever the symbol, value or exception
        error = "" if self.error is None else f", error={safe_repr(self.error, 200)}"
        value = "" if self.value is None else f", value={safe_repr(self.value, 200)}"
        return (f"SymbolResult(symbol={safe_repr(self.symbol, 200)}, status={self.status}{value}{error}, "
                f"duration_ms={self.duration_ms!r})")


class UnprocessedView(Sequence[Any]):
    """A read-only, input-ordered view of the symbols a batch never completed.

    It is the in-flight symbols at the moment of a cancel (a few, at most the window) followed by the
    tail of the input that was never handed out — a view on the job's tuple, not a copy, so building it
    costs O(window) even for a million symbols.
    """

    __slots__ = ("_source", "_head", "_tail_start")

    def __init__(self, source: Sequence[Any], head_indices: Iterable[int] = (), tail_start: int | None = None):
        self._source = source
        self._head = tuple(sorted(head_indices))
        self._tail_start = len(source) if tail_start is None else tail_start
        if not 0 <= self._tail_start <= len(source):
            raise ValueError("tail_start is out of range")
        if self._head and (self._head[0] < 0 or self._head[-1] >= self._tail_start):
            raise ValueError("head indices must lie before tail_start")

    @property
    def indices(self) -> Iterator[int]:
        """Positions of the unprocessed symbols in the job's input, ascending."""
        return itertools.chain(self._head, range(self._tail_start, len(self._source)))

    def __len__(self) -> int:
        return len(self._head) + len(self._source) - self._tail_start

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("unprocessed index out of range")
        head = len(self._head)
        if index < head:
            return self._source[self._head[index]]
        return self._source[self._tail_start + index - head]

    def __iter__(self) -> Iterator[Any]:
        source = self._source
        head = (source[i] for i in self._head)
        if self._tail_start >= len(source):
            return head
        return itertools.chain(head, itertools.islice(source, self._tail_start, None))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (UnprocessedView, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = len(self)
        shown = ", ".join(safe_repr(s, 200) for s in itertools.islice(self, 5))
        more = f", ... ({n - 5} more)" if n > 5 else ""
        return f"UnprocessedView([{shown}{more}])"


class BatchResult(list[SymbolResult]):
    """The results of a batch, in completion order: a plain ``list`` of :class:`SymbolResult`.

    Besides the list: ``cancelled`` (the batch was stopped), ``cancel_reason``, ``unprocessed`` (the
    symbols never completed, in input order), ``progress`` (the final snapshot), ``errors`` (the
    failed results), ``job``, and for a lazy input ``input_exhausted`` and ``input_error``.

    >>> r = BatchResult([SymbolResult("A", ResultStatus.ERROR, error=KeyError("A"))])
    >>> [e.symbol for e in r.errors]
    ['A']
    """

    def __init__(
        self,
        results: Iterable[SymbolResult] = (),
        *,
        unprocessed: Sequence[Any] = (),
        progress: ProcessingProgress | None = None,
        cancelled: bool = False,
        cancel_reason: str | None = None,
        job: ProcessingJob | None = None,
        input_exhausted: bool = True,
        input_error: BaseException | None = None,
    ) -> None:
        super().__init__(results)
        for i, item in enumerate(self):
            if not isinstance(item, SymbolResult):
                raise TypeError(f"results[{i}] must be a SymbolResult, not {type_name(item)}")
        if not isinstance(unprocessed, Sequence) or isinstance(unprocessed, (str, bytes)):
            raise TypeError(f"unprocessed must be a sequence of symbols, not {type_name(unprocessed)}")
        self.cancelled = cancelled
        self.cancel_reason = cancel_reason
        self.unprocessed: Sequence[Any] = unprocessed
        self.job = job
        self.input_exhausted = input_exhausted
        """False when a lazy input (an iterator) still holds symbols the batch never drew: they stay in
        the iterator, and ``ProcessingEngine.resume`` continues with ``unprocessed`` and then them."""
        self.input_error = input_error
        """The exception a lazy input raised while it was drawn (the batch then ended cancelled), else None."""
        self.progress = progress if progress is not None else ProcessingProgress(
            total_symbols=len(self) + len(unprocessed),
            completed_symbols=len(self),
            errors_count=sum(1 for r in self if r.status is ResultStatus.ERROR),
            estimated_remaining_ms=0,
            cancelled=cancelled,
            finished=True,
        )

    def raise_if_cancelled(self) -> BatchResult:
        """Return this result, or raise :class:`~procengine_nb.ProcessingCancelledException` carrying it
        (``partial_results``) when the batch was cancelled: for caller code that prefers an exception.

        >>> BatchResult(cancelled=True, cancel_reason="Stop").raise_if_cancelled()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        procengine_nb.cancellation.ProcessingCancelledException: the batch was cancelled (Stop): 0 of 0 processed...
        """
        if self.cancelled:
            reason = f" ({self.cancel_reason})" if self.cancel_reason else ""
            raise ProcessingCancelledException(
                f"the batch was cancelled{reason}: {self.summary()}", partial_results=self, reason=self.cancel_reason,
            )
        return self

    @property
    def errors(self) -> list[SymbolResult]:
        """The failed results (status ERROR), in completion order."""
        return [r for r in self if r.status is ResultStatus.ERROR]

    @property
    def successes(self) -> list[SymbolResult]:
        """The successful results, in completion order."""
        return [r for r in self if r.status is ResultStatus.SUCCESS]

    @property
    def cancelled_results(self) -> list[SymbolResult]:
        """Results of symbols that started and stopped cooperatively (status CANCELLED)."""
        return [r for r in self if r.status is ResultStatus.CANCELLED]

    @property
    def values(self) -> list[tuple[Any, Any]]:
        """``(symbol, value)`` pairs of the successful results, in completion order."""
        return [(r.symbol, r.value) for r in self if r.status is ResultStatus.SUCCESS]

    def counts(self) -> dict[str, int]:
        """How many symbols ended each way: success, error, cancelled, unprocessed."""
        counts = {status.value: 0 for status in ResultStatus}
        for r in self:
            counts[r.status.value] += 1
        counts["unprocessed"] = len(self.unprocessed)
        return counts

    def summary(self) -> str:
        """One deterministic line: ``12 of 20 processed: 10 ok, 2 failed, 8 not processed (cancelled)``."""
        c = self.counts()
        total = len(self) + c["unprocessed"]
        parts = [f"{c['success']} ok", f"{c['error']} failed"]
        if c["cancelled"]:
            parts.append(f"{c['cancelled']} stopped")
        if c["unprocessed"]:
            parts.append(f"{c['unprocessed']} not processed")
        state = " (cancelled)" if self.cancelled else ""
        return f"{len(self)} of {total} processed: {', '.join(parts)}{state}"

    def to_records(self) -> list[dict[str, Any]]:
        """One dict a result (symbol, status, value, error, duration_ms), for tables and JSON."""
        return [
            {
                "symbol": r.symbol,
                "status": r.status.value,
                "value": r.value,
                "error": None if r.error is None else describe(r.error),
                "duration_ms": r.duration_ms,
            }
            for r in self
        ]

    def to_dataframe(self) -> Any:
        """The results as a pandas DataFrame (needs pandas; see ``to_records`` otherwise).

        Values stay exact: a ``value`` (or ``symbol``) column of ints is ``int64``, or the nullable
        ``Int64`` when some symbols have no value (they failed), never ``float64`` (which would turn
        1700000000123456790 into 1.7000000001234568e18); ints beyond 64 bits, or ints mixed with
        floats, keep an ``object`` column of the values themselves.
        """
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe() needs pandas: pip install pandas") from exc
        frame = pd.DataFrame(self.to_records(), columns=["symbol", "status", "value", "error", "duration_ms"])
        for column in ("symbol", "value"):
            frame[column] = _exact_column(pd, [getattr(r, column) for r in self])
        return frame

    def __repr__(self) -> str:
        return f"<BatchResult {self.summary()}>"

    # a list's copy/slice helpers would drop the extra attributes silently; keep them explicit
    def __reduce__(self) -> Any:
        return (
            _rebuild_batch_result,
            (list(self), list(self.unprocessed), self.progress, self.cancelled, self.cancel_reason, self.job,
             self.input_exhausted, _pack_error(self.input_error, None)),
        )


_INT64 = (-(2**63), 2**63 - 1)


def _exact_column(pd: Any, values: list[Any]) -> Any:
    """A pandas column holding exactly ``values``: what pandas infers, unless that is a float column
    holding ints (ints with missing values, ints with floats), which would round large ints."""
    column = pd.Series(values, dtype=object)
    inferred = column.infer_objects()
    if inferred.dtype.kind != "f" or not any(_is_int(v) for v in values):
        return inferred
    low, high = _INT64
    if all(v is None or (_is_int(v) and low <= int(v) <= high) for v in values):
        return pd.array([None if v is None else int(v) for v in values], dtype="Int64")  # ints and missing
    return column  # ints with floats, or beyond 64 bits: the values themselves


def _is_int(value: Any) -> bool:
    """An int, or an integer of another kind (numpy's), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _rebuild_batch_result(results, unprocessed, progress, cancelled, cancel_reason, job,  # type: ignore[no-untyped-def]
                          input_exhausted=True, input_error=None) -> BatchResult:
    return BatchResult(
        results, unprocessed=unprocessed, progress=progress, cancelled=cancelled,
        cancel_reason=cancel_reason, job=job, input_exhausted=input_exhausted,
        input_error=_unpack_error(input_error),
    )


def _rebuild_symbol_result(symbol: Any, status: ResultStatus, value: Any, error: Any, duration_ms: float,
                           from_store: bool, traceback: str | None, attempts: int) -> SymbolResult:
    return SymbolResult(symbol, status, value, _unpack_error(error), duration_ms, from_store, traceback, attempts)
