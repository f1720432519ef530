"""Keep what an exception says, drop what it holds: the frames of its traceback.

A live ``__traceback__`` keeps every frame of the failed call alive, and with them all their locals
(a failed symbol whose processor held 10 MB keeps 10 MB per ERROR result). The engine keeps an ERROR
result's exception object (its type, message and attributes) and its formatted traceback as text
(``SymbolResult.traceback``), and cuts the frames off — of the exception and of every exception it
chains to (``__cause__``, ``__context__``, the members of an exception group).

>>> def fail():
...     big = bytearray(10)
...     raise ValueError("no data")
>>> try:
...     fail()
... except ValueError as exc:
...     text = detach(exc)
...     error = exc
>>> error.__traceback__ is None, text.splitlines()[-1]
(True, 'ValueError: no data')
"""

from __future__ import annotations

import builtins
import traceback

from procengine_nb._safe import describe, safe_str

__all__ = ["MAX_TRACEBACK_CHARS", "detach", "format_text", "release"]

_GROUP: type | None = getattr(builtins, "BaseExceptionGroup", None)  # Python >= 3.11

MAX_TRACEBACK_CHARS = 64_000
"""A formatted traceback longer than this keeps its head and its tail (the last lines say what failed)."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it chains to, each once (chains may loop)."""
    seen: dict[int, BaseException] = {}
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen[id(current)] = current
        for name in ("__cause__", "__context__"):
            try:
                linked = getattr(current, name)
            except KeyboardInterrupt:
                raise
            except BaseException:  # a hostile exception whose chain cannot be read: the chain ends here
                continue
            if isinstance(linked, BaseException):
                stack.append(linked)
        if _GROUP is not None and isinstance(current, _GROUP):
            try:
                stack.extend(m for m in current.exceptions if isinstance(m, BaseException))
            except KeyboardInterrupt:
                raise
            except BaseException:  # pragma: no cover - a group subclass with a hostile ``exceptions``
                pass
    return list(seen.values())


def release(exc: BaseException) -> None:
    """Drop the traceback (and so the frames and their locals) of ``exc`` and of all it chains to."""
    for current in _chain(exc):
        try:
            current.__traceback__ = None
        except KeyboardInterrupt:
            raise
        except BaseException:  # an exception type that refuses (none in CPython; a hostile subclass)
            pass


def format_text(exc: BaseException) -> str:
    """The traceback of ``exc`` as ``traceback.format_exception`` prints it (never raises; lone
    surrogates become U+FFFD; at most :data:`MAX_TRACEBACK_CHARS` characters)."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except KeyboardInterrupt:
        raise
    except BaseException:  # a hostile exception that even the traceback module cannot print
        text = describe(exc) + "\n"
    text = safe_str(text)
    if len(text) > MAX_TRACEBACK_CHARS:
        half = MAX_TRACEBACK_CHARS // 2
        text = f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
    return text


def detach(exc: BaseException) -> str:
    """Format the traceback of ``exc`` (see :func:`format_text`), then :func:`release` its frames."""
    text = format_text(exc)
    release(exc)
    return text
