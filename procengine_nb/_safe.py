"""The one guard around what the batch thread calls that is not ours, and text of user objects that
never raises.

Symbols, exceptions and callbacks are user objects whose ``__str__``/``__repr__`` may raise, loop or return
text that cannot be encoded (a lone surrogate such as ``'\\ud800'`` breaks a Jupyter message). Every path
that turns one into text goes through here. Whatever a user object raises here (any ``BaseException``)
gives a placeholder; only ``KeyboardInterrupt`` goes through (the user's Ctrl-C, which the batch treats as
an interrupt).

:func:`guarded` calls user code (a callback, a view, ``retry_on``'s instance check) so that whatever it
raises costs a logged line at most; :func:`logger` is the engine's logging, which never raises either (a
handler that raises, or ``logging``'s own error report to a closed ``sys.stderr``, loses that line only).

>>> class Hostile:
...     def __str__(self): raise RuntimeError("no str")
...     def __repr__(self): raise RuntimeError("no repr")
>>> safe_str(Hostile())
'<unprintable Hostile>'
>>> safe_str("a\\ud800b")
'a\\ufffdb'
>>> describe(ValueError("bad"))
'ValueError: bad'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["GuardedLogger", "describe", "guarded", "logger", "safe_repr", "safe_str", "type_name"]

_T = TypeVar("_T")

_SURROGATE = re.compile("[\ud800-\udfff]")


def type_name(value: Any) -> str:
    """The name of ``value``'s type (never raises)."""
    try:
        name = type(value).__name__
        return _SURROGATE.sub("\ufffd", name) if type(name) is str else "object"
    except KeyboardInterrupt:
        raise
    except BaseException:  # pragma: no cover - a metaclass that breaks __name__
        return "object"


def _placeholder(value: Any) -> str:
    return f"<unprintable {type_name(value)}>"


def _clean(text: Any, value: Any, limit: int | None = None) -> str:
    if type(text) is not str:  # a __str__ returning a str subclass whose methods are hostile
        try:
            text = str.__str__(text)
        except KeyboardInterrupt:
            raise
        except BaseException:
            return _placeholder(value)
    if limit is not None and len(text) > limit:  # cut before cleaning: a 10 MB text costs no more
        text = text[: max(1, limit - 1)] + "…"
    return _SURROGATE.sub("\ufffd", text)


def safe_str(value: Any, limit: int | None = None) -> str:
    """``str(value)``, else ``repr(value)``, else ``<unprintable T>`` (cut to ``limit`` characters);
    lone surrogates become U+FFFD; never raises."""
    if type(value) is str:
        return _clean(value, value, limit)
    try:
        return _clean(str(value), value, limit)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return safe_repr(value, limit)


def safe_repr(value: Any, limit: int | None = None) -> str:
    """``repr(value)`` (cut to ``limit`` characters), else ``<unprintable T>``; never raises."""
    try:
        return _clean(repr(value), value, limit)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return _placeholder(value)


def describe(error: BaseException | None, limit: int | None = None) -> str:
    """``"Type: message"`` of an exception (just ``"Type"`` without a message; the message cut to
    ``limit`` characters); never raises."""
    if error is None:
        return ""
    name = type_name(error)
    message = safe_str(error, limit)
    return f"{name}: {message}" if message else name


def guarded(fn: Callable[..., _T], *args: Any, on_error: Callable[[BaseException], Any] | None = None,
            default: Any = None) -> _T | Any:
    """``fn(*args)``; if it raises anything but ``KeyboardInterrupt``, ``on_error(exc)`` (itself guarded:
    its own failure is dropped) and ``default`` is returned. A ``KeyboardInterrupt`` goes through.

    >>> guarded(int, "12"), guarded(int, "x", default=-1)
    (12, -1)
    """
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if on_error is not None:
            try:
                on_error(exc)
            except KeyboardInterrupt:
                raise
            except BaseException:  # the report failed too (e.g. logging to a closed sys.stderr): dropped
                pass
        return default


class GuardedLogger:
    """A :class:`logging.Logger` whose calls never raise: a handler that raises (``SystemExit``
    included), or ``logging`` reporting a handler's failure to a closed ``sys.stderr``, loses that line,
    never the batch. ``KeyboardInterrupt`` goes through. ``.logger`` is the logger itself.

    >>> log = logger("procengine_nb.doc")
    >>> log.debug("never raises: %s", "ok")
    """

    __slots__ = ("logger",)

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def _emit(self, level: int, msg: str, args: tuple[Any, ...], exc_info: Any = None) -> None:
        try:
            if self.logger.isEnabledFor(level):
                self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
        except KeyboardInterrupt:
            raise
        except BaseException:  # the log line is lost, nothing else
            pass

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._emit(level, msg, args)

    def debug(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        self._emit(logging.DEBUG, msg, args, exc_info)

    def info(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        self._emit(logging.INFO, msg, args, exc_info)

    def warning(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        self._emit(logging.WARNING, msg, args, exc_info)

    def error(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        self._emit(logging.ERROR, msg, args, exc_info)

    def exception(self, msg: str, *args: Any) -> None:
        """``error`` with the exception being handled (call from an ``except`` block)."""
        self._emit(logging.ERROR, msg, args, True)


def logger(name: str) -> GuardedLogger:
    """The engine's logger ``name``, guarded (see :class:`GuardedLogger`)."""
    return GuardedLogger(name)
