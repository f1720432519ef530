"""Keep log records off a live terminal line: each record on its own line, the line redrawn below it.

A progress line redrawn in place (``\\r``) has no newline at its end, so a log record written to the
same terminal meanwhile is glued onto it ("| Runningworker_3 ..."). While a line is shown,
:class:`LogLineGuard` points the ``logging.StreamHandler``\\ s that write to that terminal (the root
logger's, every named logger's, and ``logging.lastResort``) at a proxy stream: it erases the line,
lets the record through, then redraws the line below it — what tqdm's ``logging_redirect_tqdm`` and
rich's ``RichHandler`` do. :meth:`LogLineGuard.remove` puts the handlers' streams back.
Handlers added while the line is shown are not covered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["LogLineGuard", "same_terminal"]


def same_terminal(a: Any, b: Any) -> bool:
    """True when streams ``a`` and ``b`` are the same object or the same open terminal."""
    if a is b:
        return True
    try:
        if not (a.isatty() and b.isatty()):
            return False
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except Exception:  # no fileno (StringIO), closed, ...: not the same terminal
        return False


class _AroundLine:
    """A stream proxy: every write goes through ``write_around(target, text)``."""

    def __init__(self, target: TextIO, write_around: Callable[[TextIO, str], int]) -> None:
        self._target = target
        self._write_around = write_around

    def write(self, text: str) -> int:
        return self._write_around(self._target, text)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class LogLineGuard:
    """Wraps the streams of the logging handlers that write to ``stream``'s terminal.

    ``write_around(target, text)`` is the view's: erase the line, write ``text`` to ``target``,
    redraw the line (under the view's lock).
    """

    def __init__(self, stream: TextIO, write_around: Callable[[TextIO, str], int]) -> None:
        self._stream = stream
        self._write_around = write_around
        self._swapped: list[tuple[logging.StreamHandler[Any], _AroundLine, Any]] = []
        self._last_resort: tuple[logging.Handler | None, logging.Handler] | None = None

    def install(self) -> None:
        """Point the matching handlers at the proxy (once)."""
        if self._swapped or self._last_resort is not None:
            return
        for handler in _stream_handlers():
            if handler is logging.lastResort:
                continue
            target = getattr(handler, "stream", None)
            if target is None or (isinstance(target, _AroundLine) and target._write_around is self._write_around):
                continue
            if same_terminal(target, self._stream):
                proxy = _AroundLine(target, self._write_around)
                # a plain assignment, not setStream(): that takes the handler's lock, and a record being
                # emitted holds it while waiting for the view's lock (the guard runs under the latter)
                handler.stream = proxy  # type: ignore[assignment]
                self._swapped.append((handler, proxy, target))
        last = logging.lastResort
        if last is not None and same_terminal(getattr(last, "stream", None), self._stream):
            # lastResort's stream is a read-only property (sys.stderr): swap the handler itself
            replacement = logging.StreamHandler(_AroundLine(last.stream, self._write_around))  # type: ignore[attr-defined]
            replacement.setLevel(last.level)
            logging.lastResort = replacement
            self._last_resort = (last, replacement)

    def remove(self) -> None:
        """Give the handlers their streams back (those still pointing at this guard's proxy)."""
        swapped, self._swapped = self._swapped, []
        for handler, proxy, target in swapped:
            if getattr(handler, "stream", None) is proxy:
                handler.stream = target
        if self._last_resort is not None:
            original, replacement = self._last_resort
            self._last_resort = None
            if logging.lastResort is replacement:
                logging.lastResort = original


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    seen: set[int] = set()
    found = []
    for lg in loggers:
        for handler in list(lg.handlers):
            if isinstance(handler, logging.StreamHandler) and id(handler) not in seen:
                seen.add(id(handler))
                found.append(handler)
    return found
