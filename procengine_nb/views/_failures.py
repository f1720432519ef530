"""Failures as they happen: the latest few, and counts grouped by exception type and message.

The batch hands each failed :class:`~procengine_nb.SymbolResult` to the views (``view.failed(result)``)
as it happens. A :class:`FailureLog` keeps what a view shows of them in bounded memory, whatever the
number of failures: the ``latest`` few (symbol, type, message) and counts per ``(type, message)``
group ("37 x ConnectionError: 429"), each with the traceback of its latest failure (bounded text, so a
view can open a group to it). Messages that differ per symbol would make one group each, so after
``max_groups`` distinct groups further new messages are counted under their type alone.
Everything stored is raw user data: views pass it through ``clean_text``/``html_text``.

>>> from procengine_nb.models import ResultStatus, SymbolResult
>>> log = FailureLog(latest=2)
>>> for i in range(3):
...     log.record(SymbolResult(f"S{i}", ResultStatus.ERROR, error=ConnectionError("429")))
>>> log.record(SymbolResult("S9", ResultStatus.ERROR, error=KeyError("x")))
>>> [(g.count, g.kind, g.message) for g in log.groups()]
[(3, 'ConnectionError', '429'), (1, 'KeyError', "'x'")]
>>> [f.symbol for f in log.latest()]
['S9', 'S2']
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, NamedTuple

from procengine_nb._validation import check_int
from procengine_nb.views._format import describe_error, safe_str, truncate

__all__ = ["Failure", "FailureGroup", "FailureLog"]

_MESSAGE_KEY = 200  # characters of a message that tell two groups apart
TRACEBACK_LIMIT = 4000
"""Characters of a group's latest traceback that are kept (its tail: the last lines say what failed)."""


def bound_traceback(text: object, limit: int = TRACEBACK_LIMIT) -> str | None:
    """``text`` (a formatted traceback) cut to its last ``limit`` characters, starting at a line;
    None when there is none.

    >>> bound_traceback("Traceback:\\n" + "  line\\n" * 3 + "ValueError: x", 24)
    '…\\n  line\\nValueError: x'
    """
    if not isinstance(text, str) or not text:
        return None
    if len(text) <= limit:
        return text
    tail = text[-(limit - 2):]
    newline = tail.find("\n")
    return "…\n" + (tail[newline + 1:] if 0 <= newline < len(tail) - 1 else tail)


class Failure(NamedTuple):
    """One failed symbol as shown: raw ``symbol`` text, exception type name and message."""

    symbol: str
    kind: str
    message: str


class FailureGroup(NamedTuple):
    """``count`` failures of type ``kind`` with ``message`` (None: several messages of that type), and the
    traceback of the latest one (raw text as the result holds it, None if it had none; views show its
    last ``TRACEBACK_LIMIT`` characters, see :func:`bound_traceback`)."""

    count: int
    kind: str
    message: str | None
    traceback: str | None = None


class FailureLog:
    """The latest ``latest`` failures and up to ``max_groups`` counted groups; thread-safe, O(1) a record."""

    def __init__(self, *, latest: int = 5, max_groups: int = 50) -> None:
        check_int(latest, "latest", minimum=0)
        check_int(max_groups, "max_groups", minimum=0)
        self._lock = threading.Lock()
        self._latest: deque[Failure] = deque(maxlen=latest)
        self._groups: dict[tuple[str, str | None], int] = {}
        self._tracebacks: dict[tuple[str, str | None], str] = {}
        self._max_groups = max_groups
        self.total = 0
        """How many failures were recorded."""

    def record(self, result: Any) -> None:
        """Count one failed result (anything with ``symbol`` and ``error``)."""
        kind, message = describe_error(getattr(result, "error", None), 4096)  # a 5 MB message costs no more
        if not kind:
            kind = safe_str(getattr(getattr(result, "status", None), "value", "error"))
        failure = Failure(safe_str(getattr(result, "symbol", "?"), 500), kind, truncate(message, 500))
        key: tuple[str, str | None] = (kind, truncate(message, _MESSAGE_KEY))
        trace = getattr(result, "traceback", None)
        with self._lock:
            self.total += 1
            self._latest.append(failure)
            if not (key in self._groups or len(self._groups) < self._max_groups):
                key = (kind, None)
            self._groups[key] = self._groups.get(key, 0) + 1
            if trace:
                self._tracebacks[key] = trace  # bounded when a view asks for it (O(1) here)

    @property
    def latest_size(self) -> int:
        """How many of the latest failures are kept."""
        return self._latest.maxlen or 0

    def latest(self) -> list[Failure]:
        """The most recent failures, newest first."""
        with self._lock:
            return list(reversed(self._latest))

    def groups(self, limit: int | None = None) -> list[FailureGroup]:
        """The groups, largest first (ties: first seen first), at most ``limit`` of them."""
        with self._lock:
            items = list(self._groups.items())
            traces = dict(self._tracebacks)
        order = sorted(range(len(items)), key=lambda i: -items[i][1])
        if limit is not None:
            order = order[:limit]
        return [FailureGroup(items[i][1], items[i][0][0], items[i][0][1], traces.get(items[i][0])) for i in order]

    def __len__(self) -> int:
        return self.total
