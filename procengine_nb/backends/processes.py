"""The ``"processes"`` backend: a warm loky pool of its own (``pip install procengine_nb[processes]``).

For CPU-bound processors that hold the GIL. Functions defined in a notebook cell work: the processor
and the symbols travel with cloudpickle (see :mod:`procengine_nb.backends._remote`).

>>> from procengine_nb import ProcessingEngine
>>> with ProcessingEngine(abs, backend="processes", max_workers=2) as engine:
...     sorted(r.value for r in engine.process_batch([-1, 2, -3]))
[1, 2, 3]

What it can and cannot do (honest limits):

- Stop drops every chunk loky has not handed to a worker yet (a chunk already in loky's call queue
  cannot be withdrawn, but it runs no symbol once it starts), and the processors' token (a
  worker-local :class:`~procengine_nb.backends._remote.MarkerToken`) turns cancelled within ~5 ms, so a
  chunk stops between two symbols and a processor that checks its token stops mid-symbol. A processor
  that ignores its token keeps running in its worker process until it returns (loky cannot stop a
  running task without killing the pool); the final snapshot counts exactly the chunks that had
  started (each creates a small "started" file next to the marker as it starts).
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
from concurrent.futures import wait as wait_futures
from typing import Any

from procengine_nb._validation import check_seconds
from procengine_nb.backends._remote import (
    BatchMarker,
    RemoteTask,
    _ProcessorBlob,
    encode_chunk,
    read_progress,
    run_encoded,
)
from procengine_nb.backends.base import Backend, BatchExecutor, Chunk
from procengine_nb.backends.runner import failed_result
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

try:
    import cloudpickle  # noqa: F401  (used by remote; checked here for the error message)
    import loky
    from loky.process_executor import BrokenProcessPool, ShutdownExecutorError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'backend="processes" needs loky and cloudpickle: pip install "procengine_nb[processes]"'
    ) from exc

__all__ = ["ProcessBackend", "shutdown_pools"]

_ABANDONED_GRACE = 0.1  # seconds the next batch gives abandoned tasks to finish before replacing the pool
_MAX_RESENDS = 3  # times a chunk that never started is sent again after its pool broke
_MAX_DEATHS = 3  # breaks a symbol may be running at before it is an ERROR, when no dead worker is found
_LOST_WITH_THE_POOL = (BrokenProcessPool, ShutdownExecutorError)
_PARENT_POLL_SECONDS = 0.5  # how often a worker looks whether the process that started it is still there


def _watch_parent(parent: int) -> None:
    """Each worker's initializer: a daemon thread that ends the worker (``os._exit``) within about
    ``_PARENT_POLL_SECONDS`` of its parent's death, however the parent died (``kill -9`` included), even
    while the worker's main thread is blocked (say, writing a 1 MB value to a pipe nobody reads).

    The parent is gone when this process was re-parented (``os.getppid()`` changed: POSIX), or, when
    the worker was not started by the parent itself, when no process ``parent`` exists any more."""
    direct = os.getppid() == parent

    def gone() -> bool:
        if direct:
            return os.getppid() != parent
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it exists (not ours to signal)
            return False
        return False

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if gone():
                os._exit(1)

    if os.name == "posix":  # (Windows: no re-parenting to see, and os.kill(pid, 0) would kill)
        threading.Thread(target=watch, name="procengine-parent-watch", daemon=True).start()


class _Pool:
    """One loky executor of procengine_nb's own and what the backends know about it.

    ``batches`` counts the open batches using it; ``abandoned`` holds loky futures a Stop or a timeout
    left running; ``busy`` counts tasks submitted and not finished. A *retired* pool takes no new batch
    and is shut down as soon as its last batch closes (its workers killed when tasks still run there).
    """

    def __init__(self, max_workers: int, idle_timeout: float) -> None:
        self.key = (max_workers, idle_timeout)
        # every worker watches this process and exits when it is gone (workers never outlive it)
        self.executor = loky.ProcessPoolExecutor(max_workers=max_workers, timeout=idle_timeout,
                                                 initializer=_watch_parent, initargs=(os.getpid(),))
        self.idle_timeout = idle_timeout
        self.batches = 0
        self.abandoned: set[Any] = set()
        self.busy = 0
        self.lock = threading.Lock()  # guards busy (done callbacks run on loky's thread)
        self.retired = False
        self.closed = False
        self.warm_until = 0.0  # monotonic time until which the workers are known to be started
        # a task completed here, or a worker died running a symbol: a break of this pool was not
        # for nothing (chunks it lost unstarted are sent again without counting against them)
        self.productive = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        future = self.executor.submit(fn, *args)
        with self.lock:
            self.busy += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Any) -> None:
        with self.lock:
            self.busy -= 1
        if not future.cancelled() and future.exception() is None:
            self.productive = True

    def stuck(self) -> bool:
        return any(not f.done() for f in list(self.abandoned))

    def broken(self) -> bool:
        flags = getattr(self.executor, "_flags", None)
        return bool(getattr(flags, "broken", None) or getattr(flags, "shutdown", False))

    def shutdown(self) -> None:
        """Stop it without waiting: graceful when idle, workers killed when anything still runs there."""
        if self.closed:
            return
        self.closed = True
        with self.lock:
            busy = self.busy
        try:
            self.executor.shutdown(wait=False, kill_workers=busy > 0 or self.stuck())
        except Exception:  # pragma: no cover - already broken / shut down
            pass


_lock = threading.Lock()
_pools: dict[tuple[int, float], _Pool] = {}  # the warm pools (one per key; in practice one)
_retired: list[_Pool] = []  # retired pools that still have open batches
_exit_hook_registered = False


def _retire_locked(pool: _Pool) -> None:
    if _pools.get(pool.key) is pool:
        del _pools[pool.key]
    pool.retired = True
    if pool.batches == 0:
        pool.shutdown()
    elif pool not in _retired:
        _retired.append(pool)


def _acquire(max_workers: int, idle_timeout: float, replacing: _Pool | None = None) -> _Pool:
    """The warm pool for this size, counted as used by one more batch (and ``replacing`` by one less)."""
    key = (max_workers, idle_timeout)
    pool = _pools.get(key)
    if pool is not None and pool.abandoned and replacing is None:
        # tasks a Stop abandoned: give cooperative ones a moment, never wait for the others
        wait_futures(list(pool.abandoned), timeout=_ABANDONED_GRACE)
    with _lock:
        if replacing is not None:
            _release_locked(replacing, retire=True)
        pool = _pools.get(key)
        if pool is not None and (pool.broken() or pool.stuck()):
            _retire_locked(pool)  # its workers are busy with abandoned work, or it is broken
            pool = None
        if pool is None:
            for other in list(_pools.values()):  # one warm pool at a time: idle pools of other sizes go
                if other.batches == 0:
                    _retire_locked(other)
            pool = _Pool(max_workers, idle_timeout)
            _pools[key] = pool
        pool.batches += 1
        return pool


def _release_locked(pool: _Pool, *, retire: bool = False) -> None:
    pool.batches -= 1
    if retire and not pool.retired:
        _retire_locked(pool)
    elif pool.retired and pool.batches == 0:
        if pool in _retired:
            _retired.remove(pool)
        pool.shutdown()


def _release(pool: _Pool) -> None:
    with _lock:
        _release_locked(pool)


def _drop_stuck_pools() -> None:
    """Retire every pool where abandoned tasks still run (killed now, or when its last batch ends)."""
    with _lock:
        for pool in list(_pools.values()):
            if pool.stuck():
                _retire_locked(pool)


def shutdown_pools() -> None:
    """Shut down procengine_nb's warm worker processes now, without waiting for anything.

    Idle workers exit; workers still running a task (one a Stop abandoned, or a batch still open) are
    killed. The next batch starts a fresh pool. Otherwise the pool lives until its workers have been
    idle for ``idle_timeout`` seconds, or until the interpreter exits.

    >>> from procengine_nb.backends.processes import shutdown_pools
    >>> shutdown_pools()  # idle workers exit; the next batch starts a fresh pool
    """
    with _lock:
        pools = list(_pools.values()) + _retired
        _pools.clear()
        _retired.clear()
        for pool in pools:
            pool.retired = True
    for pool in pools:
        pool.shutdown()


def _shutdown_at_exit() -> None:
    """Registered after loky's own exit hook, so it runs first (``threading._register_atexit`` runs hooks
    in reverse order): loky would wait for running tasks; this kills the workers of busy pools."""
    shutdown_pools()


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    with _lock:
        if _exit_hook_registered:
            return
        _exit_hook_registered = True
    try:
        threading._register_atexit(_shutdown_at_exit)  # type: ignore[attr-defined]
    except RuntimeError:  # pragma: no cover - the interpreter is already shutting down
        pass


class _ProcessBatch(BatchExecutor):
    def __init__(self, backend: ProcessBackend, token: CancellationToken) -> None:
        self._backend = backend
        self._pool = backend._acquire()
        self._pool_lock = threading.Lock()  # the batch thread and loky's callbacks may both replace it
        self._closing = False
        self._released = False
        self._marker = BatchMarker()
        self._blob = _ProcessorBlob()
        # Stop reaches chunks already handed to workers through the marker file (same machine).
        self._registration = token.register(self._marker.cancel)
        self._token = token
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
        _register_exit_hook()  # after loky registered its own hook at the pool's first start
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

    def _submit_on(self, fn: Callable[..., Any], /, *args: Any) -> tuple[_Pool, Any]:
        """Submit ``fn(*args)`` to this batch's pool: ``(the pool that took it, loky's future)``."""
        pool = self._pool
        try:
            return pool, pool.submit(fn, *args)
        except (BrokenProcessPool, ShutdownExecutorError, RuntimeError):
            # A worker died earlier in this batch (its chunks were already failed or sent again) or
            # the pool was shut down: the rest go to a fresh pool.
            pool = self._replace(pool)
            future = pool.submit(fn, *args)
            _register_exit_hook()
            return pool, future

    def _replace(self, broken: _Pool) -> _Pool:
        """The pool that replaces ``broken`` for this batch (once, whichever thread asks first)."""
        with self._pool_lock:
            if self._closing:
                raise RuntimeError("the batch is over")
            if self._pool is broken:
                self._pool = self._backend._acquire(replacing=broken)
            return self._pool

    def _complete(self, task: RemoteTask, future: Any) -> None:
        """Complete the engine's future from loky's (on loky's thread); send again a chunk that its
        broken pool lost before it started."""
        if future.cancelled():
            task.complete_cancelled()
            return
        error = future.exception()
        if error is None:
            _forget(task.key)  # the result is here: the chunk's started file has done its job
            task.complete_with_blobs(future.result())
            return
        if isinstance(error, _LOST_WITH_THE_POOL) and not self._token.is_cancelled:
            if _claim(task.key):
                # It never started: its started file did not exist, and now it is ours, so a worker of
                # the broken pool that still picks the chunk up runs nothing (see run_encoded). It ran
                # no symbol: a fresh pool runs it under a new started file. Only pools that broke
                # before getting anything done count against it (a pool that cannot start at all).
                if self._resend(task, counted=not getattr(task.pool, "productive", False)):
                    return
            elif self._recover(task, error):
                return
        elif isinstance(error, _LOST_WITH_THE_POOL) and _claim(task.key):
            task.complete_cancelled()  # a Stop: it never started, and never will
            return
        task.complete_with_error(error)

    def _resend(self, task: RemoteTask, *, counted: bool) -> bool:
        """Send ``task`` again under a new started file; False (nothing sent) once ``counted`` resends
        would pass ``_MAX_RESENDS``, or when no pool takes it."""
        if counted:
            task.resends += 1
        if task.resends > _MAX_RESENDS:
            return False
        task.key = self._marker.started_file()
        task.payload = (*task.payload[:-1], task.key)
        try:
            self._send(task)
        except Exception:  # the batch is over, or the fresh pool refused it too: the error stands
            return False
        return True

    def _recover(self, task: RemoteTask, error: BaseException) -> bool:
        """A chunk that had started when its pool broke: its started file says which symbol was
        running, and the worker's pid whether that worker is the one that died. The symbol a dead
        worker was running is an ERROR (``error``); every other symbol of the chunk runs again on the
        fresh pool (those that had run lost their results with the pool: they may run twice). Returns
        False when the chunk cannot be told apart (the error then stands for all of it)."""
        progress = read_progress(task.key)
        if progress is None:
            return False
        running, pid = progress
        sent = [i for i in range(len(task.symbols)) if i not in task.local]
        if running < 0 or pid <= 0:  # it started, but no symbol had begun: nothing ran
            return self._resend(task, counted=not getattr(task.pool, "productive", False))
        if running >= len(sent):  # it had run to its end (its worker went on): only the result was lost
            return self._resend(task, counted=True)
        interrupted = sent[running]
        deaths = dict(task.deaths)
        deaths[interrupted] = deaths.get(interrupted, 0) + 1
        # its worker died (not killed by loky afterwards), or it was running at every break so far
        culprit = interrupted if _process_gone(pid) or deaths[interrupted] >= _MAX_DEATHS else None
        if culprit is not None and task.pool is not None:
            task.pool.productive = True
        again = [i for i in sent if i != culprit]
        done = dict(task.local)
        if culprit is not None:
            done[culprit] = failed_result(task.symbols[culprit], error, 0.0)
        if not again:
            task.complete_with_results(done)
            return True
        try:
            rerun = self._chunk([task.symbols[i] for i in again],
                                {position: deaths[i] for position, i in enumerate(again) if i in deaths})
        except Exception:  # the batch is over, or no fresh pool: the error stands
            return False
        rerun.add_done_callback(lambda f, task=task, again=again, done=done: _assemble(task, f, again, done))
        return True

    def started(self, future: Future[Any]) -> bool:
        """A chunk started once its started file exists (``timeout=`` counts from then)."""
        key = getattr(future, "key", None)
        return future.done() or key is None or os.path.exists(key)

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        stopping = self._token.is_cancelled
        if stopping:  # before looking at the started files (the token's own callback may lag)
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
            release = not self._released
            self._released = True
        if release:
            _release(self._pool)


def _assemble(task: RemoteTask, rerun: Future[Any], indices: list[int], done: dict[int, SymbolResult]) -> None:
    """Complete ``task`` from the results it kept (``done``) and those of the chunk that ran the rest
    again (``indices`` of ``task.symbols``, in order)."""
    if rerun.cancelled():
        ran: list[SymbolResult] = []
    elif rerun.exception() is not None:
        error = rerun.exception()
        ran = [failed_result(task.symbols[i], error, 0.0) for i in indices]
    else:
        ran = rerun.result()
    results = dict(done)
    for index, result in zip(indices, ran, strict=False):
        results[index] = result
    task.complete_with_results(results)


def _process_gone(pid: int) -> bool:
    """True when process ``pid`` has exited (gone, or a zombie not reaped yet). Asked while loky fails
    the futures of a broken pool, before it kills the workers that are still alive: the dead one is
    the one that broke it. False when it cannot be told (no ``/proc``): a symbol then counts as guilty
    after ``_MAX_DEATHS`` breaks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return os.path.isdir("/proc/self")  # Linux: no /proc/<pid> means it is gone
    except OSError:
        return False
    return bool(fields) and fields[0] in (b"Z", b"X")


def _claim(path: str) -> bool:
    """Create a chunk's started file for the parent: True when no worker had started the chunk (and
    now none will), False when one had (or the batch's directory is gone)."""
    try:
        with open(path, "x"):
            return True
    except OSError:
        return False


def _forget(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # the batch's directory is gone already
        pass


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
    target_task_seconds = 0.05

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

    def _acquire(self, replacing: _Pool | None = None) -> _Pool:
        if self._closed and replacing is None:
            raise RuntimeError("this processes backend was closed")
        return _acquire(self._max_workers, self._idle_timeout, replacing)

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _ProcessBatch(self, token)

    def close(self) -> None:
        """Release this backend (idempotent, never waits): new batches are refused; workers still
        running tasks a Stop abandoned are killed (now, or when the last batch on their pool ends)."""
        self._closed = True
        _drop_stuck_pools()

    def __repr__(self) -> str:
        return f"<ProcessBackend max_workers={self._max_workers}>"
