"""The warm loky pools of the processes backend: procengine_nb's own, one per process, shared by engines.

Never loky's process-wide reusable executor (other libraries share it): one warm pool per
``(max_workers, idle_timeout)``, reused by every engine, thread, ``start()`` and ``run()`` call, counted
per open batch (:func:`acquire`, :func:`release`). A pool where tasks a Stop or a timeout abandoned
still run, or a broken one, is *retired*: it takes no new batch and is shut down (its workers killed
when tasks still run there) as soon as its last batch closes. Every worker watches its parent and
exits within about half a second of its death (:func:`_watch_parent`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait as wait_futures
from typing import Any

try:
    import cloudpickle  # noqa: F401  (used by the chunk codec; checked here for the error message)
    import loky
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'backend="processes" needs loky and cloudpickle: pip install "procengine_nb[processes]"'
    ) from exc

__all__ = ["Pool", "acquire", "drop_stuck_pools", "register_exit_hook", "release", "shutdown_pools"]

_ABANDONED_GRACE = 0.1  # seconds the next batch gives abandoned tasks to finish before replacing the pool
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


class Pool:
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
_pools: dict[tuple[int, float], Pool] = {}  # the warm pools (one per key; in practice one)
_retired: list[Pool] = []  # retired pools that still have open batches
_exit_hook_registered = False


def _retire_locked(pool: Pool) -> None:
    if _pools.get(pool.key) is pool:
        del _pools[pool.key]
    pool.retired = True
    if pool.batches == 0:
        pool.shutdown()
    elif pool not in _retired:
        _retired.append(pool)


def acquire(max_workers: int, idle_timeout: float, replacing: Pool | None = None) -> Pool:
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
            pool = Pool(max_workers, idle_timeout)
            _pools[key] = pool
        pool.batches += 1
        return pool


def _release_locked(pool: Pool, *, retire: bool = False) -> None:
    pool.batches -= 1
    if retire and not pool.retired:
        _retire_locked(pool)
    elif pool.retired and pool.batches == 0:
        if pool in _retired:
            _retired.remove(pool)
        pool.shutdown()


def release(pool: Pool) -> None:
    with _lock:
        _release_locked(pool)


def drop_stuck_pools() -> None:
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


def register_exit_hook() -> None:
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
