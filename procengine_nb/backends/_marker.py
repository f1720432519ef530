"""The Stop of a processes batch (and of a process-pool ``executor=``), as files on this machine: the
batch's directory and its cancel marker.

The token a processor gets in a worker process (when it declares ``cancellation_token``) is a
worker-local :class:`MarkerToken` that turns cancelled when the batch's *cancel marker* (a file in the
batch's temporary directory on this machine) appears, or when that directory is removed (the batch is
over), so workers see Stop within a few milliseconds and a chunk stops between two symbols, even one
that only starts after the batch returned. The chunks' started files live in the same directory
(:mod:`~procengine_nb.backends._started_file`). Dask does not use these files (its workers may be on
other hosts): see :mod:`~procengine_nb.backends._dask_channel`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
import time
import weakref
from typing import Any

from procengine_nb._validation import check_seconds
from procengine_nb.cancellation import CancellationToken

__all__ = ["CHECK_EVERY_MS", "HOSTNAME", "BatchMarker", "MarkerToken"]

_CHECK_EVERY = 0.005  # seconds between two looks at the cancel marker on a worker
CHECK_EVERY_MS = _CHECK_EVERY * 1000.0
HOSTNAME = socket.gethostname()


def _remove_directory(directory: str) -> None:
    for _attempt in range(3):  # a worker may create a started file while it is being removed
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.isdir(directory):
            return


class BatchMarker:
    """One batch's temporary directory on this machine (parent side).

    ``marker`` = ``(host name, path of the "stopped" file)`` goes to the workers; ``cancel()`` creates
    that file; ``started_file()`` names a chunk's started file. ``close()`` at the end of the batch
    removes the directory (also when this object is garbage-collected or the interpreter exits), and
    workers of this machine then treat the batch as over: a chunk that starts late runs no symbol.
    """

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="procengine-batch-")
        self.marker = (HOSTNAME, os.path.join(self.directory, "stopped"))
        self._finalizer = weakref.finalize(self, _remove_directory, self.directory)
        self._chunks = itertools.count()

    def cancel(self) -> None:
        try:
            with open(self.marker[1], "x"):
                pass
        except OSError:  # already there, or the batch is closed (the directory is gone)
            pass

    def started_file(self) -> str:
        # unique within the batch's own directory: a counter (uuid4 read os.urandom for every chunk)
        return os.path.join(self.directory, f"{next(self._chunks)}.started")

    def close(self) -> None:
        self._finalizer()


_ASKED = b"R"  # a stop marker written by a processor's cancel(): its reason follows (UTF-8)
_ASKED_NO_REASON = b"N"  # ... a cancel() without a reason (the parent's own Stop leaves the file empty)


class MarkerToken(CancellationToken):
    """A worker-local token that cancels itself once the batch's "stopped" file exists, or once the
    batch's directory is gone (the batch is over) — on the engine's machine only.

    ``marker`` is ``(hostname, path)``. On another host the file cannot be seen, so the token is
    never cancelled there. It looks at the file at most every 5 ms (a ``stat``), only while someone
    asks ``is_cancelled``, ``throw_if_cancelled()`` or ``wait()``; ``register`` callbacks run on the
    thread that notices.

    A processor calling ``cancel(reason)`` asks for the whole batch to stop, as on threads: the token
    writes the stop marker holding the reason (the other workers' tokens see it), and ``requested``
    (``(reason,)``, set also in a token that saw such a marker) makes the chunk's result tell the
    parent, which cancels the batch with that reason (``_remote_task.forward_cancel_request``).
    """

    __slots__ = ("_marker", "_next_check", "requested")

    def __init__(self, marker: tuple[str, str] | None) -> None:
        super().__init__()
        self._marker = marker
        self._next_check = 0.0
        self.requested: tuple[str | None] | None = None
        """``(reason,)`` once a processor of the batch asked for it to stop; None otherwise."""

    def cancel(self, reason: str | None = None) -> bool:
        """A processor asks for the batch to stop (see the class docstring); True for the first call."""
        first = super().cancel(reason)
        if first:
            self.requested = (self.reason,)
            self._write_request(self.reason)
        return first

    def _write_request(self, reason: str | None) -> None:
        marker = self._marker
        if marker is None or marker[0] != HOSTNAME:
            return  # (another host: only the chunk's result tells the parent)
        path = marker[1]
        temporary = f"{path}.{os.getpid()}.{id(self)}"
        try:
            with open(temporary, "wb") as file:
                file.write(_ASKED_NO_REASON if reason is None else _ASKED + reason.encode("utf-8", "replace"))
            os.link(temporary, path)  # atomic: a reader sees no marker or the whole of it
        except OSError:  # already stopped, or the batch is over
            pass
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass

    def _stopped(self, path: str) -> None:
        """The stop marker exists: a Stop (empty), or a processor's request (its reason)."""
        try:
            with open(path, "rb") as file:
                data = file.read(65536)
        except OSError:
            data = b""
        if data[:1] == _ASKED:
            self.requested = (data[1:].decode("utf-8", "replace"),)
        elif data == _ASKED_NO_REASON:
            self.requested = (None,)
        reason = self.requested[0] if self.requested is not None else None
        CancellationToken.cancel(self, reason if reason is not None else "the batch was stopped")

    def _poll(self) -> bool:
        if self._event.is_set():
            return True
        marker = self._marker
        if marker is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + _CHECK_EVERY
                host, path = marker
                if host != HOSTNAME:
                    self._marker = None  # another machine: the marker cannot reach us
                elif os.path.exists(path):
                    self._stopped(path)
                elif not os.path.isdir(os.path.dirname(path)):
                    CancellationToken.cancel(self, "the batch is over")
        return self._event.is_set()

    @property
    def is_cancelled(self) -> bool:
        """True once the batch was stopped (seen through the marker file) or ``cancel()`` was called."""
        return self._poll()

    def throw_if_cancelled(self) -> None:
        self._poll()
        super().throw_if_cancelled()

    def wait(self, timeout: float | None = None) -> bool:
        check_seconds(timeout, "timeout", allow_none=True)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._poll():
            remaining = _CHECK_EVERY if deadline is None else min(_CHECK_EVERY, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._event.wait(remaining)
        return True

    def __reduce__(self) -> tuple[Any, ...]:  # a processor may pass its token on to a subprocess
        return (MarkerToken, (self._marker,))

