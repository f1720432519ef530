"""Small shared helpers: timing, medians and percentiles, the machine description, Markdown tables."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata

__all__ = ["Table", "machine_description", "median", "percentile", "ratio_cell", "ratios", "rotating",
           "symbols"]

Times = dict[str, list[float]]
"""Seconds per round, by runner name."""


def symbols(n: int) -> list[str]:
    """``n`` distinct ticker-like symbols (strings, as a user would pass)."""
    return [f"SYM{i:07d}" for i in range(n)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rotating(runs: Mapping[str, Callable[[], int]], repeat: int, expected: int) -> tuple[Times, Times]:
    """Run every runner ``repeat`` times, round ``r`` in the order rotated by ``r`` places (so no runner
    always goes first), and return wall and CPU seconds per round (CPU: ``time.process_time``, all
    threads). Each runner returns how many results it made, which must be ``expected``."""
    names = list(runs)
    wall: Times = {name: [] for name in names}
    cpu: Times = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            cpu_start = time.process_time()
            start = time.perf_counter()
            count = runs[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            if count != expected:
                raise RuntimeError(f"{name} returned {count} results, expected {expected}")
    return wall, cpu


def ratios(times: Times, name: str, base: str) -> list[float]:
    """Per-round ratios of ``name`` to ``base`` in the same round (paired: drift cancels out)."""
    return [t / b for t, b in zip(times[name], times[base], strict=True)]


def ratio_cell(times: Times, name: str, base: str) -> str:
    """``median [min-max]`` of the per-round ratios, for a table cell."""
    values = ratios(times, name, base)
    return f"{median(values):.3f} [{min(values):.2f}-{max(values):.2f}]"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> str:
    try:
        import psutil

        return f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        return "unknown"


def machine_description() -> str:
    """One paragraph: CPU, cores, memory, OS, Python and the versions of everything compared."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in ("procengine_nb", "tqdm", "mpire", "joblib", "ipywidgets", "ipykernel")
    )
    return (
        f"{_cpu_model()}, {os.cpu_count()} logical cores, {_memory_gb()} RAM; "
        f"{platform.system()} {platform.release()}; Python {sys.version.split()[0]} "
        f"({platform.python_implementation()}); {packages}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


class Table:
    """A Markdown table built row by row."""

    def __init__(self, *headers: str) -> None:
        self.headers = headers
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"expected {len(self.headers)} cells, got {len(cells)}")
        self.rows.append(tuple(str(c) for c in cells))

    def render(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)
