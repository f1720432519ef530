"""The ``"processes"`` backend: a warm loky pool of its own (``pip install procengine_nb[processes]``).

For CPU-bound processors that hold the GIL. Functions defined in a notebook cell work: the processor
and the symbols travel with cloudpickle (see :mod:`~procengine_nb.backends._chunk_codec` and
:mod:`~procengine_nb.backends._wire`).

>>> from procengine_nb import ProcessingEngine
>>> with ProcessingEngine(abs, backend="processes", max_workers=2) as engine:
...     sorted(r.value for r in engine.process_batch([-1, 2, -3]))
[1, 2, 3]

This module is the backend and its batch executor; the warm pools are :mod:`~procengine_nb.backends._pool`,
what happens after a worker died :mod:`~procengine_nb.backends._recovery`.

What it can and cannot do (honest limits):

- Stop (and a pause) claims every chunk not started yet (the parent creates its started file), so the
  worker that takes it runs no symbol (loky's future is not cancelled: loky's shutdown with
  ``kill_workers`` fails on cancelled work items still queued), and the processors' token (a
  worker-local :class:`~procengine_nb.backends._marker.MarkerToken`) turns cancelled within ~5 ms, so a
  chunk stops between two symbols and a processor that checks its token stops mid-symbol. A processor
  that ignores its token keeps running in its worker process until it returns (loky cannot stop a
  running task without killing the pool); the final snapshot counts exactly the chunks that had
  started (each creates a small "started" file next to the marker as it starts).
- A pause takes back the chunks no worker started: claimed (the parent creates their started file
  first: the worker that picks one up runs no symbol; loky's future is not cancelled); only
  the running chunks go on. ``handle.stalled()`` reads, from each started file, which symbol runs and
  since when (each worker writes the index before each symbol, and ``time.monotonic_ns()`` at each
  look at the token, every ~5 ms of symbols: the start to within those 5 ms).
- A worker process that dies (``os._exit``, a segfault, the OOM killer, ``kill -9``) breaks loky's
  pool, which fails every chunk in flight. Only the symbol the dead worker was running becomes an
  ERROR (loky's ``TerminatedWorkerError``, with the exit code); every other symbol runs on a fresh
  pool. Each chunk's started file says which symbol it was running and in which worker process, and
  the dead process is the one that broke the pool (loky kills the others only afterwards). Symbols
  that had run, or were cut short, in a chunk that was lost run again (at least once, at most twice
  in practice); chunks that had not started are claimed by the engine, so no worker of the broken pool
  starts them late. Bounded: a chunk lost unstarted by pools that broke before getting anything done
  is sent again at most ``_MAX_RESENDS`` times, and a symbol running at ``_MAX_DEATHS`` breaks is an
  ERROR even where the dead process cannot be told (no ``/proc``). ``engine.retry(result)`` reruns
  the failed symbols.
- The pool is procengine_nb's own loky ``ProcessPoolExecutor`` (never loky's process-wide reusable
  executor, which other libraries share): one warm pool per process, reused by every engine, thread,
  ``start()`` and ``run()`` call with the same ``max_workers`` and ``idle_timeout`` (no start-up cost
  per batch or per engine). ``engine.close()`` does not shut it down (other engines may use it); its
  workers exit after ``idle_timeout`` seconds without work, at interpreter exit, or with
  :func:`shutdown_pools`. They never outlive this process: each watches its parent and exits within
  about half a second of its death (``kill -9`` included; POSIX).
- Tasks a Stop (or ``timeout=``) abandoned are never waited for: the next batch, ``engine.close()``
  and interpreter exit find them still running and replace the pool, killing its workers as soon as
  no other batch uses it — so a token-ignoring task cannot starve the next batch or hang a close.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from procengine_nb._validation import check_seconds
from procengine_nb.backends._chunk_codec import ProcessorBlob, encode_chunk
from procengine_nb.backends._marker import BatchMarker
from procengine_nb.backends._pool import (
    Pool,
    acquire,
    drop_stuck_pools,
    register_exit_hook,
    release,
    shutdown_pools,
)
from procengine_nb.backends._recovery import LOST_WITH_THE_POOL, PoolRecovery
from procengine_nb.backends._remote_task import Decoding, RemoteTask
from procengine_nb.backends._started_file import claim, forget
from procengine_nb.backends._worker import run_encoded
from procengine_nb.backends.base import CROSS_PROCESS_TASK_SECONDS, Backend, BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

try:
    import loky
    from loky.process_executor import BrokenProcessPool, ShutdownExecutorError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'backend="processes" needs loky and cloudpickle: pip install "procengine_nb[processes]"'
    ) from exc

__all__ = ["ProcessBackend", "shutdown_pools"]


class _ProcessBatch(PoolRecovery, BatchExecutor):
    def __init__(self, backend: ProcessBackend, token: CancellationToken) -> None:
        self._backend = backend
        self._pool = backend._acquire()
        self._pool_lock = threading.Lock()  # the batch thread and loky's callbacks may both replace it
        self._closing = False
        self._released = False
        self._marker = BatchMarker()
        self._blob = ProcessorBlob()
        # Stop reaches chunks already handed to workers through the marker file (same machine).
        self._registration = token.register(self._marker.cancel)
        self._token = token
        self._decoding = Decoding()
        self.worker_token = None  # the engine's token cannot be pickled; workers get a MarkerToken
        self._warm_up(token)

    def _warm_up(self, token: CancellationToken) -> None:
        """Start the worker processes before the first chunk (so ``timeout=`` does not count the
        start-up of the pool against it); at once when they run already or on a cancel."""
        pool = self._pool
        if time.monotonic() < pool.warm_until:
            return
        try:
            ready = pool.submit(int)
        except Exception:  # a broken pool: submit() replaces it
            return
        register_exit_hook()  # after loky registered its own hook at the pool's first start
        while not ready.done() and not token.wait(0.02):
            pass
        if ready.done():
            pool.warm_until = time.monotonic() + 0.9 * pool.idle_timeout

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        """Send the chunk to a worker process (its hooks stay here: the worker marks its start and its
        running symbol in the chunk's started file, see :meth:`started`)."""
        self._processor, self._pass_token = chunk.processor, chunk.pass_token
        return self._chunk(chunk.symbols)

    def _chunk(self, symbols: Any, deaths: dict[int, int] | None = None) -> RemoteTask:
        """Encode and send one chunk (an ERROR result for each symbol that cannot be sent); ``deaths``:
        breaks its symbols (by position) were running at already."""
        payload, task = encode_chunk(self._blob, self._processor, symbols, self._pass_token, self._marker.marker)
        if deaths:
            task.deaths = deaths
        if payload is None:
            return task
        task.key = self._marker.started_file()
        task.payload = (*payload, task.key)  # the parent may claim it: see _complete
        self._send(task)
        return task

    def _send(self, task: RemoteTask) -> None:
        task.pool, task.inner = self._submit_on(run_encoded, *task.payload)
        task.inner.add_done_callback(lambda f, task=task: self._complete(task, f))

    def _submit_on(self, fn: Callable[..., Any], /, *args: Any) -> tuple[Pool, Any]:
        """Submit ``fn(*args)`` to this batch's pool: ``(the pool that took it, loky's future)``."""
        pool = self._pool
        try:
            return pool, pool.submit(fn, *args)
        except (BrokenProcessPool, ShutdownExecutorError, RuntimeError):
            # A worker died earlier in this batch (its chunks were already failed or sent again) or
            # the pool was shut down: the rest go to a fresh pool.
            pool = self._replace(pool)
            future = pool.submit(fn, *args)
            register_exit_hook()
            return pool, future

    def _replace(self, broken: Pool) -> Pool:
        """The pool that replaces ``broken`` for this batch (once, whichever thread asks first)."""
        with self._pool_lock:
            if self._closing:
                raise RuntimeError("the batch is over")
            if self._pool is broken:
                self._pool = self._backend._acquire(replacing=broken)
            return self._pool

    def _complete(self, task: RemoteTask, future: Any) -> None:
        """Complete the engine's future from loky's (on loky's thread); a chunk its pool lost when it
        broke goes to the recovery (:mod:`~procengine_nb.backends._recovery`)."""
        if future.cancelled() or task.withdrawn:  # (withdrawn: claimed at a pause, it ran nothing)
            task.complete_cancelled()
            return
        error = future.exception()
        if error is None:
            forget(task.key)  # the result is here: the chunk's started file has done its job
            self._decoding.complete(self._token, task, future.result())
            return
        if isinstance(error, LOST_WITH_THE_POOL) and self._lost(task, error):
            return
        task.complete_with_error(error)

    def started(self, future: Future[Any]) -> bool:
        """A chunk started once its started file exists (``timeout=`` counts from then)."""
        key = getattr(future, "key", None)
        return future.done() or key is None or os.path.exists(key)

    def take_back(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """At a pause: withdraw the chunks no worker started (in loky's pending queue or its call
        queue), claimed as the recovery claims a chunk lost unstarted (the parent creates the started file
        first, so the worker that picks the chunk up runs no symbol). Whoever creates the file first owns
        the chunk: never lost, never run twice."""
        taken: list[Future[Any]] = []
        for future in futures:
            inner = getattr(future, "inner", None)
            if inner is None or inner.done() or future.done():
                continue  # nothing sent, or being recovered after a broken pool: it stays
            if claim(future.key):  # (never inner.cancel(): see cancel_pending)
                future.withdrawn = True  # type: ignore[attr-defined]
                taken.append(future)
        return taken

    def running_since(self, future: Future[Any]) -> tuple[int, float] | None:
        """The symbol a started chunk runs and for how long, from its started file (the worker writes
        the index and the start of each symbol there): :meth:`RemoteTask.running_since`."""
        return future.running_since() if isinstance(future, RemoteTask) else None

    def stop_running(self, futures: Iterable[Future[Any]]) -> None:
        """Keep the chunks whose results are being decoded (a processor's cancel request stops the
        batch just before its own chunk completes)."""
        self._decoding.wait()

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        stopping = self._token.is_cancelled
        if stopping:  # before looking at the started files (the token's own callback may lag)
            self._marker.cancel()
        for future in futures:
            inner = getattr(future, "inner", None)
            if inner is None:
                future.cancel()
            elif inner.done():  # it ran: its results are on their way (or being decoded)
                continue
            elif stopping and claim(future.key):
                # Queued in loky, not started: claimed, so the worker that takes it runs no symbol. Its
                # loky future is left to finish (at once): cancelling it would leave a cancelled work item
                # in loky's queue, on which loky's shutdown(kill_workers=True) (the next pool replacement,
                # or interpreter exit) raises InvalidStateError in its manager thread and logs it.
                future.complete_cancelled()
            else:  # running in a worker: it runs to its end (or until its processor sees the token)
                abandoned = self._pool.abandoned
                abandoned.add(inner)
                inner.add_done_callback(abandoned.discard)

    def close(self, *, cancelled: bool) -> None:
        self._registration.unregister()
        if cancelled:
            self._marker.cancel()
        # The batch is over: its directory goes, and any chunk of it still queued or running on a
        # worker of this machine sees its token cancelled (a late chunk runs no symbol).
        self._marker.close()
        with self._pool_lock:  # no late callback may take a pool for this batch any more
            self._closing = True
            releasing = not self._released
            self._released = True
        if releasing:
            release(self._pool)



class ProcessBackend(Backend):
    """Run chunks in worker processes of procengine_nb's own warm loky pool (see the module docstring).

    ``max_workers`` defaults to the number of CPUs; idle workers exit after ``idle_timeout`` seconds.
    :meth:`close` (``engine.close()``, ``with ProcessingEngine(...)``) releases this backend: it never
    waits for running tasks, kills the workers of tasks a Stop abandoned, and leaves the warm pool to
    the next engine (:func:`shutdown_pools` stops it now).
    """

    name = "processes"
    shares_memory = False
    # Seconds of work per chunk. A hand-off costs the parent ~0.35 ms of CPU (loky's threads wake for it),
    # taken from the workers on a machine with as many cores as workers: 400 tasks of 5 ms took 1.09x
    # joblib's time with 10 ms chunks, 1.05x with 50 ms (bench/RESULTS.md). Stop stays prompt (a chunk
    # stops between two symbols: marker token); a dead worker fails only the symbol it was running.
    target_task_seconds = CROSS_PROCESS_TASK_SECONDS

    def __init__(self, max_workers: int | None = None, *, idle_timeout: float = 300.0) -> None:
        if max_workers is None:
            max_workers = loky.cpu_count()
        check_seconds(idle_timeout, "idle_timeout", strict=True)
        if idle_timeout >= 1e9:  # loky's workers wait this long on a queue
            raise ValueError(f"idle_timeout must be at most 999999999 seconds, got {idle_timeout!r}")
        self._max_workers = max_workers
        self._idle_timeout = float(idle_timeout)
        self._closed = False

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def _acquire(self, replacing: Pool | None = None) -> Pool:
        if self._closed and replacing is None:
            raise RuntimeError("this processes backend was closed")
        return acquire(self._max_workers, self._idle_timeout, replacing)

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _ProcessBatch(self, token)

    def close(self) -> None:
        """Release this backend (idempotent, never waits): new batches are refused; workers still
        running tasks a Stop abandoned are killed (now, or when the last batch on their pool ends)."""
        self._closed = True
        drop_stuck_pools()

    def __repr__(self) -> str:
        return f"<ProcessBackend max_workers={self._max_workers}>"
