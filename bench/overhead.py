"""Throughput: every runner on every workload, side by side in one process, repeated in rotating order."""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from bench.baselines import RUNNERS, Runner
from bench.common import Table, median, symbols, timed
from bench.workloads import WORKLOADS, Workload, calibrate_w2

__all__ = ["measure", "run"]

BARE = "bare ThreadPoolExecutor + as_completed"
ENGINE = "procengine_nb process_batch (callback + token)"


def measure(workload: Workload, n: int, runners: dict[str, Runner], repeat: int, workers: int
            ) -> dict[str, list[float]]:
    """Seconds per run for each runner; round ``r`` runs the runners rotated by ``r`` places."""
    items = symbols(n)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            counted: list[int] = []
            runner = runners[name]
            seconds = timed(lambda runner=runner, counted=counted: counted.append(runner(workload.fn, items, workers)))
            if counted != [n]:
                raise RuntimeError(f"{name} on {workload.name} returned {counted} results, expected {n}")
            times[name].append(seconds)
    return times


def _ratios(times: dict[str, list[float]], name: str) -> list[float]:
    """Per-round ratios to the bare executor of the same round (paired: drift cancels out)."""
    return [t / b for t, b in zip(times[name], times[BARE], strict=True)]


def run(*, smoke: bool, repeat: int, workers: int = 4, only: Sequence[str] = ()) -> str:
    measured = calibrate_w2()
    lines = [f"W2 calibrated to {measured * 1000:.2f} ms per call. {workers} workers; "
             f"{repeat} rounds per workload, runners in rotating order; times are medians, "
             "ratios are medians of per-round ratios to the bare executor (range in brackets)."]
    verdicts: list[str] = []
    for workload in WORKLOADS:
        if only and workload.name not in only:
            continue
        n = workload.smoke_n if smoke else workload.n
        print(f"  {workload.name} ({workload.description}), N={n} ...", file=sys.stderr, flush=True)
        times = measure(workload, n, RUNNERS, repeat, workers)
        table = Table("runner", "µs/symbol (median)", "x bare (median [min-max])", "overhead vs bare")
        for name in sorted(RUNNERS, key=lambda k: median(times[k])):
            ratios = _ratios(times, name)
            per_symbol = median(times[name]) / n * 1e6
            mid = median(ratios)
            table.add(name, f"{per_symbol:.2f}", f"{mid:.3f} [{min(ratios):.3f}-{max(ratios):.3f}]",
                      f"{(mid - 1) * 100:+.1f}%")
        lines.append(f"\n### {workload.name}: {workload.description}, N={n:,}\n\n{table.render()}")
        engine_ratio = median(_ratios(times, ENGINE))
        if workload.name.startswith("W0"):
            others = {k: median(_ratios(times, k)) for k in RUNNERS if k not in (ENGINE, BARE)
                      and not k.startswith("procengine_nb")}
            best = min(others, key=lambda k: others[k])
            ok = engine_ratio <= 0.5 and all(engine_ratio < v for v in others.values())
            verdicts.append(f"- {workload.name}: engine {engine_ratio:.3f}x bare (target ≤ 0.5x), best other "
                            f"baseline {best} {others[best]:.3f}x → {'met' if ok else 'MISSED'}")
        else:
            ok = engine_ratio <= 1.02
            verdicts.append(f"- {workload.name}: engine {(engine_ratio - 1) * 100:+.1f}% vs bare "
                            f"(target ≤ +2%) → {'met' if ok else 'MISSED'}")
    if smoke:
        verdicts.append("- (smoke run: tiny N, the verdicts mean nothing)")
    lines.append("\nTargets:\n" + "\n".join(verdicts))
    return "\n".join(lines)
