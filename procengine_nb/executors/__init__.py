"""Backends: where the engine runs its tasks (threads by default; see ``make_backend``)."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from procengine_nb.executors.base import Backend, BatchExecutor, run_chunk
from procengine_nb.executors.threads import ExecutorBackend, ThreadBackend, default_worker_count

__all__ = [
    "BACKENDS",
    "Backend",
    "BatchExecutor",
    "ExecutorBackend",
    "ThreadBackend",
    "default_worker_count",
    "make_backend",
    "run_chunk",
]

BACKENDS = ("threads",)
"""The backend names ``ProcessingEngine(backend=...)`` accepts."""


def make_backend(
    backend: str | Backend | None,
    *,
    max_workers: int | None,
    executor: Executor | None,
    **options: Any,
) -> Backend:
    """Build the backend for ``ProcessingEngine``'s arguments (validated there)."""
    if isinstance(backend, Backend):
        return backend
    if executor is not None:
        return ExecutorBackend(executor, max_workers)
    if backend in (None, "threads"):
        if options:
            raise TypeError(f"unexpected options for the threads backend: {', '.join(sorted(options))}")
        return ThreadBackend(max_workers)
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
