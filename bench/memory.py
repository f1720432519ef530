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
    "lazy": "procengine_nb process_batch of a generator (callback + token), W0",
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
    # lazy: the symbols are made by a generator while the batch draws them (the results keep them)
    items = (f"SYM{i:07d}" for i in range(n)) if mode == "lazy" else symbols(n)
    gc.collect()
    baseline = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if mode in ("engine", "lazy"):
        callback = _LastSnapshot()
        result = ProcessingEngine(w0, max_workers=4).process_batch(
            items, progress_callback=callback, cancellation_token=CancellationToken())
        kept = len(result)
        # what the symbols themselves take (a list input's are the user's, counted as the input)
        made = sum(sys.getsizeof(r.symbol) for r in result) if mode == "lazy" else 0
    else:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(w0, s) for s in items]
            kept = sum(1 for f in as_completed(futures) if f.result() is not None)
        made = 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kept != n:
        raise RuntimeError(f"{mode}: {kept} results for {n} symbols")
    return {
        "interpreter_mb": interpreter / 2**20,
        "input_mb": (baseline - interpreter) / 2**20,
        "peak_above_baseline_mb": (peak - max(baseline, 0)) / 2**20,
        "peak_before_mb": peak_before / 2**20,
        "symbols_made_mb": made / 2**20,
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
    verdicts = []
    for mode, label in _MODES.items():
        runs = 3 if mode in ("engine", "lazy") else 1
        print(f"  memory: {mode}, N={n}, {runs} run(s) ...", file=sys.stderr, flush=True)
        reports = [measure(mode, n) for _ in range(runs)]
        peaks = sorted(r["peak_above_baseline_mb"] for r in reports)
        report = reports[0]
        shown = f"{peaks[0]:.0f} MB" if runs == 1 else f"{' / '.join(f'{p:.0f}' for p in peaks)} MB"
        made = report["symbols_made_mb"]
        input_cell = f"{report['input_mb']:.0f} MB" if mode != "lazy" else f"none ({made:.0f} MB of symbols made)"
        table.add(label, f"{n:,}", shown, input_cell, f"{report['interpreter_mb']:.0f} MB")
        smoke_note = " (smoke run: meaningless)" if smoke else ""
        if mode == "engine":
            peak = peaks[-1]
            verdicts.append(f"- memory: worst of {runs} runs {peak:.0f} MB for {n:,} symbols (target ≤ 250 MB) → "
                            f"{'met' if peak <= 250 else 'MISSED'}{smoke_note}")
        if mode == "lazy":
            peak = peaks[-1]
            own = peak - made
            verdicts.append(
                f"- lazy: {n:,} symbols drawn from a generator: peak {peak:.0f} MB above baseline, of which "
                f"{made:.0f} MB are the symbol strings the generator made (the results keep them; a list's "
                f"are the user's input, outside the figure above); the batch's own share {own:.0f} MB "
                f"(target ≤ 150 MB) → {'met' if own <= 150 else 'MISSED'}{smoke_note}")
    return (f"Each run in a fresh interpreter (the engine runs 3 times each: every run shown, sorted); peak is "
            f"`ru_maxrss`, baseline the RSS after imports and after building the input symbols (none for "
            f"the generator: its symbols are made while the batch draws them)."
            f"\n\n{table.render()}\n\nTargets:\n" + "\n".join(verdicts))


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
