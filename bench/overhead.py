"""Throughput: every runner on every workload, side by side in one process, repeated in rotating order.

Each run is measured twice: wall-clock time (what the user waits) and the process's CPU time over all
threads (``time.process_time``: what the run consumed). On a loaded machine the wall clock mostly
measures the scheduler; CPU time still resolves a few percent, so both are reported.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench.baselines import RUNNERS, Runner
from bench.common import Table, median, ratio_cell, ratios, rotating, symbols
from bench.workloads import WORKLOADS, Workload, calibrate_w2

__all__ = ["measure", "run"]

BARE = "bare ThreadPoolExecutor + as_completed"
ENGINE = "procengine_nb process_batch (callback + token)"


def measure(workload: Workload, n: int, runners: dict[str, Runner], repeat: int, workers: int
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per run for each runner; round ``r`` runs the runners rotated by ``r`` places."""
    items = symbols(n)
    runs = {name: (lambda runner=runner: runner(workload.fn, items, workers)) for name, runner in runners.items()}
    return rotating(runs, repeat, n)


def _ratios(times: dict[str, list[float]], name: str) -> list[float]:
    return ratios(times, name, BARE)


def _cell(times: dict[str, list[float]], name: str) -> str:
    return ratio_cell(times, name, BARE)


def run(*, smoke: bool, repeat: int, workers: int = 4, only: Sequence[str] = ()) -> str:
    measured = calibrate_w2()
    lines = [f"W2 calibrated to {measured * 1000:.2f} ms of CPU per call. {workers} workers; {repeat} rounds per "
             "workload, runners in rotating order. Times are medians; ratios are medians of per-round ratios "
             "to the bare executor (min-max in brackets). CPU = process CPU time over all threads."]
    verdicts: list[str] = []
    for workload in WORKLOADS:
        if only and workload.name not in only:
            continue
        n = workload.smoke_n if smoke else workload.n
        print(f"  {workload.name} ({workload.description}), N={n} ...", file=sys.stderr, flush=True)
        wall, cpu = measure(workload, n, RUNNERS, repeat, workers)
        table = Table("runner", "wall µs/symbol", "wall x bare", "CPU µs/symbol", "CPU x bare")
        for name in sorted(RUNNERS, key=lambda k: median(_ratios(wall, k))):
            table.add(name, f"{median(wall[name]) / n * 1e6:.2f}", _cell(wall, name),
                      f"{median(cpu[name]) / n * 1e6:.2f}", _cell(cpu, name))
        lines.append(f"\n### {workload.name}: {workload.description}, N={n:,}\n\n{table.render()}")
        wall_ratio = median(_ratios(wall, ENGINE))
        cpu_ratio = median(_ratios(cpu, ENGINE))
        if workload.name.startswith("W0"):
            others = {k: median(_ratios(wall, k)) for k in RUNNERS
                      if k != BARE and not k.startswith("procengine_nb")}
            best = min(others, key=lambda k: others[k])
            ok = wall_ratio <= 0.5 and all(wall_ratio < v for v in others.values())
            verdicts.append(f"- {workload.name}: engine {wall_ratio:.3f}x bare in wall time (target ≤ 0.5x; "
                            f"CPU {cpu_ratio:.3f}x), best other baseline {best} {others[best]:.3f}x → "
                            f"{'met' if ok else 'MISSED'}")
        else:
            ok_wall, ok_cpu = wall_ratio <= 1.02, cpu_ratio <= 1.02
            verdicts.append(f"- {workload.name}: engine {(wall_ratio - 1) * 100:+.1f}% wall, "
                            f"{(cpu_ratio - 1) * 100:+.1f}% CPU vs bare (target ≤ +2%) → wall "
                            f"{'met' if ok_wall else 'MISSED'}, CPU {'met' if ok_cpu else 'MISSED'}")
    if smoke:
        verdicts.append("- (smoke run: tiny N, the verdicts mean nothing)")
    lines.append("\nTargets:\n" + "\n".join(verdicts))
    return "\n".join(lines)
