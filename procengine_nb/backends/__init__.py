"""Backends: where the engine runs its tasks (threads by default; see ``make_backend``).

``"threads"`` (default), ``"asyncio"`` (an event loop per batch; chosen by the engine for an ``async
def`` processor), ``"processes"`` (loky, extra ``procengine_nb[processes]``) and ``"dask"``
(``distributed``, extra ``procengine_nb[dask]``); the optional ones are imported only when asked for.
"""

from __future__ import annotations

import importlib
from concurrent.futures import Executor
from typing import Any

from procengine_nb._safe import safe_repr
from procengine_nb.backends.asyncio import AsyncBackend
from procengine_nb.backends.base import Backend, BatchExecutor, Chunk
from procengine_nb.backends.runner import run_chunk
from procengine_nb.backends.threads import ExecutorBackend, ThreadBackend, default_worker_count

__all__ = [
    "BACKENDS",
    "AsyncBackend",
    "Backend",
    "BatchExecutor",
    "Chunk",
    "ExecutorBackend",
    "ThreadBackend",
    "default_worker_count",
    "make_backend",
    "run_chunk",
]

BACKENDS = ("threads", "processes", "dask", "asyncio")
"""The backend names ``ProcessingEngine(backend=...)`` accepts."""


def make_backend(
    backend: str | Backend | None,
    *,
    max_workers: int | None,
    executor: Executor | None,
    **options: Any,
) -> Backend:
    """Build the backend for ``ProcessingEngine``'s arguments (validated there).

    ``options`` are the backend's own keyword arguments: ``client=`` and ``cluster_options=`` for
    ``"dask"``, ``idle_timeout=`` for ``"processes"``, ``timeout=`` for ``"asyncio"`` (the engine
    passes its own); none for threads. A missing extra raises an ImportError that names it.
    """
    if isinstance(backend, Backend):
        if options:
            raise TypeError(f"unexpected options with a Backend object: {', '.join(sorted(options))}")
        return backend
    if executor is not None:
        if options:
            raise TypeError(f"unexpected options with executor=: {', '.join(sorted(options))}")
        return ExecutorBackend(executor, max_workers)
    if backend in (None, "threads"):
        if options:
            raise TypeError(f"unexpected options for the threads backend: {', '.join(sorted(options))}")
        return ThreadBackend(max_workers)
    if backend == "asyncio":
        _only(options, "asyncio", {"timeout"})
        return AsyncBackend(max_workers, **options)
    if backend == "processes":
        _only(options, "processes", {"idle_timeout"})
        _require_extra("processes", ("loky", "cloudpickle"))
        from procengine_nb.backends.processes import ProcessBackend

        return ProcessBackend(max_workers, **options)
    if backend == "dask":
        _only(options, "dask", {"client", "cluster_options"})
        _require_extra("dask", ("distributed", "cloudpickle"))
        from procengine_nb.backends.dask import DaskBackend

        return DaskBackend(max_workers, **options)
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {safe_repr(backend, 80)}")


def _require_extra(name: str, modules: tuple[str, ...]) -> None:
    """Import each module the backend needs; if one is missing, raise an ImportError naming the extra
    that installs it (``pip install "procengine_nb[name]"``), before the backend module is imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f'backend="{name}" needs {", ".join(modules)} ({module} is missing): '
                f'pip install "procengine_nb[{name}]"'
            ) from exc


def _only(options: dict[str, Any], name: str, allowed: set[str]) -> None:
    unexpected = sorted(set(options) - allowed)
    if unexpected:
        raise TypeError(
            f"unexpected options for the {name} backend: {', '.join(unexpected)} "
            f"(it takes {', '.join(sorted(allowed))})"
        )
