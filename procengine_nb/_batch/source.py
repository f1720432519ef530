"""The input: a sized sequence sliced as it is, or a lazy iterator drawn chunk by chunk, only when the
window has room (read-ahead bounded by the window)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from procengine_nb._chunking import ChunkSizer
from procengine_nb._safe import describe, logger, safe_str
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult, UnprocessedView
from procengine_nb.progress import ProgressTracker

__all__ = ["LazySource", "SizedSource"]

_log = logger("procengine_nb.engine")
_UNKNOWN_REMAINING = 1 << 20  # what a lazy input without total= counts as left, for the chunk size


class SizedSource:
    """An input with ``len()``: chunks are slices of it, handed out in input order.

    Invariants: ``symbols[:next_index]`` were handed out, ``symbols[next_index:]`` never were (the
    untouched tail: ``unprocessed`` views it, never copies it); ``dropped`` holds ``(position, symbol)``
    handed out that never ran (a task that stopped early, or taken back at a pause and not handed out
    again). ``symbols`` is what is handed out: on a store rerun, without what the store holds.
    """

    __slots__ = ("symbols", "next_index", "dropped")
    lazy = False
    exhausted = True
    input_error = None

    def __init__(self, symbols: Sequence[Any]) -> None:
        self.symbols = symbols
        self.next_index = 0
        self.dropped: list[tuple[int, Any]] = []

    def more(self) -> bool:
        """True while part of the input was never handed out."""
        return self.next_index < len(self.symbols)

    def next(self, sizer: ChunkSizer) -> tuple[int, int, Any] | None:
        """The next chunk ``(start, stop, symbols)`` (not handed out until :meth:`handed_out`), or None."""
        start, total = self.next_index, len(self.symbols)
        if start >= total:
            return None
        stop = start + sizer.size(total - start)
        return start, stop, self.symbols[start:stop]

    def handed_out(self, stop: int) -> None:
        """The chunk :meth:`next` gave was accepted by the executor."""
        self.next_index = stop

    def refused(self, start: int, stop: int, symbols: Any) -> None:
        """The executor refused the chunk :meth:`next` gave: it stays in the untouched tail."""

    def drop(self, start: int, stop: int, symbols: Any) -> None:
        """Symbols handed out that will never run."""
        self.dropped.extend(zip(range(start, stop), symbols, strict=True))

    def settle(self, results: BatchResult, never: list[tuple[int, Any]], tracker: ProgressTracker) -> None:
        """At the end: ``never`` (handed out, never completed) and the tail are the result's unprocessed."""
        never.extend(self.dropped)
        results.unprocessed = UnprocessedView(self.symbols, [i for i, _ in never], self.next_index)
        results.input_exhausted = True
        results.input_error = None


class LazySource:
    """An input without ``len()`` (an iterator), drawn on the batch's thread, a chunk at a time.

    Invariants: ``drawn`` symbols were drawn and handed out (positions ``0..drawn-1``, in draw order);
    ``skipped`` symbols were drawn and never handed out (their results came from the store or their key
    raised: counted by ``reruns.py``); the tracker's total is at least ``drawn + skipped``, and equal to
    it (``total_known``) once ``exhausted``. ``dropped`` as for :class:`SizedSource`, plus a chunk drawn
    and refused. ``input_error`` is what the iterator raised (it ended the input and cancelled the batch).
    ``held``: symbols taken from the input and not handed out yet when an interrupt came (a Ctrl-C in
    ``key=``, see ``reruns.py``): unprocessed, with the chunk being drawn.
    """

    __slots__ = ("iterator", "hint", "drawn", "skipped", "exhausted", "input_error", "dropped", "held",
                 "_tracker", "_token", "_job_id")
    lazy = True

    def __init__(self, iterator: Iterator[Any], hint: int | None, tracker: ProgressTracker,
                 token: CancellationToken, job_id: Any) -> None:
        self.iterator = iterator
        self.hint = hint
        self.drawn = 0
        self.skipped = 0
        self.exhausted = False
        self.input_error: BaseException | None = None
        self.dropped: list[tuple[int, Any]] = []
        self.held: list[Any] = []
        self._tracker = tracker
        self._token = token
        self._job_id = job_id

    def more(self) -> bool:
        return not self.exhausted

    def next(self, sizer: ChunkSizer) -> tuple[int, int, Any] | None:
        """Draw the next chunk ``(start, stop, symbols)`` (handed out as drawn), or None (the end, or the
        input raised)."""
        if self.exhausted:
            return None
        chunk = self.draw(sizer.size(self.remaining()))
        if not chunk:
            return None
        return self.drawn - len(chunk), self.drawn, chunk

    def draw(self, size: int) -> list[Any]:
        """Draw up to ``size`` symbols. At the input's end, the total becomes known. If the input raises
        (anything but an interrupt), the batch is cancelled with that reason (the exception is kept as
        ``input_error``), and what was drawn before still counts; an interrupt (``KeyboardInterrupt``;
        the input's ``SystemExit`` is an input error like any other) is re-raised after that, with the
        partial result."""
        iterator = self.iterator
        chunk: list[Any] = []
        append = chunk.append
        try:
            for _ in range(size):
                append(next(iterator))
        except StopIteration:
            self.exhausted = True
        except BaseException as exc:
            self.exhausted = True
            chunk.extend(self.held)
            self.drawn += len(chunk)
            self.dropped.extend(zip(range(self.drawn - len(chunk), self.drawn), chunk, strict=True))
            self.grow_total()
            if isinstance(exc, KeyboardInterrupt):  # an interrupt: run() keeps the partial result
                raise
            self.input_error = exc
            _log.error("job %s: the input raised while symbol #%d was drawn: %s", safe_str(self._job_id, 80),
                       self.drawn + 1, describe(exc, 500))
            self._token.cancel(f"the input raised {describe(exc, 500)} after {self.drawn} symbol(s)")
            return []
        self.drawn += len(chunk)
        self.grow_total()
        return chunk

    def handed_out(self, stop: int) -> None:
        """Drawn is handed out: nothing to note."""

    def refused(self, start: int, stop: int, symbols: Any) -> None:
        """The executor refused a drawn chunk: drawn, never run."""
        self.drop(start, stop, symbols)

    def drop(self, start: int, stop: int, symbols: Any) -> None:
        self.dropped.extend(zip(range(start, stop), symbols, strict=True))

    def grow_total(self) -> None:
        tracker, drawn = self._tracker, self.drawn + self.skipped
        if self.exhausted:
            tracker.total, tracker.total_known = drawn, True
        elif drawn > tracker.total:  # no hint, or the hint was too low
            tracker.total = drawn

    def remaining(self) -> int:
        """Symbols left by the ``total=`` hint, for the chunk size (without one: a large number)."""
        hint = self.hint
        drawn = self.drawn + self.skipped
        if hint is None or hint <= drawn:
            return _UNKNOWN_REMAINING
        return hint - drawn

    def settle(self, results: BatchResult, never: list[tuple[int, Any]], tracker: ProgressTracker) -> None:
        """At the end: ``never`` (drawn, never completed) is the result's unprocessed, by position."""
        never.extend(self.dropped)
        results.unprocessed = UnprocessedView(Drawn(never, self.drawn), [i for i, _ in never],  # type: ignore[arg-type]
                                              self.drawn)
        if self.exhausted:
            tracker.total, tracker.total_known = self.drawn + self.skipped, True
        results.input_exhausted = self.exhausted
        results.input_error = self.input_error


class Drawn:
    """The symbols of a lazy input that a cancel left unprocessed, by input position (a sparse sequence
    for :class:`UnprocessedView`: ``len`` is how many were drawn, only the kept positions are readable)."""

    __slots__ = ("_symbols", "_count")

    def __init__(self, pairs: list[tuple[int, Any]], count: int) -> None:
        self._symbols = dict(pairs)
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Any:
        return self._symbols[index]
