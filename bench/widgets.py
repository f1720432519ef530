"""The panel in a real kernel: its cost on W1/W2 and the widget traffic it sends, through jupyter_client.

A fresh ipykernel runs every variant side by side (rotating order, medians, ratios to the bare executor of
the same round): the bare ``ThreadPoolExecutor``, ``process_batch`` with a callback,
``engine.start(...).result()`` with no view, and ``procengine_nb.run(...)`` (the notebook one-liner that
displays a ProgressPanel) then ``handle.result()``. Traffic is counted on the client side: every
``comm_msg`` the kernel sends on IOPub while a batch runs with a panel: W0 (up to 100,000 symbols, the
highest symbol rate) and W1.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Any

from bench.common import Table, median

__all__ = ["run"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SETUP = """
import json, time
from concurrent.futures import ThreadPoolExecutor, as_completed
import procengine_nb
from procengine_nb import ProcessingEngine
from bench.common import symbols
from bench.workloads import WORKLOADS, calibrate_w2
calibrate_w2()
FNS = {w.name: w.fn for w in WORKLOADS}

def bare(fn, items):
    with ThreadPoolExecutor(max_workers=4) as pool:
        for f in as_completed([pool.submit(fn, s) for s in items]):
            f.result()

def engine(fn, items):
    last = []
    ProcessingEngine(fn, max_workers=4).process_batch(items, progress_callback=last.append)

def panel(fn, items):
    handle = procengine_nb.run(fn, items, max_workers=4, name="bench")
    assert handle.panel is not None
    handle.result()
    return handle.panel

def handle(fn, items):
    ProcessingEngine(fn, max_workers=4).start(items).result()

VARIANTS = {"bare": bare, "engine": engine, "handle": handle, "panel": panel}

def fixed_cost(rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        panel(FNS["W1"], [])
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
"""

_ROUND = """
_items = symbols({n})
_times = {{}}
for _name in {order!r}:
    _c = time.process_time()
    _t = time.perf_counter()
    VARIANTS[_name](FNS[{workload!r}], _items)
    _times[_name] = time.perf_counter() - _t
    _times[_name + "-cpu"] = time.process_time() - _c
print("BENCH" + json.dumps(_times))
"""

_TRAFFIC = """
_items = symbols({n})
_t = time.perf_counter()
_panel = panel(FNS[{workload!r}], _items)
print("BENCH" + json.dumps({{"seconds": time.perf_counter() - _t, "renders": _panel.render_count,
                            "final": _panel.counts.value}}))
"""


class _Kernel:
    """A kernel we started, and its client; every comm message it sends is counted."""

    def __init__(self) -> None:
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=ROOT)
        self.comm_msgs = 0

    def execute(self, code: str, timeout: float = 600) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            kind = msg["header"]["msg_type"]
            if kind == "comm_msg":
                self.comm_msgs += 1
            elif kind == "stream":
                for line in msg["content"]["text"].splitlines():
                    if line.startswith("BENCH"):
                        found.append(json.loads(line[5:]))
            elif kind == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        reply = self.client.execute_interactive(textwrap.dedent(code), output_hook=hook, timeout=timeout)
        if reply["content"]["status"] != "ok" or errors:
            raise RuntimeError(f"kernel code failed: {errors or reply['content']}")
        return found

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def run(*, smoke: bool, repeat: int) -> str:
    try:
        import procengine_nb.views.panel  # noqa: F401
    except ImportError as exc:
        return f"pending: the panel cannot be imported ({exc})."
    print("  widgets: starting a kernel ...", file=sys.stderr, flush=True)
    kernel = _Kernel()
    try:
        kernel.execute(_SETUP)
        lines = ["In a fresh ipykernel, driven by jupyter_client; ratios are medians of per-round ratios "
                 "to the bare executor of the same round; CPU = the kernel process's CPU time, all threads."]
        table = Table("workload", "bare wall s", "process_batch + callback: wall, CPU",
                      "start() + result(), no view: wall, CPU",
                      "run() + ProgressPanel: wall, CPU", "panel overhead vs bare: wall, CPU")
        verdicts = []
        names = ["bare", "engine", "handle", "panel"]
        w1_rounds: list[dict[str, float]] = []
        for workload in ("W1", "W2"):
            n = 40 if smoke else 2000
            rounds: list[dict[str, float]] = []
            print(f"  widgets: {workload}, N={n}, {repeat} rounds ...", file=sys.stderr, flush=True)
            for r in range(repeat):
                order = names[r % len(names):] + names[: r % len(names)]
                rounds.extend(kernel.execute(_ROUND.format(n=n, order=order, workload=workload)))

            def ratio(name: str, cpu: bool = False, rounds: list[dict[str, float]] = rounds) -> float:
                suffix = "-cpu" if cpu else ""
                return median([t[name + suffix] / t["bare" + suffix] for t in rounds])

            if workload == "W1":
                w1_rounds = rounds
            wall, cpu = ratio("panel"), ratio("panel", cpu=True)
            table.add(f"{workload}, N={n:,}", f"{median([t['bare'] for t in rounds]):.3f}",
                      f"{ratio('engine'):.3f}x, {ratio('engine', cpu=True):.3f}x",
                      f"{ratio('handle'):.3f}x, {ratio('handle', cpu=True):.3f}x", f"{wall:.3f}x, {cpu:.3f}x",
                      f"{(wall - 1) * 100:+.1f}%, {(cpu - 1) * 100:+.1f}%")
            verdicts.append(f"- {workload} with a panel in a kernel: {(wall - 1) * 100:+.1f}% wall, "
                            f"{(cpu - 1) * 100:+.1f}% CPU vs bare (target ≤ +3%) → wall "
                            f"{'met' if wall <= 1.03 else 'MISSED'}, CPU {'met' if cpu <= 1.03 else 'MISSED'}")
        lines.append(table.render())
        (fixed,) = kernel.execute(f'print("BENCH" + json.dumps(fixed_cost({3 if smoke else 9})))')
        lines.append(f"Fixed cost of `run()` on an empty batch (build, display and finish a panel, start and "
                     f"join the job thread), median: {fixed * 1000:.1f} ms — "
                     f"{fixed / median([t['bare'] for t in w1_rounds]) * 100:.1f}% of the W1 bare run above.")
        traffic = Table("workload, N", "seconds", "panel renders", "throttled renders/s", "comm messages",
                        "comm messages/s", "final counts shown")
        runs = (("W0-10k", 1_000),) if smoke else (("W0-10k", 10_000), ("W0-100k", 100_000), ("W1", 10_000))
        for workload, n in runs:
            print(f"  widgets: traffic, {workload} N={n} ...", file=sys.stderr, flush=True)
            before = kernel.comm_msgs
            (report,) = kernel.execute(_TRAFFIC.format(n=n, workload=workload))
            sent = kernel.comm_msgs - before
            seconds = report["seconds"]
            # the first snapshot and the final state are always rendered; the rest is throttled
            throttled = max(0, report["renders"] - 2) / seconds
            traffic.add(f"{workload[:2]}, {n:,}", f"{seconds:.2f}", report["renders"], f"{throttled:.1f}",
                        sent, f"{sent / seconds:.1f}", report["final"])
            complete = report["final"].replace(",", "").startswith(f"{n} / {n}")
            ok = throttled <= 10.5 and complete
            verdicts.append(f"- traffic at {workload[:2]} N={n:,} ({n / seconds:,.0f} symbols/s): {throttled:.1f} "
                            f"throttled renders/s (target ≤ 10/s), final state shown: {complete} → "
                            f"{'met' if ok else 'MISSED'}")
        lines.append("Widget traffic (a render sends one `comm_msg` per widget whose value changed):\n\n"
                     + traffic.render())
        if smoke:
            verdicts.append("- (smoke run: tiny N, the verdicts mean nothing)")
        lines.append("Targets:\n" + "\n".join(verdicts))
        return "\n\n".join(lines)
    finally:
        kernel.close()
