"""``python -m bench.snapshots``: what one progress snapshot costs to make, side by side in one process.

The engine makes one :class:`~procengine_nb.ProcessingProgress` per completed symbol (the W0 hot path). Three
ways to make the same 13-field snapshot, timed in thread CPU time (less sensitive to other processes than
the wall clock), median of rounds in rotating order:

- ``tracker fast path``: ``progress._snapshot`` (slotted, frozen; fills a writable twin, then
  ``__class__`` assignment) — what the tracker uses;
- ``dict-based (before)``: a frozen dataclass with a ``__dict__``, filled by ``__dict__.update`` — how the
  tracker made snapshots before they were slotted (a callback could write through that ``__dict__``);
- ``checked constructor``: ``ProcessingProgress(...)`` with its validation, what a user's own snapshot costs.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

from procengine_nb.progress import ProcessingProgress, _snapshot

N = 50_000


# the same fields, as the frozen dataclass with a __dict__ that snapshots were before
_DictSnapshot = dataclasses.make_dataclass(
    "_DictSnapshot", [(f.name, f.type) for f in dataclasses.fields(ProcessingProgress)], frozen=True)


def _fast(n: int) -> None:
    for i in range(n):
        _snapshot(n, i, "AAPL", 0, 12.5, 100.0, 4, 80.0, False, False, True, 0, 0)


def _dict_based(n: int) -> None:
    new = object.__new__
    for i in range(n):
        made = new(_DictSnapshot)
        made.__dict__.update({
            "total_symbols": n, "completed_symbols": i, "current_symbol": "AAPL", "errors_count": 0,
            "elapsed_time_ms": 12.5, "estimated_remaining_ms": 100.0, "running_symbols": 4,
            "rate_per_second": 80.0, "cancelled": False, "finished": False, "total_known": True,
            "retrying": 0, "from_store": 0,
        })


def _checked(n: int) -> None:
    for i in range(n):
        ProcessingProgress(n, i, "AAPL", 0, 12.5, 100.0, 4, 80.0, False, False, True, 0, 0)


WAYS = {"tracker fast path": _fast, "dict-based (before)": _dict_based, "checked constructor": _checked}


def run(rounds: int = 7, n: int = N) -> str:
    """Median thread-CPU nanoseconds per snapshot for each way, as a Markdown table."""
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    names = list(WAYS)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.thread_time()
            WAYS[name](n)
            times[name].append((time.thread_time() - start) / n * 1e9)
    base = statistics.median(times["dict-based (before)"])
    lines = ["| way | ns CPU / snapshot | x dict-based |", "|---|---|---|"]
    for name in names:
        median = statistics.median(times[name])
        lines.append(f"| {name} | {median:.0f} | {median / base:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    smoke = "--smoke" in sys.argv
    print(run(rounds=1 if smoke else 7, n=1_000 if smoke else N))
