"""Failures as they happen: the latest few, and counts grouped by exception type and message.

The batch hands each failed :class:`~procengine_nb.SymbolResult` to the views (``view.failed(result)``)
as it happens. A :class:`FailureLog` keeps what a view shows of them in bounded memory, whatever the
number of failures: the ``latest`` few (symbol, type, message) and counts per ``(type, message)``
group ("37 x ConnectionError: 429"). Messages that differ per symbol would make one group each, so
after ``max_groups`` distinct groups further new messages are counted under their type alone.
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


class Failure(NamedTuple):
    """One failed symbol as shown: raw ``symbol`` text, exception type name and message."""

    symbol: str
    kind: str
    message: str


class FailureGroup(NamedTuple):
    """``count`` failures of type ``kind`` with ``message`` (None: several messages of that type)."""

    count: int
    kind: str
    message: str | None


class FailureLog:
    """The latest ``latest`` failures and up to ``max_groups`` counted groups; thread-safe, O(1) a record."""

    def __init__(self, *, latest: int = 5, max_groups: int = 50) -> None:
        check_int(latest, "latest", minimum=0)
        check_int(max_groups, "max_groups", minimum=0)
        self._lock = threading.Lock()
        self._latest: deque[Failure] = deque(maxlen=latest)
        self._groups: dict[tuple[str, str | None], int] = {}
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
        with self._lock:
            self.total += 1
            self._latest.append(failure)
            if key in self._groups or len(self._groups) < self._max_groups:
                self._groups[key] = self._groups.get(key, 0) + 1
            else:
                other = (kind, None)
                self._groups[other] = self._groups.get(other, 0) + 1

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
        order = sorted(range(len(items)), key=lambda i: -items[i][1])
        groups = [FailureGroup(items[i][1], items[i][0][0], items[i][0][1]) for i in order]
        return groups if limit is None else groups[:limit]

    def __len__(self) -> int:
        return self.total
