"""Small shared helpers: timing, medians and percentiles, the machine description, Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata

__all__ = ["Table", "machine_description", "median", "percentile", "symbols"]


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
