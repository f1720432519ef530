"""Dead-worker recovery of the processes backend: after a worker died and broke the pool, only the
symbol it was running fails; every other symbol of the chunks in flight runs (again) on a fresh pool.

Each chunk's started file (:mod:`~procengine_nb.backends._started_file`) says whether it started,
which symbol it was running and in which worker process; the dead process is the one that broke the
pool (loky kills the others only afterwards). A chunk that had not started is *claimed* (the parent
creates its started file, so no worker of the broken pool runs it late) and sent again. Bounded: a
chunk lost unstarted by pools that broke before getting anything done is sent again at most
``_MAX_RESENDS`` times, and a symbol running at ``_MAX_DEATHS`` breaks is an ERROR even where the dead
process cannot be told (no ``/proc``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

from procengine_nb.backends._marker import BatchMarker
from procengine_nb.backends._remote_task import RemoteTask
from procengine_nb.backends._started_file import claim, read_progress
from procengine_nb.backends.runner import failed_result
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

__all__ = ["LOST_WITH_THE_POOL", "PoolRecovery", "process_gone"]

_MAX_RESENDS = 3  # times a chunk that never started is sent again after its pool broke
_MAX_DEATHS = 3  # breaks a symbol may be running at before it is an ERROR, when no dead worker is found
LOST_WITH_THE_POOL = (BrokenProcessPool, ShutdownExecutorError)


class PoolRecovery:
    """The recovery half of a processes batch (mixed into it): what to do with a chunk whose pool broke.

    The batch provides ``_token`` (its cancellation token), ``_marker`` (its directory, which names new
    started files), ``_send(task)`` (submit a task's payload to the batch's current pool) and
    ``_chunk(symbols, deaths)`` (encode and send a new chunk)."""

    _token: CancellationToken
    _marker: BatchMarker
    _send: Callable[[RemoteTask], None]
    _chunk: Callable[..., RemoteTask]

    def _lost(self, task: RemoteTask, error: BaseException) -> bool:
        """``task``'s pool broke (``error``): True when it was sent again (or completed) here, False when
        ``error`` stands for the whole chunk."""
        if self._token.is_cancelled:
            if claim(task.key):
                task.complete_cancelled()  # a Stop: it never started, and never will
                return True
            return False
        if claim(task.key):
            # It never started: its started file did not exist, and now it is ours, so a worker of
            # the broken pool that still picks the chunk up runs nothing (see run_encoded). It ran
            # no symbol: a fresh pool runs it under a new started file. Only pools that broke
            # before getting anything done count against it (a pool that cannot start at all).
            return self._resend(task, counted=not getattr(task.pool, "productive", False))
        return self._recover(task, error)

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
        if progress is None:  # its started file is gone (the batch is over), or the parent claimed it
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
        culprit = interrupted if process_gone(pid) or deaths[interrupted] >= _MAX_DEATHS else None
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


def process_gone(pid: int) -> bool:
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

