"""The default backend: a thread pool per batch, or any ``concurrent.futures.Executor`` you pass."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from procengine_nb.backends.base import Backend, BatchExecutor
from procengine_nb.cancellation import CancellationToken

__all__ = ["ExecutorBackend", "ThreadBackend", "default_worker_count"]


def default_worker_count() -> int:
    """``min(32, cpu_count + 4)``, the standard library's default for I/O-bound thread pools."""
    return min(32, (os.cpu_count() or 1) + 4)


class _OwnedPoolBatch(BatchExecutor):
    def __init__(self, max_workers: int, token: CancellationToken) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="procengine-worker")
        self.worker_token = token

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        return self._pool.submit(fn, *args)

    def close(self, *, cancelled: bool) -> None:
        # Cancelled: drop what has not started and return at once; the threads exit after their
        # current task. Otherwise every task has finished and the join is immediate.
        self._pool.shutdown(wait=not cancelled, cancel_futures=True)


class _SharedExecutorBatch(BatchExecutor):
    def __init__(self, executor: Executor, token: CancellationToken, shares_memory: bool) -> None:
        self._executor = executor
        self.worker_token = token if shares_memory else None

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        return self._executor.submit(fn, *args)

    def close(self, *, cancelled: bool) -> None:
        """The executor is the caller's: it is never shut down here."""


class ThreadBackend(Backend):
    """A fresh ``ThreadPoolExecutor`` for each batch, shut down when the batch ends.

    No thread outlives its last task: after a normal end the pool is joined; after a cancel it is shut
    down without waiting, and each thread exits as soon as the task it runs returns.
    """

    name = "threads"
    shares_memory = True

    def __init__(self, max_workers: int | None = None) -> None:
        self._max_workers = max_workers if max_workers is not None else default_worker_count()

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _OwnedPoolBatch(self._max_workers, token)


class ExecutorBackend(Backend):
    """Any ``concurrent.futures.Executor`` given by the caller, used as it is and never shut down.

    The engine cancels the futures it submitted that have not started; tasks already running finish.
    The cancellation token reaches processors only on a ``ThreadPoolExecutor`` (shared memory).
    """

    name = "executor"

    def __init__(self, executor: Executor, max_workers: int | None = None) -> None:
        if not isinstance(executor, Executor):
            raise TypeError(
                f"executor must be a concurrent.futures.Executor, not {type(executor).__name__}"
            )
        self._executor = executor
        self.shares_memory = isinstance(executor, ThreadPoolExecutor)
        found = getattr(executor, "_max_workers", None)
        if max_workers is None:
            max_workers = found if isinstance(found, int) and found > 0 else default_worker_count()
        self._max_workers = max_workers

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _SharedExecutorBatch(self._executor, token, self.shares_memory)
