"""Every job of this process: ``procengine_nb.jobs()``, the way back to a job whose variable is gone.

A job started by ``ProcessingEngine.start()`` or ``run()`` is registered before its thread starts and
moves to the ended jobs when it is done; the registry keeps every running job and the last
:data:`ENDED_KEPT` that ended (an ended handle holds its result, not its engine: see
``JobHandle``). ``process_batch`` (blocking) is not listed: its caller has the result.

Thread-safe: one lock guards both collections; ``jobs()`` returns a new list each time.

>>> from procengine_nb import ProcessingEngine, jobs
>>> handle = ProcessingEngine(str.upper, max_workers=1).start(["a"], )
>>> jobs()[0] is handle
True
>>> _ = handle.result(timeout=10)
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.handle import JobHandle

__all__ = ["ENDED_KEPT", "JobList", "jobs"]

ENDED_KEPT = 20
"""How many ended jobs ``jobs()`` keeps (the latest to end)."""

_lock = threading.Lock()
_order = itertools.count()  # start order (newest first in jobs())
_running: dict[JobHandle, int] = {}  # handle -> start order; only while running
_ended: deque[tuple[int, JobHandle]] = deque(maxlen=ENDED_KEPT)  # (start order, handle), in end order


def register(handle: JobHandle) -> None:
    """List ``handle`` as running (before its thread starts); it moves to the ended jobs when done."""
    with _lock:
        _running[handle] = next(_order)
    handle.future.add_done_callback(lambda _future: _end(handle))


def forget(handle: JobHandle) -> None:
    """Unlist a job whose thread could not start."""
    with _lock:
        _running.pop(handle, None)


def _end(handle: JobHandle) -> None:
    with _lock:
        order = _running.pop(handle, None)
        if order is not None:
            _ended.append((order, handle))  # the oldest ended job drops out past ENDED_KEPT


def jobs() -> JobList:
    """Every job of this process started by ``start()`` or ``run()`` that is still running, and the last
    20 that ended, newest (latest started) first, as a :class:`JobList` (a ``list`` of ``JobHandle``).

    In a notebook its display is one widget: a live panel (Stop, Pause) per running job and a summary
    line per ended one, the way back to a job after a page reload or a lost variable; ``print(jobs())``
    shows one line per job. ``jobs()[0].show()`` displays the newest job's panel in the current cell.
    """
    with _lock:
        listed = [(order, handle) for handle, order in _running.items()]
        listed.extend(_ended)
    listed.sort(key=lambda item: item[0], reverse=True)
    return JobList(handle for _, handle in listed)


class JobList(list):  # type: ignore[type-arg]
    """The jobs ``jobs()`` lists, newest first: a plain ``list`` of ``JobHandle`` that displays itself.

    ``repr()`` is one line per job (name, state, counts); in a notebook, ``display(jobs())`` (or ``jobs()``
    as a cell's last expression) shows one widget with the jobs' live panels, made by the notebook side
    on first display (the engine never imports widgets).
    """

    def __repr__(self) -> str:
        if not self:
            return "no jobs"
        return "\n".join(handle.line() for handle in self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _ipython_display_(self) -> None:
        """Display the jobs' widget (see ``procengine_nb.one_liner.show_jobs``)."""
        from procengine_nb.one_liner import show_jobs  # the notebook side, imported on first display

        show_jobs(self)
