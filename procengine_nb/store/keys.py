"""What names a stored result: the batch's name and each symbol's key.

The default key is the symbol's type and ``str(symbol)``, so ``1``, ``"1"`` and ``Decimal("1")`` never
share a key; a ``str`` symbol is its own key (readable in the file, and what ``forget(name, keys)`` takes).
A ``key=`` function's ``str`` is used as it is. Every key and name goes through :func:`storable`.

>>> default_key("AAPL"), default_key(1), default_key(__import__("decimal").Decimal("1"))
('AAPL', '\\x00int:1', '\\x00decimal.Decimal:1')
>>> shown_key(default_key(1))
'1'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procengine_nb._safe import describe, safe_repr

__all__ = ["KeyFunction", "default_batch_name", "default_key", "make_key_function", "qualified_type_name",
           "shown_key", "shown_name", "storable", "unwrap"]

KeyFunction = Callable[[Any], str]
"""Turns a symbol into its key in the store (:func:`default_key` unless ``key=`` is given)."""

_ESCAPED = "\x00surrogates:"  # a text holding a lone surrogate, escaped one-to-one
_TYPED = "\x00"  # a key made of a type's name and str(symbol) (a str symbol never starts with it unescaped)


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


def shown_name(stored: str) -> str:
    """A batch name or key as the job had it (undoes :func:`storable`)."""
    if stored.startswith(_ESCAPED):
        return stored[len(_ESCAPED):].encode("ascii").decode("unicode_escape")
    return stored


def shown_key(stored: str) -> str:
    """The text of a key, without its type (what a symbol that could not be stored reads back as)."""
    text = shown_name(stored)
    if text.startswith(_TYPED):
        return text.partition(":")[2]
    return text


def qualified_type_name(value: Any) -> str:
    """``module.QualName`` of ``value``'s type (builtins without a module); never raises."""
    try:
        cls = type(value)
        qualname = cls.__qualname__
        module = cls.__module__
        if type(qualname) is not str:
            qualname = cls.__name__
        if type(module) is not str or module == "builtins":
            return qualname
        return f"{module}.{qualname}"
    except Exception:  # pragma: no cover - a metaclass that breaks its names
        return "object"


def default_key(symbol: Any) -> str:
    """The key of ``symbol`` when no ``key=`` is given: a ``str`` is its own key; any other symbol is
    keyed by its type's qualified name and ``str(symbol)``. A ``__str__`` that raises (anything) or returns
    a non-str is a ``ValueError`` naming the symbol; a str subclass's text is taken as a plain str."""
    if type(symbol) is str:
        return storable(_TYPED + "str:" + symbol if symbol.startswith(_TYPED) else symbol)
    try:
        text = str(symbol)
        if type(text) is not str:
            text = str.__str__(text)
    except BaseException as exc:  # a hostile __str__ costs its symbol, never the batch
        raise ValueError(f"a store keys each symbol by its type and str(symbol), which raised "
                         f"{describe(exc, 200)} for the symbol {safe_repr(symbol, 80)}: pass key=") from exc
    return storable(f"{_TYPED}{qualified_type_name(symbol)}:{text}")


def make_key_function(key: Callable[[Any], Any] | None) -> KeyFunction:
    """The key function a batch uses: :func:`default_key` when ``key`` is None, else ``key`` checked at
    each call.

    A key that raises (anything but a ``KeyboardInterrupt``: it costs that symbol, never the batch) or
    returns something other than a ``str`` is a ``ValueError`` or ``TypeError`` naming the symbol. A
    ``KeyboardInterrupt`` (a Ctrl-C landing in a slow ``key()``) goes through as it is: the batch takes it
    as an interrupt, as from a callback.

    >>> make_key_function(None)("AAPL")
    'AAPL'
    >>> make_key_function(lambda s: s["id"])({"name": "x"})
    Traceback (most recent call last):
    ...
    ValueError: key= raised KeyError('id') for the symbol {'name': 'x'}
    """
    if key is None:
        return default_key
    if not callable(key):
        raise TypeError(f"key must be callable or None, not {type(key).__name__}")

    def checked(symbol: Any) -> str:
        try:
            value = key(symbol)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise ValueError(f"key= raised {safe_repr(exc, 200)} for the symbol {safe_repr(symbol, 80)}") from exc
        if type(value) is not str:
            if not isinstance(value, str):
                raise TypeError(
                    f"key= must return a str, not {type(value).__name__} (for the symbol {safe_repr(symbol, 80)}); "
                    "wrap it, e.g. key=lambda s: str(...)"
                )
            value = str.__str__(value)  # a str subclass's own __eq__/__hash__ stay out of the store
        return storable(value)

    checked.__wrapped__ = key  # type: ignore[attr-defined]
    return checked


def unwrap(function: Any) -> Any:
    """The function under ``functools.wraps`` layers (``__wrapped__``, at most 100 deep)."""
    for _ in range(100):
        try:
            inner = getattr(function, "__wrapped__", None)
        except Exception:
            return function
        if inner is None:
            return function
        function = inner
    return function


def default_batch_name(processor: Callable[..., Any]) -> str | None:
    """The batch name used with ``store=`` when the job has none: the processor's ``module.qualname``
    for a named function or method; None for a lambda, a ``functools.partial`` or another callable
    (whose name would not tell two different calls apart)."""
    import inspect

    target = unwrap(processor)
    if not (inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)):
        return None
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname:
        return None
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module else qualname
