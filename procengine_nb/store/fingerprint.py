"""The processor's code fingerprint: a store reuses only what the same code stored.

A notebook user edits a cell and reruns it; the stored results of the old code must not come back as if
the new code had made them. Each stored row carries :func:`code_fingerprint` of the processor that made
it, and by default (``ResultStore(..., reuse="same_code")``) a rerun reuses only rows of the same
fingerprint.

What it covers: the processor's own code (bytecode, constants, names, nested functions and lambdas, a
closure's functions and plain values), its defaults, the functions of its own module it calls by name (a
notebook's helpers: fix a helper and the processor's results are computed again), the arguments of a
``functools.partial`` and, for a callable object, its type and its ``__call__``'s code. What it does not:
line numbers (moving a function keeps its results), functions of other modules, an object's other state,
global values that are not functions, the Python version's bytecode format (another Python computes
again). ``functools.wraps`` layers are looked through.

>>> def f(s): return s + 1
>>> def g(s): return s + 2
>>> code_fingerprint(f) == code_fingerprint(f), code_fingerprint(f) == code_fingerprint(g)
(True, False)
"""

from __future__ import annotations

import functools
import hashlib
import re
import types
from typing import Any

from procengine_nb.store.keys import qualified_type_name, unwrap

__all__ = ["code_fingerprint"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # reprs of objects name their address: not the same next time
_PLAIN = (int, float, complex, str, bytes, bool, type(None), type(Ellipsis))
_MAX_DEPTH = 12
_MAX_REPR = 2000


def code_fingerprint(processor: Any) -> str:
    """A short hex digest of ``processor``'s code (see the module's docstring); never raises."""
    digest = hashlib.sha256()
    try:
        _feed(digest, processor, 0, set())
    except Exception as exc:  # pragma: no cover - an object hostile to introspection: its type alone
        digest.update(f"unreadable {type(exc).__name__} {qualified_type_name(processor)}".encode())
    return digest.hexdigest()[:32]


def _add(digest: Any, *parts: str) -> None:
    for part in parts:
        digest.update(part.encode("utf-8", "backslashreplace"))
        digest.update(b"\x1f")


def _feed(digest: Any, target: Any, depth: int, seen: set[int]) -> None:
    if depth > _MAX_DEPTH or id(target) in seen:
        _add(digest, "...")
        return
    seen.add(id(target))
    target = unwrap(target)
    if isinstance(target, functools.partial):
        _add(digest, "partial")
        _feed(digest, target.func, depth + 1, seen)
        for value in target.args:
            _value(digest, value, depth + 1, seen)
        for name, value in sorted(target.keywords.items()):
            _add(digest, name)
            _value(digest, value, depth + 1, seen)
        return
    if isinstance(target, types.MethodType):
        _add(digest, "method", qualified_type_name(target.__self__))
        _feed(digest, target.__func__, depth + 1, seen)
        return
    if isinstance(target, types.FunctionType):
        _add(digest, "function", str(target.__qualname__))
        _code(digest, target.__code__, depth + 1)
        for value in target.__defaults__ or ():
            _value(digest, value, depth + 1, seen)
        for name, value in sorted((target.__kwdefaults__ or {}).items()):
            _add(digest, name)
            _value(digest, value, depth + 1, seen)
        for cell in target.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                _add(digest, "empty cell")
                continue
            _value(digest, contents, depth + 1, seen)
        namespace = target.__globals__
        for name in sorted(_global_names(target.__code__, 0)):  # the module's own functions it calls by name
            helper = namespace.get(name)
            if (isinstance(helper, types.FunctionType) and helper.__module__ == target.__module__
                    and id(helper) not in seen):
                _add(digest, "calls", name)
                _feed(digest, helper, depth + 1, seen)
        return
    if isinstance(target, (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
                           types.MethodWrapperType, types.ClassMethodDescriptorType, type)):
        module = getattr(target, "__module__", None) or ""
        _add(digest, "builtin", str(module), str(getattr(target, "__qualname__", qualified_type_name(target))))
        return
    _add(digest, "object", qualified_type_name(target))  # a callable object: its type and its __call__
    call = next((vars(klass)["__call__"] for klass in type(target).__mro__ if "__call__" in vars(klass)), None)
    if isinstance(call, types.FunctionType):
        _feed(digest, call, depth + 1, seen)


def _value(digest: Any, value: Any, depth: int, seen: set[int]) -> None:
    """A value the code closes over or is given: functions by their code, plain values by their repr,
    anything else by its type (its repr may be huge, or change from run to run)."""
    if isinstance(value, type):
        _add(digest, "class", str(getattr(value, "__module__", "")), str(getattr(value, "__qualname__", "")))
    elif callable(value):
        _feed(digest, value, depth, seen)
    elif isinstance(value, (str, bytes)):  # hashed as it is: a long text costs no repr
        _add(digest, type(value).__name__)
        digest.update(value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, _PLAIN):
        _add(digest, "value", repr(value))
    elif isinstance(value, (tuple, list, frozenset, set)) and len(value) <= 64:
        _add(digest, type(value).__name__)
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        for item in items:
            _value(digest, item, depth + 1, seen)
    else:
        _add(digest, "a", qualified_type_name(value))


def _global_names(code: types.CodeType, depth: int) -> set[str]:
    """The names ``code`` (and the code nested in it) looks up: globals, attributes."""
    names = set(code.co_names)
    if depth < _MAX_DEPTH:
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                names |= _global_names(const, depth + 1)
    return names


def _code(digest: Any, code: types.CodeType, depth: int) -> None:
    """Bytecode, names and constants (nested code objects recursively); no line numbers."""
    if depth > _MAX_DEPTH:
        _add(digest, "...")
        return
    digest.update(code.co_code)
    _add(digest, "names", *code.co_names, "args", str(code.co_argcount), str(code.co_kwonlyargcount))
    for const in code.co_consts:
        _const(digest, const, depth + 1)


def _const(digest: Any, const: Any, depth: int) -> None:
    if isinstance(const, types.CodeType):
        _code(digest, const, depth)
    elif isinstance(const, frozenset):  # its order follows the hash seed: sort
        _add(digest, "frozenset", *sorted(_ADDRESS.sub("", repr(item)) for item in const))
    elif isinstance(const, tuple):
        _add(digest, "tuple", str(len(const)))
        for item in const:
            _const(digest, item, depth + 1)
    else:
        _add(digest, "const", _ADDRESS.sub("", repr(const)[:_MAX_REPR]))
