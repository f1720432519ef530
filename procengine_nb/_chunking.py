"""How many symbols go into one task: the batch measures its symbols and sizes the chunks.

Handing a task to an executor costs more than a tiny symbol (a thread wakes, a process pickles), so
tiny symbols travel in chunks that fill the backend's ``target_task_seconds`` (threads 5 ms, processes
50 ms, Dask 200 ms), while every symbol is still reported on its own. Towards the end of a batch the
chunks shrink so that the workers finish together, never below a quarter of the target: a smaller
chunk only adds hand-offs.

>>> sizer = ChunkSizer(target_seconds=0.01, workers=2)
>>> sizer.size(remaining=1000)  # nothing measured yet: one symbol a task
1
>>> from procengine_nb import ResultStatus, SymbolResult
>>> sizer.measured([SymbolResult(n, ResultStatus.SUCCESS, n, None, 0.5) for n in range(4)])  # 0.5 ms each
>>> sizer.size(remaining=1000)  # 20 symbols fill 10 ms
20
>>> sizer.size(remaining=12)  # the end: what is left, balanced across the workers
5
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

__all__ = ["MAX_CHUNK", "ChunkSizer"]

MAX_CHUNK = 4096
"""Symbols per task at most (the processor's own time says nothing of the per-symbol costs around it)."""

_SAMPLE = 64  # results of a chunk whose durations update the mean (a strided sample)
_duration_ms = attrgetter("duration_ms")


class ChunkSizer:
    """Symbols per task from the measured time per symbol (used by the batch's own thread only).

    ``fixed`` (the engine's ``chunk_size=``) overrides the measurement; ``timed`` batches (``timeout=``)
    run one symbol a task, since a timeout applies to each symbol from its own start.
    """

    __slots__ = ("_target", "_workers", "_fixed", "_timed", "mean_seconds")

    def __init__(self, target_seconds: float, workers: int, *, fixed: int | None = None,
                 timed: bool = False) -> None:
        self._target = target_seconds
        self._workers = workers
        self._fixed = fixed
        self._timed = timed
        self.mean_seconds = 0.0
        """Smoothed processor time per symbol (0.0: nothing measured yet)."""

    def measured(self, results: Sequence[Any]) -> None:
        """Fold the ``duration_ms`` of a finished chunk's results into the mean (a strided sample of 64)."""
        if not results:
            return
        sample = results if len(results) <= _SAMPLE else results[::len(results) // _SAMPLE]
        per_symbol = sum(map(_duration_ms, sample)) / 1000.0 / len(sample)
        mean = self.mean_seconds
        self.mean_seconds = per_symbol if mean == 0.0 else 0.5 * (mean + per_symbol)

    def size(self, remaining: int) -> int:
        """Symbols for the next task, ``remaining`` being how many are left to hand out."""
        if self._timed:
            return 1
        if self._fixed is not None:
            return min(self._fixed, remaining)
        mean = self.mean_seconds
        if mean <= 0.0 or mean >= self._target:
            return 1
        fill = int(self._target / mean)  # symbols that take the target time
        size = min(fill, MAX_CHUNK)
        balance = max(1, remaining // (self._workers * 4), min(fill // 4, MAX_CHUNK))
        return max(1, min(size, balance, remaining))
