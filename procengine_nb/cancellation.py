"""Cooperative cancellation: a thread-safe token, its exception, callbacks, deadlines and linking.

One rule, as in trio and .NET: cancelling a token only *asks* for work to stop. The engine stops
handing out symbols at once and returns its partial result; a processor that wants to stop mid-symbol
checks the token (``throw_if_cancelled()``) or waits on it (``wait(timeout)``).

>>> token = CancellationToken()
>>> token.is_cancelled
False
>>> token.cancel("user pressed Stop")
True
>>> token.is_cancelled, token.reason
(True, 'user pressed Stop')
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from procengine_nb._safe import describe, guarded, logger, safe_repr, type_name
from procengine_nb._tracebacks import format_text
from procengine_nb._validation import check_seconds

__all__ = ["CancellationRegistration", "CancellationToken", "ProcessingCancelledException"]

_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)


class ProcessingCancelledException(Exception):
    """Raised by :meth:`CancellationToken.throw_if_cancelled` when the token has been cancelled.

    ``partial_results`` holds the results finished before the cancel, where the raiser knows them
    (``None`` otherwise: a processor's own ``throw_if_cancelled()`` does not know them;
    ``BatchResult.raise_if_cancelled()`` raises one carrying the whole partial ``BatchResult``);
    ``reason`` is the token's cancel reason.

    >>> ProcessingCancelledException("stopped", partial_results=[]).partial_results
    []
    """

    def __init__(
        self,
        message: str = "processing was cancelled",
        *,
        partial_results: Sequence[Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.partial_results = partial_results
        self.reason = reason


class CancellationRegistration:
    """Handle returned by :meth:`CancellationToken.register`; ``unregister()`` removes the callback.

    ``unregister()`` returns True when the callback was removed before it ran, False when it had already
    run (or been removed). It is safe to call any number of times from any thread.
    """

    __slots__ = ("_token", "_callback")

    def __init__(self, token: CancellationToken | None, callback: Callable[[], Any]) -> None:
        self._token = token
        self._callback = callback

    def unregister(self) -> bool:
        token, self._token = self._token, None
        if token is None:
            return False
        return token._remove(self)

    def _run(self) -> None:
        # through the one guard: whatever a callback raises (but a Ctrl-C), cancellation reaches the others
        guarded(self._callback, on_error=self._failed)

    def _failed(self, exc: BaseException) -> None:
        _log.error("cancellation callback %s raised %s\n%s", safe_repr(self._callback, 200),
                   describe(exc, 500), format_text(exc).rstrip("\n"))

    def __enter__(self) -> CancellationRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()


_propagation = threading.local()  # per thread: the links waiting to cancel their child (a queue, not a stack)


class _Link:
    """A parent's callback to its linked child. A cancel reaches a chain of linked tokens of any depth
    without recursion: the first link to fire on a thread cancels its child and then, in a loop, every
    child whose parent that cancel reached (each cancel's own links only queue their child)."""

    __slots__ = ("child", "parent")

    def __init__(self, child: CancellationToken, parent: CancellationToken) -> None:
        self.child = child
        self.parent = parent

    def __call__(self) -> None:
        queue: deque[_Link] | None = getattr(_propagation, "queue", None)
        if queue is not None:  # a cancel is propagating on this thread: its loop cancels this child
            queue.append(self)
            return
        queue = _propagation.queue = deque((self,))
        interrupt: KeyboardInterrupt | None = None
        try:
            while queue:
                link = queue.popleft()
                try:
                    link.child.cancel(link.parent.reason)
                except KeyboardInterrupt as exc:  # a callback's Ctrl-C: the chain is still cancelled
                    interrupt = interrupt or exc
        finally:
            _propagation.queue = None
        if interrupt is not None:
            raise interrupt

    def __repr__(self) -> str:
        return f"<link to {self.child!r}>"


class CancellationToken:
    """A thread-safe, one-way cancellation flag built on :class:`threading.Event`.

    - ``cancel(reason=None)`` sets it (idempotent; returns True only for the call that cancelled it);
    - ``is_cancelled`` (read-only property) reads it; ``wait(timeout)`` blocks until it is set;
    - ``throw_if_cancelled()`` raises :class:`ProcessingCancelledException` once it is set;
    - ``register(fn)`` runs ``fn()`` exactly once when it is cancelled (at once if it already is);
    - ``cancel_after(seconds)`` sets a deadline; ``CancellationToken.linked(a, b)`` is cancelled
      as soon as any parent is.

    >>> parent = CancellationToken()
    >>> child = CancellationToken.linked(parent)
    >>> calls = []
    >>> _ = child.register(lambda: calls.append("stopped"))
    >>> parent.cancel()
    True
    >>> child.is_cancelled, calls
    (True, ['stopped'])
    """

    __slots__ = ("_event", "_lock", "_callbacks", "_reason", "_timer", "_links", "__weakref__")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[CancellationRegistration] = []
        self._reason: str | None = None
        self._timer: threading.Timer | None = None
        self._links: list[CancellationRegistration] = []

    # -- state ----------------------------------------------------------------------------------
    @property
    def is_cancelled(self) -> bool:
        """True once :meth:`cancel` has been called (by anyone, a deadline or a linked parent)."""
        return self._event.is_set()

    @property
    def cancelled_now(self) -> Callable[[], bool]:
        """``is_cancelled`` as a function (the event's own ``is_set``): for hot loops that ask per item."""
        return self._event.is_set

    @property
    def reason(self) -> str | None:
        """The reason given to the first :meth:`cancel` call, or None."""
        return self._reason

    def cancel(self, reason: str | None = None) -> bool:
        """Cancel the token and run the registered callbacks (once each, in registration order).

        Idempotent and thread-safe: only the first call changes anything and returns True.
        """
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type_name(reason)}")
        if reason is not None and type(reason) is not str:
            reason = str.__str__(reason)  # a str subclass's own methods stay out of every message
        with self._lock:
            if self._event.is_set():
                return False
            self._reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
            links, self._links = self._links, []
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        for link in links:  # a cancelled child no longer needs to hear from its parents
            link.unregister()
        for registration in callbacks:
            registration._token = None
            registration._run()
        return True

    def throw_if_cancelled(self) -> None:
        """Raise :class:`ProcessingCancelledException` if the token is cancelled; otherwise do nothing."""
        if self._event.is_set():
            raise ProcessingCancelledException(
                "processing was cancelled" + (f": {self._reason}" if self._reason else ""),
                reason=self._reason,
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the token is cancelled or ``timeout`` seconds pass; return ``is_cancelled``."""
        check_seconds(timeout, "timeout", allow_none=True)
        return self._event.wait(timeout)

    # -- callbacks ------------------------------------------------------------------------------
    def register(self, callback: Callable[[], Any]) -> CancellationRegistration:
        """Run ``callback()`` exactly once when the token is cancelled; at once if it already is.

        The callback runs on the thread that cancels. Exceptions it raises are logged, not propagated.
        Returns a :class:`CancellationRegistration` whose ``unregister()`` removes it.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type_name(callback)}")
        registration = CancellationRegistration(self, callback)
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(registration)
                return registration
        registration._token = None
        registration._run()
        return registration

    def _remove(self, registration: CancellationRegistration) -> bool:
        with self._lock:
            try:
                self._callbacks.remove(registration)
            except ValueError:
                return False
            return True

    # -- deadlines and links --------------------------------------------------------------------
    def cancel_after(self, seconds: float | None, reason: str | None = None) -> None:
        """Cancel the token ``seconds`` from now (a deadline). A later call replaces the deadline;
        ``cancel_after(None)`` removes it (no limit).

        The timer is a daemon thread that is cancelled as soon as the token is, so it never outlives it.
        """
        check_seconds(seconds, "seconds", allow_none=True)
        if seconds is None:
            with self._lock:
                old, self._timer = self._timer, None
            if old is not None:
                old.cancel()
            return
        message = reason if reason is not None else f"deadline of {seconds:g}s reached"
        timer = threading.Timer(seconds, self.cancel, args=(message,))
        timer.daemon = True
        timer.name = "procengine-deadline"
        with self._lock:
            if self._event.is_set():
                return
            old, self._timer = self._timer, timer
            timer.start()
        if old is not None:
            old.cancel()

    @classmethod
    def linked(cls, *parents: CancellationToken) -> CancellationToken:
        """A new token that is cancelled as soon as any of ``parents`` is (with the parent's reason).

        Cancelling the linked token does not cancel its parents. Call :meth:`close` (or cancel it) when
        done with a linked token so its parents drop their callbacks to it.
        """
        for i, parent in enumerate(parents):
            if not isinstance(parent, CancellationToken):
                raise TypeError(
                    f"parents[{i}] must be a CancellationToken, not {type_name(parent)}"
                )
        child = cls()
        for parent in parents:
            registration = parent.register(_Link(child, parent))
            with child._lock:
                if child._event.is_set():
                    registration.unregister()
                    break
                child._links.append(registration)
        return child

    def close(self) -> None:
        """Drop the links to parent tokens and any pending deadline without cancelling the token."""
        with self._lock:
            links, self._links = self._links, []
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        for link in links:
            link.unregister()

    def __repr__(self) -> str:
        state = "cancelled" if self.is_cancelled else "active"
        reason = f" reason={safe_repr(self._reason, 200)}" if self._reason else ""
        return f"<CancellationToken {state}{reason}>"
