"""The window: the tasks in flight, bounded, and the one queue through which they report back."""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from operator import attrgetter
from typing import Any

from procengine_nb.backends.base import Backend, BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.progress import ProgressTracker

from .task import Task

__all__ = ["WAKE", "Window"]

WAKE = object()
"""Put in the completion queue by a cancel, a pause, or a timed task's start: wakes the loop, no result."""

_start_of = attrgetter("start")


class Window:
    """At most ``size`` tasks handed to the batch's executor and not yet done with.

    Invariants (the batch's thread is the only writer; other threads read copies):
    - ``inflight`` maps each future ``executor.submit_chunk`` returned to its :class:`Task`; the future's
      done-callback puts it into ``completions``, so the loop waits on that one queue and never polls.
    - a task leaves ``inflight`` once: :meth:`take` (it finished), :meth:`take_back` (a pause withdrew it
      before it started: it waits in ``requeued``) or :meth:`give_up` (past its timeout: its future waits
      in ``abandoned`` until its late completion is ignored).
    - the tracker's ``running`` counts the symbols of the tasks in ``inflight``, or, where the workers
      report what runs (``executor.reports_running``), the tasks whose symbol runs now.
    - ``requeued`` is sorted by descending start: ``pop()`` gives the first, handed out before anything.
    """

    __slots__ = ("size", "inflight", "abandoned", "requeued", "completions", "executor", "wake", "_tracker",
                 "starts_stamped")

    def __init__(self, size: int, tracker: ProgressTracker) -> None:
        self.size = size
        self.inflight: dict[Future[Any], Task] = {}
        self.abandoned: set[Future[Any]] = set()
        self.requeued: list[Task] = []
        self.completions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.executor: BatchExecutor | None = None  # the batch's executor once open
        self.wake: Callable[[], None] = partial(self.completions.put, WAKE)
        """Wakes the loop (any thread)."""
        self._tracker = tracker
        self.starts_stamped = False
        """True where workers share memory: every chunk records its start in ``Task.started_at`` (so a
        task without one has not started)."""

    def open(self, backend: Backend, token: CancellationToken) -> BatchExecutor:
        executor = self.executor = backend.open(token)
        return executor

    def submit(self, task: Task, chunk: Chunk) -> None:
        """Hand ``chunk`` (``task``'s symbols) to the executor; raises what the executor raises (then
        nothing changed)."""
        future = self.executor.submit_chunk(chunk)  # type: ignore[union-attr]
        self.inflight[future] = task
        if not self.executor.reports_running:  # type: ignore[union-attr]  # else from the workers' reports
            self._tracker.running += task.stop - task.start
        future.add_done_callback(self.completions.put)

    def take(self, future: Future[Any]) -> Task | None:
        """The finished ``future``'s task, out of the window; None for a task given up on (its outcome
        was recorded when it was)."""
        task = self.inflight.pop(future, None)
        if task is None:
            self.abandoned.discard(future)
            return None
        self.uncount(task.stop - task.start)
        return task

    def take_back(self) -> None:
        """At a pause: take back the tasks the backend can withdraw before they start (``take_back``:
        those queued in a thread pool, or waiting for a slot on the batch's event loop), so that only the
        running symbols finish; they are handed out first when the batch continues, or are unprocessed
        after a Stop. Their futures' completions are ignored from now on (no longer in flight)."""
        inflight = self.inflight
        for future in self.executor.take_back([f for f in inflight if not f.done()]):  # type: ignore[union-attr]
            task = inflight.pop(future)
            self.uncount(task.stop - task.start)
            self.requeued.append(task)
        self.requeued.sort(key=_start_of, reverse=True)

    def give_up(self, late: list[tuple[Future[Any], Task]]) -> None:
        """Tasks past their deadline: cancelled if still queued, their workers abandoned (a stuck thread
        is replaced), out of the window; their late completions are ignored."""
        executor = self.executor
        assert executor is not None
        futures = [f for f, _ in late]
        executor.cancel_pending(futures)
        executor.abandon(futures)

    def forget(self, future: Future[Any]) -> Task:
        """One task given up on (after :meth:`give_up`): out of the window, its completion ignored."""
        task = self.inflight.pop(future)
        self.abandoned.add(future)
        self.uncount(task.stop - task.start)
        return task

    def uncount(self, symbols: int) -> None:
        """A task left the window: ``symbols`` fewer running (or, reported by the workers, a recount)."""
        executor = self.executor
        if executor is not None and executor.reports_running:
            self._tracker.running = self.running_now()
        else:
            self._tracker.running -= symbols

    def running_now(self) -> int:
        """How many symbols run now, for a backend that reports it (see :meth:`running_symbols`)."""
        executor = self.executor
        assert executor is not None
        index = executor.running_index
        return sum(1 for future in list(self.inflight) if index(future) is not None)

    def still_running(self) -> int:
        """At the end: the symbols a cancel left running on workers (reported, never awaited)."""
        executor = self.executor
        if executor is not None and executor.reports_running:
            return self.running_now()
        return sum(task.stop - task.start for f, task in self.inflight.items() if not f.done())

    def drain(self, take: Callable[[Future[Any]], None]) -> None:
        """On a cancel: pass every completion already queued to ``take`` (what finished is kept)."""
        completions = self.completions
        while True:
            try:
                item = completions.get_nowait()
            except queue.Empty:
                break
            if item is not WAKE:
                take(item)

    def close(self, cancelled: bool) -> None:
        """Cancel what is still queued and close the executor, never waiting for tasks given up on
        (``cancelled``, or past their timeout)."""
        executor = self.executor
        if executor is not None:
            executor.cancel_pending(list(self.inflight))
            executor.close(cancelled=cancelled or bool(self.abandoned))

    def running_symbols(self, limit: int) -> list[Any]:
        """Up to ``limit`` symbols running now, never work still queued (safe from any thread): the symbol
        each started task runs, as its workers report it (``reports_running``: Dask), as it is read from
        them (``running_since``: processes, a process-pool ``executor=``), or as the task's own record
        says where workers share memory (its start, and the results its worker collected so far, or the
        symbol a coroutine chunk awaits). A backend that can tell none of these: every symbol handed out
        and not completed."""
        items = list(self.inflight.copy().items())
        items.sort(key=lambda item: item[1].start)
        executor = self.executor
        reports = executor is not None and executor.reports_running
        reads = executor is not None and type(executor).running_since is not BatchExecutor.running_since
        stamped = self.starts_stamped
        out: list[Any] = []
        for future, task in items:
            if reports:
                index = executor.running_index(future)  # type: ignore[union-attr]
                running = () if index is None else task.symbols[index:index + 1]
            elif stamped:
                running = ()
                if task.started_at is not None:
                    if task.running is not None:
                        index = task.running[0]
                    elif task.collected is not None:
                        index = len(task.collected)
                    else:
                        index = None
                    running = task.symbols if index is None else task.symbols[index:index + 1]
            elif reads:
                since = executor.running_since(future)  # type: ignore[union-attr]
                running = () if since is None else task.symbols[since[0]:since[0] + 1]
            else:
                running = task.symbols
            for symbol in running:
                if len(out) >= limit:
                    return out
                out.append(symbol)
        return out

    def release(self) -> None:
        """After the end: drop the executor and the tasks."""
        self.executor = None
        self.inflight = {}
        self.abandoned = set()
        self.requeued = []
