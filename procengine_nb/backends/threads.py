"""The default backend: a thread pool per batch; and any ``concurrent.futures.Executor`` you pass (one
whose workers share memory runs chunks as the thread pool does; a process pool or another non-sharing
executor sends them the way the processes backend does, ``_encoded_executor.py``).

The engine's own pool (:class:`DaemonThreadPool`) runs its tasks on daemon threads: a task that a Stop
abandoned (it ignores its token, maybe forever) never keeps the interpreter or a kernel from exiting,
whereas ``ThreadPoolExecutor``'s workers are joined at exit (``concurrent.futures`` waits for their
current task, forever for an endless one).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from procengine_nb.backends._loop import Awaiter, register_awaiter, unregister_awaiter
from procengine_nb.backends.base import CROSS_PROCESS_TASK_SECONDS, Backend, BatchExecutor, Chunk
from procengine_nb.backends.runner import run_chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

__all__ = ["DaemonThreadPool", "ExecutorBackend", "ThreadBackend", "classify", "default_worker_count"]


def default_worker_count() -> int:
    """``min(32, cpu_count + 4)``, the standard library's default for I/O-bound thread pools."""
    return min(32, (os.cpu_count() or 1) + 4)


class DaemonThreadPool(Executor):
    """A minimal thread pool whose workers are daemon threads, never joined at interpreter exit.

    Same contract as ``ThreadPoolExecutor`` for ``submit`` and ``shutdown(wait, cancel_futures=...)``:
    threads start on demand up to ``max_workers`` (an idle one is reused first), and after
    ``shutdown`` each thread exits as soon as the task it runs returns. The difference: at exit the
    interpreter does not wait for a task that is still running (a Stop abandoned it), so ``exit()``,
    the end of a script and a kernel shutdown complete at once.

    >>> pool = DaemonThreadPool(2)
    >>> pool.submit(pow, 2, 10).result()
    1024
    >>> pool.shutdown()
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "procengine-worker") -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._worker, daemon=True,
                                          name=f"{self._prefix}_{len(self._threads)}")
                thread.start()
                self._threads.append(thread)
            return future

    def add_worker(self) -> None:
        """One thread more than ``max_workers`` from now on (a task given up on keeps its thread busy,
        maybe forever): the tasks queued behind it keep moving. Nothing after ``shutdown``."""
        with self._lock:
            if self._shutdown:
                return
            self._max_workers += 1
            thread = threading.Thread(target=self._worker, daemon=True, name=f"{self._prefix}_{len(self._threads)}")
            thread.start()
            self._threads.append(thread)

    def _worker(self) -> None:
        work = self._work
        while True:
            item = work.get()
            if item is None:  # shut down: pass the word on to the next thread
                work.put(None)
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs
            if self._shutdown:
                work.put(None)
                return
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            self._work.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


class _OwnedPoolBatch(BatchExecutor):
    def __init__(self, max_workers: int, token: CancellationToken) -> None:
        self._pool = DaemonThreadPool(max_workers, thread_name_prefix="procengine-worker")
        self._replaced = 0
        self._replace_limit = max(4, max_workers)
        self.worker_token = token
        # Awaitables a sync processor returns are awaited on the batch's own loop (started at the
        # first one); workers find it by the batch token run_chunk gets.
        self._awaiter = Awaiter(token)
        register_awaiter(token, self._awaiter)

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        return self._pool.submit(run_chunk, chunk.processor, chunk.symbols, self.worker_token, chunk.pass_token,
                                 chunk.on_start, chunk.on_symbol, chunk.results)

    def take_back(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """The tasks still queued in the pool (``Future.cancel()`` succeeds only before a task starts)."""
        return [future for future in futures if future.cancel()]

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """A thread stuck in a task past its ``timeout=`` is replaced (up to ``max(4, max_workers)``
        replacements a batch), so the symbols queued behind it still run; beyond that, they wait for a
        thread to come back (a Stop still returns at once)."""
        for future in futures:
            if self._replaced < self._replace_limit and future.running():
                self._replaced += 1
                self._pool.add_worker()

    def close(self, *, cancelled: bool) -> None:
        # Cancelled: drop what has not started and return at once; the threads exit after their
        # current task. Otherwise every task has finished and the join is immediate. The loop (if an
        # awaitable started one) stops first: a worker waiting on it after a cancel is released.
        unregister_awaiter(self.worker_token)
        self._awaiter.close(wait=not cancelled)
        self._pool.shutdown(wait=not cancelled, cancel_futures=True)


class _SharedExecutorBatch(BatchExecutor):
    """The caller's executor, whose workers share this process's memory, runs the runner itself:
    ``executor.submit(run_chunk, ...)`` with the batch's token and the chunk's hooks; a sync processor's
    awaitable is awaited on the batch's loop, as on threads. (An executor whose workers do not share
    memory gets chunks the way ``backend="processes"`` does: ``_encoded_executor``.)"""

    def __init__(self, executor: Executor, token: CancellationToken) -> None:
        self._executor = executor
        self.worker_token = token
        self._awaiter = Awaiter(token)
        register_awaiter(token, self._awaiter)

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        return self._executor.submit(run_chunk, chunk.processor, chunk.symbols, self.worker_token,
                                     chunk.pass_token, chunk.on_start, chunk.on_symbol, chunk.results)

    def take_back(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """The tasks still queued in the executor (a ``concurrent.futures`` future cancels only before it
        runs)."""
        return [future for future in futures if future.cancel()]

    def close(self, *, cancelled: bool) -> None:
        """The executor is the caller's: it is never shut down here (the batch's loop is)."""
        unregister_awaiter(self.worker_token)
        self._awaiter.close(wait=not cancelled)


_LOCAL_POOL_MODULES = ("loky.", "joblib.externals.loky.")
_REMOTE_MODULES = ("distributed.",)  # Dask's ClientExecutor: workers wherever the cluster is


def classify(executor: Executor) -> tuple[bool, bool]:
    """``(shares_memory, local_processes)`` for a caller's executor.

    - A ``concurrent.futures.ProcessPoolExecutor`` (or subclass) and a loky executor (also joblib's
      copy) run in processes of this machine: ``(False, True)``.
    - Any other executor that says so itself (an attribute ``shares_memory`` that is a bool) is taken
      at its word.
    - Dask's ``ClientExecutor`` runs on workers that may be on other hosts: ``(False, False)``.
    - Any other executor (a ``ThreadPoolExecutor``, a thread-based one of your own) shares memory.

    ``local_processes`` means the workers see this machine's files (stop marker, started files), so
    ``timeout=`` can count from each symbol's own start; a declared non-sharing executor is not known
    to be local (``(False, False)``).
    """
    try:
        declared = getattr(executor, "shares_memory", None)
    except Exception:  # a hostile attribute: undeclared
        declared = None
    if isinstance(executor, ProcessPoolExecutor):
        return False, True
    modules = [m for m in (getattr(kind, "__module__", "") for kind in type(executor).__mro__) if isinstance(m, str)]
    if any(m.startswith(_LOCAL_POOL_MODULES) for m in modules):
        return False, True
    if isinstance(declared, bool):
        return declared, False
    if any(m.startswith(_REMOTE_MODULES) for m in modules):
        return False, False
    return True, False


class ThreadBackend(Backend):
    """A fresh :class:`DaemonThreadPool` for each batch, shut down when the batch ends.

    No thread outlives its last task: after a normal end the pool is joined; after a cancel it is shut
    down without waiting, and each thread exits as soon as the task it runs returns. Its threads are
    daemons, so a task a Stop abandoned never delays the interpreter's exit or a kernel shutdown.
    """

    name = "threads"
    shares_memory = True
    # Tasks shorter than this are grouped (each symbol still reported). 5 ms rather than the default
    # 2 ms: with 1 ms tasks the batch thread then wakes once per 4-5 symbols instead of once per
    # symbol (W1's CPU went from 1.35x to 0.72x the bare executor's; wall time and Stop unchanged,
    # since a Stop never waits for a running chunk and a chunk stops between two symbols).
    target_task_seconds = 0.005

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
    Whether its workers share this process's memory decides the path (:func:`~procengine_nb.backends.
    threads.classify`): a ``ProcessPoolExecutor`` (``concurrent.futures`` or loky), Dask's
    ``ClientExecutor``, or an executor whose ``shares_memory`` attribute is False gets each chunk the
    way ``backend="processes"`` sends it (per-symbol pickling faults, the caller's own symbol objects in
    the results, the Stop and the starts through files on this machine); any other executor (a
    ``ThreadPoolExecutor``, a thread-based one of your own) runs the runner on its workers with the
    batch's token. ``timeout=`` needs to know when each symbol starts: every shape but a non-sharing
    executor not known to run on this machine (``supports_timeout``).
    """

    name = "executor"

    def __init__(self, executor: Executor, max_workers: int | None = None) -> None:
        if not isinstance(executor, Executor):
            raise TypeError(
                f"executor must be a concurrent.futures.Executor, not {type(executor).__name__}"
            )
        self._executor = executor
        self.shares_memory, self._local_processes = classify(executor)
        self.supports_timeout = self.shares_memory or self._local_processes
        if not self.shares_memory:
            _require_cloudpickle(executor)
            # a chunk crosses to another process: hand-offs cost what they cost processes (see there)
            self.target_task_seconds = CROSS_PROCESS_TASK_SECONDS
        found = getattr(executor, "_max_workers", None)
        if max_workers is None:
            max_workers = found if isinstance(found, int) and found > 0 else default_worker_count()
        self._max_workers = max_workers

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def open(self, token: CancellationToken) -> BatchExecutor:
        if self.shares_memory:
            return _SharedExecutorBatch(self._executor, token)
        from procengine_nb.backends._encoded_executor import EncodedExecutorBatch

        return EncodedExecutorBatch(self._executor, token, local=self._local_processes)


def _require_cloudpickle(executor: Executor) -> None:
    try:
        import cloudpickle  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"executor={type(executor).__name__}(...) runs in other processes, where chunks travel as on "
            'backend="processes", which needs cloudpickle: pip install "procengine_nb[processes]"'
        ) from exc
