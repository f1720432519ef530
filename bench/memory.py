"""Peak memory for a big batch, each run in a fresh interpreter so runs cannot pollute each other.

The child imports everything, builds the input symbols, measures its RSS (the baseline), runs the batch
and reports its peak RSS (``ru_maxrss``) minus that baseline: what the batch itself costs, results
included. The input list is the user's and is reported separately.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys

from bench.common import Table

__all__ = ["run"]

_MODES = {
    "engine": "procengine_nb process_batch (callback + token), W0",
    "bare": "bare ThreadPoolExecutor: submit all + as_completed, W0",
}


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(mode: str, n: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from bench.baselines import _LastSnapshot
    from bench.common import symbols
    from bench.workloads import w0
    from procengine_nb import CancellationToken, ProcessingEngine

    gc.collect()
    interpreter = _rss_bytes()
    items = symbols(n)
    gc.collect()
    baseline = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if mode == "engine":
        callback = _LastSnapshot()
        result = ProcessingEngine(w0, max_workers=4).process_batch(
            items, progress_callback=callback, cancellation_token=CancellationToken())
        kept = len(result)
    else:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(w0, s) for s in items]
            kept = sum(1 for f in as_completed(futures) if f.result() is not None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kept != n:
        raise RuntimeError(f"{mode}: {kept} results for {n} symbols")
    return {
        "interpreter_mb": interpreter / 2**20,
        "input_mb": (baseline - interpreter) / 2**20,
        "peak_above_baseline_mb": (peak - max(baseline, 0)) / 2**20,
        "peak_before_mb": peak_before / 2**20,
    }


def measure(mode: str, n: int) -> dict[str, float]:
    """Run one mode in a fresh interpreter and return its report."""
    out = subprocess.run([sys.executable, "-m", "bench.memory", mode, str(n)],
                         check=True, capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(*, smoke: bool, repeat: int = 1) -> str:
    n = 20_000 if smoke else 1_000_000
    table = Table("runner", "N", "peak RSS above baseline (results included)", "input list (user's)",
                  "interpreter + imports")
    verdict = ""
    for mode, label in _MODES.items():
        runs = 3 if mode == "engine" else 1
        print(f"  memory: {mode}, N={n}, {runs} run(s) ...", file=sys.stderr, flush=True)
        reports = [measure(mode, n) for _ in range(runs)]
        peaks = sorted(r["peak_above_baseline_mb"] for r in reports)
        report = reports[0]
        shown = f"{peaks[0]:.0f} MB" if runs == 1 else f"{' / '.join(f'{p:.0f}' for p in peaks)} MB"
        table.add(label, f"{n:,}", shown, f"{report['input_mb']:.0f} MB", f"{report['interpreter_mb']:.0f} MB")
        if mode == "engine":
            peak = peaks[-1]
            verdict = (f"- memory: worst of {runs} runs {peak:.0f} MB for {n:,} symbols (target ≤ 250 MB) → "
                       f"{'met' if peak <= 250 else 'MISSED'}" + (" (smoke run: meaningless)" if smoke else ""))
    return (f"Each run in a fresh interpreter (the engine 3 times: every run shown, sorted); peak is "
            f"`ru_maxrss`, baseline the RSS after imports and after building the input symbols."
            f"\n\n{table.render()}\n\nTargets:\n{verdict}")


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
