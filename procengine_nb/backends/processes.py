"""The ``"processes"`` backend: loky's reusable process pool (``pip install procengine_nb[processes]``).

For CPU-bound processors that hold the GIL. Functions defined in a notebook cell work: the processor
and the symbols travel with cloudpickle (see :mod:`procengine_nb.backends._remote`).

>>> from procengine_nb import ProcessingEngine
>>> with ProcessingEngine(abs, backend="processes", max_workers=2) as engine:   # doctest: +SKIP
...     sorted(r.value for r in engine.process_batch([-1, 2, -3]))
[1, 2, 3]

What it can and cannot do (honest limits):

- Stop drops every chunk loky has not handed to a worker yet (a chunk already in loky's call queue
  cannot be withdrawn, but it runs no symbol once it starts), and the processors' token (a
  worker-local :class:`~procengine_nb.backends._remote.MarkerToken`) turns cancelled within ~5 ms, so a
  chunk stops between two symbols and a processor that checks its token stops mid-symbol. A processor
  that ignores its token keeps running in its worker process until it returns (loky cannot stop a
  running task without killing the pool); the final snapshot counts exactly the chunks that had
  started (each writes a small "running" file next to the marker while it runs).
- A worker process that dies (``os._exit``, a segfault, the OOM killer) breaks loky's pool: every chunk
  in flight at that moment becomes ERROR results carrying loky's ``TerminatedWorkerError`` (with the
  exit code), the next chunks go to a fresh pool, and the batch goes on. ``engine.retry(result)`` reruns
  the failed symbols.
- The pool is loky's process-wide reusable executor: it stays warm between batches and engines (no
  start-up cost per batch), is resized to ``max_workers`` when a batch opens (loky waits for running
  tasks before resizing), and is shut down by :meth:`ProcessBackend.close` once no other open
  ``ProcessBackend`` uses it. At interpreter exit, if tasks a Stop abandoned are still running, the
  pool's workers are killed so the interpreter exits promptly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from procengine_nb.backends._remote import BatchMarker, RemoteTask, _ProcessorBlob, encode_chunk, run_encoded
from procengine_nb.backends.base import Backend, BatchExecutor, run_chunk
from procengine_nb.cancellation import CancellationToken

try:
    import cloudpickle  # noqa: F401  (used by remote; checked here for the error message)
    import loky
    from loky.process_executor import BrokenProcessPool, ShutdownExecutorError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'backend="processes" needs loky and cloudpickle: pip install "procengine_nb[processes]"'
    ) from exc

__all__ = ["ProcessBackend"]

_pool_lock = threading.Lock()
_pool_users = 0  # open ProcessBackend objects that have used loky's reusable executor
_abandoned: set[Any] = set()  # loky futures a Stop left running (they keep running in their worker)
_exit_hook_registered = False
_current_pool: Any = None  # the reusable executor our backends last got from loky


def _kill_abandoned_at_exit() -> None:
    """At interpreter exit, kill the pool's workers if a Stop left tasks running there.

    loky's own exit hook waits for running tasks; registered after it, this runs first
    (``threading._register_atexit`` runs hooks in reverse order), so the interpreter exits promptly.
    """
    with _pool_lock:
        still_running = [f for f in _abandoned if not f.done()]
        _abandoned.clear()
        pool = _current_pool
    if still_running and pool is not None:
        pool.shutdown(wait=False, kill_workers=True)


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _pool_lock:
        if _exit_hook_registered:
            return
        _exit_hook_registered = True
    try:
        threading._register_atexit(_kill_abandoned_at_exit)  # type: ignore[attr-defined]
    except RuntimeError:  # pragma: no cover - the interpreter is already shutting down
        pass


class _ProcessBatch(BatchExecutor):
    def __init__(self, backend: ProcessBackend, token: CancellationToken) -> None:
        self._backend = backend
        self._executor = backend._pool()
        self._marker = BatchMarker()
        self._blob = _ProcessorBlob()
        # Stop reaches chunks already handed to workers through the marker file (same machine).
        self._registration = token.register(self._marker.cancel)
        self._token = token
        self.worker_token = None  # the engine's token cannot be pickled; workers get a MarkerToken
        self._warm_up(token)

    def _warm_up(self, token: CancellationToken) -> None:
        """Start the worker processes before the first chunk (so ``timeout=`` does not count the
        start-up of the pool against it); returns at once when they run already or on a cancel."""
        try:
            ready = self._executor.submit(int)
        except Exception:  # a broken pool: submit() replaces it
            return
        _register_exit_hook()
        while not ready.done() and not token.wait(0.02):
            pass

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        if fn is not run_chunk:
            return self._submit_with_retry(fn, *args)
        processor, symbols, _token, pass_token = args
        payload, task = encode_chunk(self._blob, processor, symbols, pass_token, self._marker.marker)
        if payload is None:
            return task
        task.key = self._marker.running_file()
        inner = self._submit_with_retry(run_encoded, *payload, task.key)
        task.inner = inner
        inner.add_done_callback(lambda f, task=task: _complete(task, f))
        return task

    def _submit_with_retry(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        try:
            future = self._executor.submit(fn, *args)
        except (BrokenProcessPool, ShutdownExecutorError, RuntimeError):
            # A worker died earlier in this batch (or someone shut the shared pool down): the chunks
            # that were in flight already carry the error; the rest go to a fresh pool.
            self._executor = self._backend._pool()
            future = self._executor.submit(fn, *args)
        _register_exit_hook()  # after loky registered its own hook at the pool's first start
        return future

    def started(self, future: Future[Any]) -> bool:
        """A chunk started once its running file exists (``timeout=`` counts from then)."""
        key = getattr(future, "key", None)
        return future.done() or key is None or os.path.exists(key)

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        stopping = self._token.is_cancelled
        if stopping:  # before looking at the running files (the token's own callback may lag)
            self._marker.cancel()
        for future in futures:
            inner = getattr(future, "inner", None)
            if inner is None:
                future.cancel()
            elif inner.cancel():  # still in loky's pending queue: dropped
                continue
            elif stopping and not os.path.exists(future.key):
                # In loky's call queue but not started: it will see the marker and run no symbol.
                future.complete_cancelled()
            else:  # running in a worker: it runs to its end (or until its processor sees the token)
                with _pool_lock:
                    _abandoned.add(inner)
                inner.add_done_callback(_forget)

    def close(self, *, cancelled: bool) -> None:
        self._registration.unregister()
        if cancelled:
            self._marker.cancel()
        # The batch is over: its directory goes, and any chunk of it still queued or running on a
        # worker of this machine sees its token cancelled (a late chunk runs no symbol).
        self._marker.close()


def _forget(future: Any) -> None:
    with _pool_lock:
        _abandoned.discard(future)


def _complete(task: RemoteTask, future: Any) -> None:
    if future.cancelled():
        task.complete_cancelled()
        return
    error = future.exception()
    if error is not None:
        task.complete_with_error(error)
    else:
        task.complete_with_blobs(future.result())


class ProcessBackend(Backend):
    """Run chunks in worker processes with loky's reusable executor (see the module docstring).

    ``max_workers`` defaults to the number of CPUs. Call :meth:`close` (``engine.close()`` or
    ``with ProcessingEngine(...)``) to shut the shared pool down when you are done; otherwise it stays
    warm for the next batch and loky stops idle workers after ``idle_timeout`` seconds.
    """

    name = "processes"
    shares_memory = False
    target_task_seconds = 0.01  # a hand-off to a process costs ~0.1-0.5 ms; Stop stays prompt (marker token)

    def __init__(self, max_workers: int | None = None, *, idle_timeout: float = 300.0) -> None:
        if max_workers is None:
            max_workers = loky.cpu_count()
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
            raise TypeError(f"idle_timeout must be a number of seconds, not {type(idle_timeout).__name__}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout!r}")
        self._max_workers = max_workers
        self._idle_timeout = idle_timeout
        self._uses_pool = False
        self._closed = False

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def _pool(self) -> Any:
        global _pool_users, _current_pool
        if self._closed:
            raise RuntimeError("this processes backend was closed")
        with _pool_lock:
            if not self._uses_pool:
                self._uses_pool = True
                _pool_users += 1
        pool = loky.get_reusable_executor(max_workers=self._max_workers, timeout=self._idle_timeout)
        with _pool_lock:
            _current_pool = pool
        return pool

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _ProcessBatch(self, token)

    def close(self) -> None:
        """Shut loky's pool down if no other open ProcessBackend uses it (idempotent)."""
        global _pool_users, _current_pool
        if self._closed:
            return
        self._closed = True
        with _pool_lock:
            last = self._uses_pool and _pool_users == 1
            if self._uses_pool:
                _pool_users -= 1
            pool = _current_pool if last else None
            if last:
                _current_pool = None
                abandoned = [f for f in _abandoned if not f.done()]
                _abandoned.clear()
        if pool is not None:
            # Tasks a Stop abandoned are killed rather than waited for: close never hangs.
            pool.shutdown(wait=True, kill_workers=bool(abandoned))

    def __repr__(self) -> str:
        return f"<ProcessBackend max_workers={self._max_workers}>"
