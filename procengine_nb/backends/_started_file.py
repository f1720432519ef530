"""A processes chunk's started file: who owns the chunk, and how far it got.

A worker creates the file (exclusively) as the chunk starts and memory-maps it (:class:`StartedFile`);
the parent reads it (:func:`read_progress`) or creates it itself first (:func:`claim`) so that no
worker runs the chunk any more. It lives in the batch's directory (:class:`~procengine_nb.backends.
_marker.BatchMarker`); the parent removes it once it has the result (:func:`forget`), or with the
directory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading

__all__ = ["PROGRESS_BYTES", "StartedFile", "claim", "forget", "read_progress"]

PROGRESS_BYTES = 24
_CLAIMED = b"parent"  # what the parent's claim holds (shorter than a worker's file)


class StartedFile:
    """A chunk's started file, memory-mapped: ``[0]`` is the index of the symbol running (-1: none yet;
    the chunk's length: it ended), ``[1]`` this worker's pid, ``[2]`` the time (``time.monotonic_ns()``,
    one clock for every process of the machine) at or shortly before which symbol ``[0]`` started (see
    :func:`~procengine_nb.backends._worker.run_columns`). Plain
    memory writes (~40 ns each), read by the parent after a pool broke (:func:`read_progress`) and when
    it is asked which symbol runs (:func:`read_running`)."""

    __slots__ = ("_map", "view")

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, PROGRESS_BYTES)
            self._map = mmap.mmap(fd, PROGRESS_BYTES)
        finally:
            os.close(fd)
        self.view = memoryview(self._map).cast("q")
        self.view[0] = -1
        self.view[1] = os.getpid()
        self.view[2] = 0

    def close(self) -> None:
        self.view.release()
        self._map.close()


def read_progress(path: str) -> tuple[int, int] | None:
    """``(index of the symbol that was running, pid)`` from a chunk's started file; None when it is gone.

    A worker's file shorter than :data:`PROGRESS_BYTES` reads ``(-1, 0)``: no symbol had begun. A worker
    creates the file, then sizes it (:class:`StartedFile`), so a worker that was between the two (or was
    killed there) leaves it empty. The parent's own :func:`claim` reads None: no worker has the chunk."""
    try:
        with open(path, "rb") as file:
            data = file.read(PROGRESS_BYTES)
    except OSError:
        return None
    if data == _CLAIMED:
        return None
    if len(data) < PROGRESS_BYTES:
        return -1, 0
    index, pid, _ = struct.unpack("qqq", data)
    return index, pid


def read_running(path: str) -> tuple[int, int] | None:
    """``(index of the symbol running now, its start in time.monotonic_ns())`` from a chunk's started
    file (the start at most ~5 ms of quick symbols early); None when no symbol of it runs (not started,
    gone, or ended)."""
    try:
        with open(path, "rb") as file:
            data = file.read(PROGRESS_BYTES)
    except OSError:
        return None
    if len(data) < PROGRESS_BYTES:
        return None
    index, pid, at = struct.unpack("qqq", data)
    if index < 0 or pid <= 0 or at <= 0:
        return None
    return index, at


def claim(path: str) -> bool:
    """Create a chunk's started file for the parent: True when no worker had started the chunk (and
    now none will), False when one had (or the batch's directory is gone).

    The file appears whole, saying it is the parent's (written aside, then linked into place: a
    reader never takes it for a worker's file not sized yet); the name aside is the calling thread's,
    so a pause and a broken pool claiming at once do not undo each other."""
    aside = f"{path}.{threading.get_ident()}.claim"
    try:
        with open(aside, "wb") as file:
            file.write(_CLAIMED)
        os.link(aside, path)
    except OSError:
        return False
    else:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def forget(path: str) -> None:
    """Remove a chunk's started file (its result is here)."""
    try:
        os.unlink(path)
    except OSError:  # the batch's directory is gone already
        pass
