"""How a batch is observed: the :class:`JobView` protocol and the batch's single :class:`Publisher`.

A batch run is the one publisher of what happens to it. Everything that watches it (the user's
``progress_callback``, views such as the notebook panel or the terminal line, a user's own view) is a
*listener* of the batch's publisher, which calls each one through the same guard:

- ``update(progress)`` with each snapshot (the user callback gets every snapshot; views, which throttle
  anyway, get the last snapshot of each completed group);
- ``failed(result)`` with each failed :class:`~procengine_nb.SymbolResult`, as it happens (optional);
- ``finish(result, error)`` once, when the batch returned (``error`` is None) or crashed;
- ``waited()`` (optional) on the thread that waited for the job (``handle.result()``, ``await handle``)
  after it ended, so a view can show its final state from there too (in Jupyter: the waiting cell).

A listener that raises, whatever it raises (an exception whose ``__str__`` raises, ``SystemExit``, a
custom ``BaseException``), is logged a bounded number of times per batch with a count at the end, and
never stops the batch nor loses a result. Only ``KeyboardInterrupt`` goes through: it is the user's Ctrl-C
landing in a callback that runs on the main thread, and the batch treats it as an interrupt.

>>> seen = []
>>> publisher = Publisher(seen.append)
>>> from procengine_nb.progress import ProcessingProgress
>>> publisher.update(ProcessingProgress(total_symbols=2, completed_symbols=1))
>>> [p.completed_symbols for p in seen]
[1]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from procengine_nb._safe import describe, guarded, logger, safe_repr, type_name
from procengine_nb._tracebacks import format_text

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.models import BatchResult, SymbolResult
    from procengine_nb.progress import ProcessingProgress, ProgressCallback

__all__ = ["MAX_LOGGED_FAILURES", "JobView", "Publisher"]

_log = logger("procengine_nb.observe")  # never raises (see procengine_nb._safe.GuardedLogger)

MAX_LOGGED_FAILURES = 3
"""Distinct failures logged (with their traceback) per listener and batch; a failure identical to one
already logged, and any after these, is only counted (one line at the end of the batch)."""


@runtime_checkable
class JobView(Protocol):
    """What a view of a job implements: every snapshot, and once, the outcome.

    Optional methods, looked up by name: ``failed(result)`` (a failed ``SymbolResult`` as it happens) and
    ``waited()`` (called on the thread that waited for the ended job). All run on the batch's thread
    except ``waited``; keep them quick (throttle rendering yourself).

    >>> class Counter:
    ...     def __init__(self): self.updates = 0
    ...     def update(self, progress): self.updates += 1
    ...     def finish(self, result, error): pass
    >>> isinstance(Counter(), JobView)
    True
    """

    def update(self, progress: ProcessingProgress) -> None:
        """A new snapshot."""

    def finish(self, result: BatchResult | None, error: BaseException | None) -> None:
        """The job ended with ``result`` or crashed with ``error``; show the final state now."""


def check_view(view: object) -> None:
    """Raise a TypeError naming the problem unless ``view`` has ``update`` and ``finish`` methods."""
    if not (callable(getattr(view, "update", None)) and callable(getattr(view, "finish", None))):
        raise TypeError(
            f"view must have update(progress) and finish(result, error) methods, not {type_name(view)}"
        )


class _Listener:
    """One listener with its failure count (the guard's bookkeeping)."""

    __slots__ = ("target", "update", "failed", "finish", "waited", "failures", "logged", "every_snapshot",
                 "replay_lock", "ended")

    def __init__(self, target: Any, *, callback: bool = False) -> None:
        self.target = target
        # the replay of earlier failures (on the attaching thread) and the end (on the batch thread) take
        # it: every replayed failed() comes before finish(), none after
        self.replay_lock = threading.Lock()
        self.ended = False
        self.failures = 0
        self.logged: set[str] = set()  # the distinct failures logged (at most MAX_LOGGED_FAILURES)
        self.every_snapshot = callback
        if callback:  # the user's progress_callback: a plain callable
            self.update, self.failed, self.finish, self.waited = target, None, None, None
        else:
            self.update = target.update
            self.finish = target.finish
            failed, waited = getattr(target, "failed", None), getattr(target, "waited", None)
            self.failed = failed if callable(failed) else None
            self.waited = waited if callable(waited) else None


class Publisher:
    """The batch's one fan-out to its listeners, with one guard for all of them.

    Thread safety: listeners may be added from any thread (the list is replaced, never mutated in
    place); ``update``/``failed``/``finish`` are called by the batch's thread only. A listener added after
    the end gets ``finish`` at once, with the outcome. After the end it keeps its views (``waited``,
    ``close_views``), not the user's callback.
    """

    def __init__(self, callback: ProgressCallback | None = None, views: Iterable[Any] = ()) -> None:
        self._lock = threading.Lock()
        self._listeners: tuple[_Listener, ...] = ()
        self._callback: _Listener | None = None
        self._views: tuple[_Listener, ...] = ()
        self._outcome: tuple[BatchResult | None, BaseException | None] | None = None
        self._failures: list[SymbolResult] = []  # every failed result so far, for views attached late
        if callback is not None:
            self._callback = _Listener(callback, callback=True)
            self._listeners = (self._callback,)
        for view in views:
            self.add(view)

    @property
    def wants_each(self) -> bool:
        """True when the user's progress callback listens (it gets a snapshot per symbol; views only
        ever get the last of a group, so without a callback the batch makes one snapshot a group)."""
        return self._callback is not None

    @property
    def has_listeners(self) -> bool:
        """True when anyone listens (the batch skips making per-symbol snapshots for nobody)."""
        return bool(self._listeners)

    def add(self, view: Any, *, latest: ProcessingProgress | None = None) -> None:
        """Add a view (``update``/``finish``, optionally ``failed``/``waited``). Before the end it gets
        every failure published so far (``failed``, once each: a view attached a moment after the start
        still lists the symbols that failed at once), then ``latest`` (when given); after the end it
        gets the outcome at once. The replay of earlier failures runs on the calling thread and stops
        when the batch ends meanwhile: a view never gets ``failed`` after its ``finish`` (the result's
        ``errors`` hold every failure)."""
        check_view(view)
        listener = _Listener(view)
        with self._lock:
            outcome = self._outcome
            # kept after the end too: waited() and close_views() reach a view attached late
            self._views = (*self._views, listener)
            if outcome is None:
                self._listeners = (*self._listeners, listener)
            # the failures before this moment; failed() hands the later ones to this view itself
            missed = list(self._failures) if outcome is None and listener.failed is not None else []
        if outcome is not None:
            self._call(listener, listener.finish, *outcome)
            return
        for result in missed:
            with listener.replay_lock:
                if listener.ended:  # the batch ended meanwhile: its result holds these failures
                    break
                self._call(listener, listener.failed, result)
        if latest is not None:
            self._call(listener, listener.update, latest)

    # -- what the batch publishes -----------------------------------------------------------------
    def update(self, snapshot: ProcessingProgress) -> None:
        """One snapshot to every listener."""
        for listener in self._listeners:
            self._call(listener, listener.update, snapshot)

    def updates(self, snapshots: Iterable[ProcessingProgress], *, cancelled: Callable[[], bool]) -> None:
        """Snapshots of symbols that completed together: the user callback gets each one, views only the
        last (they render at most a few times a second). Once ``cancelled()`` is true, the callback is no
        longer called per symbol (the final snapshot reports the rest): a slow callback must not delay a
        Stop by one run per symbol still queued. ``snapshots`` is always consumed to the end."""
        callback = self._callback
        last = None
        if callback is None:
            for last in snapshots:  # noqa: B007 - consuming records them; only the last is kept
                pass
        else:  # the hot path (one call per symbol): the guard inlined
            fn = callback.update
            for snapshot in snapshots:
                last = snapshot
                if cancelled():
                    continue
                try:
                    fn(snapshot)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    self._failed(callback, exc)
        if last is not None:
            for view in self._views:
                self._call(view, view.update, last)

    def state(self, snapshot: ProcessingProgress) -> None:
        """A snapshot that records no completion (e.g. a symbol now waits to retry): to the views only,
        since the user callback is called once per completed symbol."""
        for view in self._views:
            self._call(view, view.update, snapshot)

    def failed(self, result: SymbolResult) -> None:
        """A failed result, as it happens, to the listeners that want it (and to views added later)."""
        with self._lock:
            self._failures.append(result)
            views = self._views
        for listener in views:
            if listener.failed is not None:
                self._call(listener, listener.failed, result)

    def finish(self, result: BatchResult | None, error: BaseException | None) -> None:
        """The end, once: the final snapshot to every listener (unless the batch crashed), then every view's
        ``finish``; then one line per listener that failed more often than it was logged."""
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = (result, error)
            listeners, views = self._listeners, self._views  # a view added from now on finishes itself
        # An interrupt (Ctrl-C landing in a callback) does not cut the end short: every view still gets
        # its final state, then the interrupt goes on.
        interrupt: KeyboardInterrupt | None = None
        calls: list[tuple[_Listener, Callable[..., Any], tuple[Any, ...]]] = []
        if result is not None:  # the final snapshot (100% unless cancelled) to everyone
            calls.extend((listener, listener.update, (result.progress,)) for listener in listeners)
        for view in views:  # waits for at most one replayed failed() of a view attached a moment ago
            with view.replay_lock:
                view.ended = True
        calls.extend((view, view.finish, (result, error)) for view in views)
        for listener, fn, args in calls:
            try:
                self._call(listener, fn, *args)
            except KeyboardInterrupt as exc:
                interrupt = interrupt or exc
        for listener in listeners:
            if listener.failures > len(listener.logged):
                _log.warning("%s raised %d times in this batch (%d distinct failures were logged)",
                             _name(listener), listener.failures, len(listener.logged))
        with self._lock:  # the end is published: the callback is not needed any more (a job listed by
            self._callback, self._listeners = None, ()  # jobs() does not keep what it holds alive)
        if interrupt is not None:
            raise interrupt

    def waited(self) -> None:
        """Tell the views that a waiter saw the end (call on the waiting thread)."""
        for listener in self._views:
            if listener.waited is not None:
                self._call(listener, listener.waited)

    def close_views(self) -> None:
        """Call ``close()`` on every view that has one (e.g. the panel releases its widget models)."""
        for listener in self._views:
            close = getattr(listener.target, "close", None)
            if callable(close):
                self._call(listener, close)

    # -- the guard --------------------------------------------------------------------------------
    @classmethod
    def _call(cls, listener: _Listener, fn: Callable[..., Any], *args: Any) -> None:
        # the one guard (procengine_nb._safe.guarded): a KeyboardInterrupt goes through (the user's
        # Ctrl-C on the main thread: the batch handles it as an interrupt); anything else is counted
        # and logged, and never stops the batch
        guarded(fn, *args, on_error=lambda exc: cls._failed(listener, exc))

    @staticmethod
    def _failed(listener: _Listener, exc: BaseException) -> None:
        """Count (and log, a bounded number of times) a listener's failure; never raises."""
        listener.failures += 1
        logged = listener.logged
        if len(logged) < MAX_LOGGED_FAILURES:
            text = describe(exc, 500)
            if text not in logged:
                logged.add(text)
                # the traceback as bounded, encodable text (a hostile exception cannot break the log)
                _log.error("%s raised %s (identical failures are not logged again; at most %d per batch)\n%s",
                           _name(listener), text, MAX_LOGGED_FAILURES, format_text(exc).rstrip("\n"))


def _name(listener: _Listener) -> str:
    kind = "progress callback" if listener.every_snapshot else "view"
    return f"{kind} {safe_repr(listener.target, 80)}"
