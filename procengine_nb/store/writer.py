"""The background writer: one thread per batch's store session, so that no write ever waits in the batch.

The batch thread hands completed results over with :meth:`Writer.add` (a list append under a lock that no
I/O ever holds: it never blocks). The writer thread keys them, pickles their values (a value whose pickling
raises anything costs that value only) and writes them in batched transactions: when ``commit_results``
are waiting, or the oldest waited ``commit_seconds``, or at once once the batch ended (:meth:`close`) or
someone waits (:meth:`flush`). A write that finds the file locked (another connection holds a write
transaction) or fails otherwise waits at most ``_ATTEMPT_TIMEOUT`` in SQLite, keeps its rows and tries
again later, backing off up to ``_MAX_BACKOFF``; meanwhile the batch, its callbacks and its Stop go on.

Memory: the hand-off holds references to results the batch's ``BatchResult`` holds anyway; pickled rows
exist only for the slice being written (about ``commit_results``).

Lifetime: the thread starts with the first result and ends once the batch ended and everything handed to
it is written, or, when the file stays unwritable, ``give_up`` seconds after the batch ended (then it logs
once how many results of which batch in which file were not stored; they are in the returned
``BatchResult``). At interpreter exit, writers still running get that long to finish (``atexit``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from procengine_nb._safe import describe, logger, safe_repr, safe_str
from procengine_nb.models import SymbolResult
from procengine_nb.store.codec import encode, write
from procengine_nb.store.keys import KeyFunction, shown_name
from procengine_nb.store.schema import StoreVersionError, connect, transaction

__all__ = ["Writer", "log_line", "wait_for_writers", "writers_of"]

_log = logger("procengine_nb.store")  # never raises (see procengine_nb._safe.GuardedLogger)

_ATTEMPT_TIMEOUT = 0.2  # SQLite's busy timeout for one write attempt (seconds): then back off and retry
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
_YIELD_BYTES = 256 * 1024  # pickled bytes after which the writer lets other threads run (sleep(0))

_live_lock = threading.Lock()
_live: set[Writer] = set()  # writers whose thread runs (for flushes by path, and the exit)


class Writer:
    """Writes one batch's results to its store file on a thread of its own (see the module's docstring)."""

    def __init__(self, path: Path, batch: str, key: KeyFunction, code: str | None, *, commit_seconds: float,
                 commit_results: int, give_up: float) -> None:
        self.path = path
        self.batch = batch
        self._key = key
        self._code = code
        self._commit_seconds = commit_seconds
        self._commit_results = commit_results
        self._give_up = give_up
        self._clock = time.monotonic
        self._cond = threading.Condition(threading.Lock())
        # everything below is guarded by _cond
        self._pending: collections.deque[tuple[float, float, list[SymbolResult]]] = collections.deque()
        """Handed over, not encoded yet: (monotonic time, wall time, results)."""
        self._pending_count = 0
        self._rows: list[tuple[Any, ...]] = []  # encoded, not written yet (kept by a failed attempt)
        self._handed = 0  # results handed over in all
        self._settled = 0  # of which written, skipped (no key) or given up on
        self._urgent = False  # someone waits (flush) or the batch ended: write now
        self._closed_at: float | None = None
        self._retry_at = 0.0
        self._backoff = _FIRST_BACKOFF
        self._thread: threading.Thread | None = None
        self._exited = False
        self.failing: str | None = None
        """Why the last write failed (None when it succeeded, or none was tried)."""
        self.written = 0
        """Results written to the file."""
        self.lost = 0
        """Results that will never be written (their key raised, or the file stayed unwritable)."""
        self.unkept = 0
        """Results written without their value (it could not be pickled: the row says why)."""

    # -- the batch's side (never blocks on I/O) ---------------------------------------------------------
    def add(self, results: Iterable[SymbolResult]) -> None:
        """Hand completed results over (those read from the store are skipped)."""
        chunk = [r for r in results if not r.from_store]
        if not chunk:
            return
        now, wall = self._clock(), time.time()
        with self._cond:
            if self._closed_at is not None:  # pragma: no cover - the batch adds nothing after close()
                return
            was_idle = not self._pending and not self._rows
            self._pending.append((now, wall, chunk))
            self._pending_count += len(chunk)
            self._handed += len(chunk)
            if self._thread is None:
                self._start()
            elif was_idle or self._pending_count + len(self._rows) >= self._commit_results:
                self._cond.notify()

    def close(self) -> None:
        """The batch ended: write what is left now, then end the thread (returns at once)."""
        with self._cond:
            if self._closed_at is None:
                self._closed_at = self._clock()
                self._urgent = True
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Write what was handed over until now at once and wait for it: True when none of it still waits
        (written, or given up on and logged), False when ``timeout`` seconds passed first."""
        return self.wait_for(self.handed, timeout)

    def wait_for(self, target: int, timeout: float | None = None) -> bool:
        """Write at once and wait until the first ``target`` results handed over are settled (written, or
        given up on): True, or False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            if self._settled < target:
                self._urgent = True
                self._cond.notify_all()
            while self._settled < target and not self._exited:
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            return self._settled >= target

    @property
    def handed(self) -> int:
        """Results handed over in all."""
        with self._cond:
            return self._handed

    @property
    def settled(self) -> int:
        """Results handed over and settled (written, skipped or given up on)."""
        with self._cond:
            return self._settled

    @property
    def waiting(self) -> int:
        """Results handed over and not settled yet."""
        with self._cond:
            return self._handed - self._settled

    @property
    def running(self) -> bool:
        """True while the writer's thread runs."""
        return self._thread is not None and not self._exited

    # -- the writer's thread ----------------------------------------------------------------------------
    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name=f"procengine_nb store writer ({self.path.name})",
                                  daemon=True)  # the exit waits for it (atexit), bounded by give_up
        self._thread = thread
        with _live_lock:
            _live.add(self)
        thread.start()

    def _due(self, now: float) -> float | None:
        """Seconds until the next write (0: now; None: nothing to write). Called with _cond held."""
        waiting = self._pending_count + len(self._rows)
        if not waiting:
            return None
        if now < self._retry_at:
            return self._retry_at - now
        if self._urgent or self._closed_at is not None or waiting >= self._commit_results or self._rows:
            return 0.0
        return max(0.0, self._pending[0][0] + self._commit_seconds - now)

    def _take(self) -> tuple[list[tuple[Any, ...]], list[tuple[float, float, list[SymbolResult]]]]:
        """The rows kept by a failed attempt and the results to encode now (about commit_results in all)."""
        room = self._commit_results - len(self._rows)
        taken: list[tuple[float, float, list[SymbolResult]]] = []
        while self._pending and room > 0:
            item = self._pending.popleft()
            taken.append(item)
            self._pending_count -= len(item[2])
            room -= len(item[2])
        return self._rows, taken

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    while True:
                        due = self._due(self._clock())
                        if due == 0.0:
                            break
                        if due is None:
                            if self._closed_at is not None:
                                return
                            self._urgent = False
                        self._cond.wait(due)
                    rows, taken = self._take()
                    self._rows = []
                rows = rows + self._encode(taken)
                if not rows:
                    continue
                try:
                    if conn is None:
                        conn = connect(self.path, _ATTEMPT_TIMEOUT)
                    with transaction(conn):
                        write(conn, rows)
                except Exception as exc:  # locked, a full disk, the file gone: keep the rows, try later
                    if conn is not None and not _is_locked(exc):
                        conn.close()
                        conn = None
                    if self._failed(rows, exc, permanent=isinstance(exc, StoreVersionError)):
                        return
                    continue
                self._written(len(rows))
        except BaseException as exc:  # pragma: no cover - a bug here must not pass in silence
            log_line(logging.ERROR, "store %s: the writer of batch %r stopped: %s", self.path,
                     shown_name(self.batch), describe(exc, 500))
        finally:
            if conn is not None:
                conn.close()
            with self._cond:
                lost = self._handed - self._settled
                self.lost += lost
                self._settled = self._handed
                self._exited = True
                self._cond.notify_all()
            with _live_lock:
                _live.discard(self)

    def _encode(self, taken: list[tuple[float, float, list[SymbolResult]]]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        batch, key, code = self.batch, self._key, self._code
        skipped = unkept = size = 0
        for _, wall, results in taken:
            for result in results:
                try:
                    k = key(result.symbol)
                except BaseException as exc:  # it passed when handed out; a worker's copy may not
                    skipped += 1
                    log_line(logging.ERROR, "store %s: the result of %s was not stored: %s", self.path,
                             safe_repr(result.symbol, 80), safe_str(exc, 500))
                    continue
                row, note = encode(result, batch, k, code, wall)
                rows.append(row)
                if note is not None:
                    unkept += 1
                size += len(row[4] or b"") + 200
                if size >= _YIELD_BYTES:  # let the batch thread have the GIL between big values
                    size = 0
                    time.sleep(0)
        if skipped or unkept:
            with self._cond:
                self.unkept += unkept
                self.lost += skipped
                self._settled += skipped
                self._cond.notify_all()
        return rows

    def _written(self, count: int) -> None:
        with self._cond:
            recovered = self.failing is not None
            self.failing = None
            self._backoff = _FIRST_BACKOFF
            self._retry_at = 0.0
            self.written += count
            self._settled += count
            self._cond.notify_all()
        if recovered:
            log_line(logging.INFO, "store %s: writing again (%d result(s) of batch %r written)", self.path, count,
                     shown_name(self.batch))

    def _failed(self, rows: list[tuple[Any, ...]], exc: Exception, *, permanent: bool = False) -> bool:
        """Keep ``rows`` for the next attempt; True when it is time to give up (then it logged): after
        ``give_up`` seconds past the batch's end, or at once for a ``permanent`` failure (the file became a
        store of another version: trying again cannot help)."""
        with self._cond:
            now = self._clock()
            first = self.failing is None
            self.failing = describe(exc, 300)
            self._rows = rows + self._rows
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
            waiting = self._handed - self._settled
            closed_at = self._closed_at
            self._cond.notify_all()  # a flush waiting with skip_failing looks again
        if permanent:
            log_line(logging.ERROR, "store %s: %d result(s) of batch %r could not be written (%s); they are only in "
                     "the returned BatchResult", self.path, waiting, shown_name(self.batch), self.failing)
            return True
        if closed_at is not None and now - closed_at >= self._give_up:
            log_line(logging.ERROR, "store %s: %d result(s) of batch %r could not be written (%s; tried for %.0f s "
                     "after the batch ended); they are only in the returned BatchResult", self.path, waiting,
                     shown_name(self.batch), self.failing, self._give_up)
            return True
        if first:
            log_line(logging.WARNING, "store %s: cannot write %d result(s) of batch %r yet (%s); trying again in "
                     "the background", self.path, waiting, shown_name(self.batch), self.failing)
        return False


def log_line(level: int, msg: str, *args: Any) -> None:
    """Log a line of the store's (never under the writer's lock): a logging handler that raises costs the
    line, never the writer (its results would be lost) nor the batch thread."""
    try:
        _log.log(level, msg, *args)  # the engine's guarded logging: a handler's error, or logging's report
    except BaseException:  # of it to a closed stderr, is dropped there; a handler's Ctrl-C here
        pass


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def writers_of(path: Path, batch: str | None = None) -> list[Writer]:
    """This process's running writers of ``path`` (of batch ``batch`` only, when given)."""
    with _live_lock:
        return [w for w in _live if w.path == path and (batch is None or w.batch == batch)]


def wait_for_writers(path: Path, timeout: float | None, *, batch: str | None = None, skip_failing: bool = False,
                     cancelled: Callable[[], bool] | None = None) -> bool:
    """Wait until this process's writers of ``path`` (of ``batch`` only, when given) wrote what was handed
    to them before the call (what batches still running hand over meanwhile is not waited for): True when
    none of it still waits. ``skip_failing``: do not wait for a writer whose last write failed (a locked
    file); ``cancelled``: stop waiting (within ~10 ms) once it returns True."""
    deadline = None if timeout is None else time.monotonic() + timeout
    targets = [(writer, writer.handed) for writer in writers_of(path, batch)]
    done = True
    for writer, target in targets:
        while writer.settled < target and writer.running:
            if skip_failing and writer.failing is not None:
                done = False
                break
            if cancelled is not None and cancelled():
                return False
            step = 0.01 if cancelled is not None or skip_failing else None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                step = remaining if step is None else min(step, remaining)
            writer.wait_for(target, step)
    return done


def _forget_after_fork() -> None:
    """A forked child has none of its parent's writer threads (and the lock may have been held)."""
    global _live_lock, _live
    _live_lock = threading.Lock()
    _live = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _finish_at_exit() -> None:
    """Give the writers still running (their thread is a daemon) their bounded time to finish."""
    with _live_lock:
        writers = list(_live)
    for writer in writers:
        writer.close()
    for writer in writers:
        thread = writer._thread
        if thread is not None:
            thread.join(writer._give_up + 2 * _MAX_BACKOFF + 1.0)
