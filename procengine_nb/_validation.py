"""Argument checks shared by every public entry point: one wording for one kind of mistake.

Each check raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value) whose
message names the argument, what it must be and what it got.

>>> check_int(3, "max_workers", minimum=1)
3
>>> check_int(True, "max_workers", minimum=1)
Traceback (most recent call last):
TypeError: max_workers must be an int, not bool
>>> check_seconds(1e10, "timeout", allow_none=True)
Traceback (most recent call last):
ValueError: timeout must be at most 9223372036 seconds (None for no limit), got 10000000000.0
>>> check_seconds(float("inf"), "backoff")
Traceback (most recent call last):
ValueError: backoff must be finite, got inf
"""

from __future__ import annotations

import math
import threading
from typing import Any

from procengine_nb._safe import safe_repr, type_name

__all__ = ["MAX_SECONDS", "check_callable", "check_int", "check_number", "check_seconds", "check_type"]

MAX_SECONDS = float(threading.TIMEOUT_MAX)
"""The longest wait the OS timers take (about 292 years); a longer one would overflow them."""


def check_type(value: Any, kinds: type | tuple[type, ...], name: str, *, what: str | None = None,
               allow_none: bool = False) -> Any:
    """``value`` if it is an instance of ``kinds`` (or None when allowed), else a TypeError."""
    if (allow_none and value is None) or isinstance(value, kinds):
        return value
    if what is None:
        names = kinds if isinstance(kinds, tuple) else (kinds,)
        what = " or ".join(f"a {k.__module__}.{k.__qualname__}" if k.__module__ != "builtins" else f"a {k.__name__}"
                           for k in names)
    suffix = " or None" if allow_none else ""
    raise TypeError(f"{name} must be {what}{suffix}, not {type_name(value)}")


def check_callable(value: Any, name: str, *, allow_none: bool = False) -> Any:
    """``value`` if it is callable (or None when allowed), else a TypeError."""
    if (allow_none and value is None) or callable(value):
        return value
    suffix = " or None" if allow_none else ""
    raise TypeError(f"{name} must be callable{suffix}, not {type_name(value)}")


def check_int(value: Any, name: str, *, minimum: int | None = None, allow_none: bool = False) -> Any:
    """``value`` if it is an int (never a bool) >= ``minimum`` (or None when allowed)."""
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        suffix = " or None" if allow_none else ""
        raise TypeError(f"{name} must be an int{suffix}, not {type_name(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {safe_repr(value, 80)}")
    return value


def check_number(value: Any, name: str, *, minimum: float | None = None, strict: bool = False,
                 maximum: float | None = None, allow_none: bool = False, what: str = "a number") -> Any:
    """``value`` if it is a finite int or float (never a bool or NaN) within the bounds (``strict``:
    strictly above ``minimum``), or None when allowed."""
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        suffix = " or None" if allow_none else ""
        raise TypeError(f"{name} must be {what}{suffix}, not {type_name(value)}")
    if math.isnan(value):
        raise ValueError(f"{name} must be {what}, got nan")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {safe_repr(value, 80)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {safe_repr(value, 80)}")
    if math.isinf(value):  # suggest None only where None is accepted
        hint = " (None for no limit)" if allow_none else ""
        raise ValueError(f"{name} must be finite{hint}, got {safe_repr(value, 80)}")
    return value


def check_seconds(value: Any, name: str, *, allow_none: bool = False, strict: bool = False) -> Any:
    """A duration in seconds: finite, >= 0 (> 0 when ``strict``) and short enough for the OS timers."""
    check_number(value, name, minimum=0, strict=strict, allow_none=allow_none, what="a number of seconds")
    if value is not None and value > MAX_SECONDS:
        hint = " (None for no limit)" if allow_none else ""
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} seconds{hint}, got {safe_repr(value, 80)}")
    return value
