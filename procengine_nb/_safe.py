"""Text of user objects that never raises: for logs, messages and views.

Symbols, exceptions and callbacks are user objects whose ``__str__``/``__repr__`` may raise, loop or return
text that cannot be encoded (a lone surrogate such as ``'\\ud800'`` breaks a Jupyter message). Every path
that turns one into text goes through here.

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

import re
from typing import Any

__all__ = ["describe", "safe_repr", "safe_str", "type_name"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def type_name(value: Any) -> str:
    """The name of ``value``'s type (never raises)."""
    try:
        name = type(value).__name__
        return _SURROGATE.sub("\ufffd", name) if type(name) is str else "object"
    except Exception:  # pragma: no cover - a metaclass that breaks __name__
        return "object"


def _placeholder(value: Any) -> str:
    return f"<unprintable {type_name(value)}>"


def _clean(text: Any, value: Any, limit: int | None = None) -> str:
    if type(text) is not str:  # a __str__ returning a str subclass whose methods are hostile
        try:
            text = str.__str__(text)
        except Exception:
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
    except Exception:
        return safe_repr(value, limit)


def safe_repr(value: Any, limit: int | None = None) -> str:
    """``repr(value)`` (cut to ``limit`` characters), else ``<unprintable T>``; never raises."""
    try:
        return _clean(repr(value), value, limit)
    except Exception:
        return _placeholder(value)


def describe(error: BaseException | None, limit: int | None = None) -> str:
    """``"Type: message"`` of an exception (just ``"Type"`` without a message; the message cut to
    ``limit`` characters); never raises."""
    if error is None:
        return ""
    name = type_name(error)
    message = safe_str(error, limit)
    return f"{name}: {message}" if message else name
