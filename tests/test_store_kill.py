"""kill -9 mid-batch, then the same call again: only what was in flight or not yet committed runs twice.

A child process runs 2,000 symbols of ~1 ms with ``store=``; its processor appends ``symbol time`` to a
counter file as each symbol finishes. The test SIGKILLs the child mid-batch (no ``finally``, no flush:
what a dead kernel leaves), checks the file is a sound SQLite database, reruns the same call in a new
child, and compares the counter lines of both runs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from procengine_nb import load_results

pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

N = 2000
WORKERS = 4
WINDOW = WORKERS * 2  # in-flight tasks: max_workers * window_per_worker, one symbol each (chunk_size=1)

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from procengine_nb import ProcessingEngine, ProcessingJob, ResultStore

    store_path, counter, commit_seconds, commit_results = sys.argv[1:5]

    def work(symbol):
        time.sleep(0.001)
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{symbol} {time.monotonic()}\\n".encode())
        os.close(fd)
        return symbol * 2

    store = ResultStore(store_path, commit_seconds=float(commit_seconds), commit_results=int(commit_results))
    engine = ProcessingEngine(work, max_workers=%d, chunk_size=1)
    result = engine.process_batch(ProcessingJob(list(range(%d)), name="kill -9"), store=store)
    print(json.dumps({
        "symbols": [r.symbol for r in result], "from_store": sum(r.from_store for r in result),
        "values_ok": all(r.ok and r.value == r.symbol * 2 for r in result),
        "unprocessed": len(result.unprocessed), "progress_from_store": result.progress.from_store,
    }))
""") % (WORKERS, N)


def counter_lines(path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        symbol, stamp = line.split()
        out.append((int(symbol), float(stamp)))
    return out


def committed(store) -> bool:
    if not store.exists():
        return False
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM procengine_results").fetchone()[0] > 0
    except sqlite3.Error:  # the schema is not there yet
        return False


def child(script, store, counter, commit_seconds, commit_results):
    return subprocess.Popen([sys.executable, str(script), str(store), str(counter), str(commit_seconds),
                             str(commit_results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("commit_seconds, commit_results", [(3600, 50), (0.2, 10**6)],
                         ids=["commit every 50 results", "commit every 0.2 s"])
def test_a_rerun_after_kill_9_recomputes_only_the_window_and_the_last_commit_interval(
        tmp_path, commit_seconds, commit_results):
    script = tmp_path / "batch.py"
    script.write_text(CHILD)
    store, first_counter, second_counter = tmp_path / "r.db", tmp_path / "first.txt", tmp_path / "second.txt"

    proc = child(script, store, first_counter, commit_seconds, commit_results)
    deadline = time.monotonic() + 60
    target = None
    while target is None or len(counter_lines(first_counter)) < target:  # well into the batch, and a
        # little after a commit, so the kill lands inside a commit interval
        assert proc.poll() is None, f"the child ended before the kill: {proc.communicate()}"
        assert time.monotonic() < deadline, "the child made no progress"
        if target is None and committed(store):
            target = max(300, len(counter_lines(first_counter)) + 137)
        time.sleep(0.002)
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    first = counter_lines(first_counter)
    assert 300 <= len(first) < N, "the kill did not land mid-batch"
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [k for (k,) in conn.execute("SELECT key FROM procengine_results WHERE status = 'success'")]
        stored = {int(k.rpartition("int:")[2]) for k in keys}  # an int symbol's key: its type and str()
    assert stored and stored <= {s for s, _ in first}

    proc = child(script, store, second_counter, commit_seconds, commit_results)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out)
    second = [s for s, _ in counter_lines(second_counter)]

    # the final result holds every symbol exactly once, all computed or read back correctly
    assert sorted(report["symbols"]) == list(range(N)) and report["values_ok"] and report["unprocessed"] == 0
    assert report["from_store"] == report["progress_from_store"] == len(stored)
    # nothing the store held ran again; everything else ran exactly once
    assert not stored & set(second) and sorted(second) == sorted(set(range(N)) - stored)
    recomputed = {s for s, _ in first} & set(second)
    print(f"first run {len(first)}, stored {len(stored)}, recomputed {len(recomputed)}")
    if commit_results < 10**6:  # commits by count: in flight + less than one commit's worth
        assert len(recomputed) <= WINDOW + commit_results, (len(recomputed), len(first), len(stored))
    else:  # commits by time: what ran twice had finished within the last commit interval (+ a slack for
        # a loaded machine), or was in flight
        finished_at = dict(first)
        late = [s for s in recomputed if finished_at[s] < killed_at - commit_seconds - 1.0]
        assert len(late) <= WINDOW, (late, len(recomputed), len(first), len(stored))

    loaded = load_results(store, "kill -9")
    assert sorted(r.symbol for r in loaded) == list(range(N))
    assert all(r.ok and r.value == r.symbol * 2 for r in loaded)
