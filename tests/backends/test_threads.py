"""The threads backend: the engine's own pool runs on daemon threads, so a task a Stop abandoned (one that
ignores its token, maybe forever) never keeps the interpreter or a kernel from exiting; and the pool keeps
``ThreadPoolExecutor``'s contract otherwise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from procengine_nb import ProcessingEngine
from procengine_nb.backends.threads import DaemonThreadPool

ROOT = Path(__file__).resolve().parents[2]

ENDLESS = """
import threading, time
from procengine_nb import ProcessingEngine

started = threading.Event()

def endless(symbol):  # ignores its token and never returns
    started.set()
    while True:
        time.sleep(0.01)
"""


def test_the_interpreter_exits_at_once_when_a_stop_abandoned_an_endless_task(tmp_path):
    script = tmp_path / "exit_after_stop.py"
    script.write_text(ENDLESS + textwrap.dedent("""
        engine = ProcessingEngine(endless, max_workers=2)
        handle = engine.start(range(10))
        assert started.wait(30)
        handle.cancel()
        result = handle.result(timeout=30)
        print("cancelled", result.cancelled, "running", result.progress.running_symbols, flush=True)
        # the script ends here, with the endless task still running on a worker thread
    """))
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cancelled True running ")
    assert elapsed < 20  # before: never (concurrent.futures joins its workers at exit)


jupyter_client = pytest.importorskip("jupyter_client")


@pytest.mark.kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop_first", [True, False], ids=["after-stop", "job-running"])
def test_a_kernel_shutdown_is_not_held_by_an_endless_task(stop_first):
    """In a real kernel, with an endless token-ignoring task running (after a Stop, or with the job still
    running), nothing the job started can hold the interpreter's exit: every thread it started is a daemon
    thread (the public rule: the interpreter never joins daemon threads at exit) and none is in
    ``concurrent.futures``' exit registry (what used to join the workers at exit, forever for an endless
    task; an internal, read where present since no public API lists it). It no longer reads
    ``Thread._tstate_lock``/``threading._shutdown_locks``: CPython 3.13 replaced both.

    The kernel's own shutdown time is not asserted: ipykernel's shutdown takes 0.15 s, 10 s or more than
    40 s on this machine with no job at all (its control thread can wait on a stopped IOPub thread), so a
    timing bound would measure ipykernel, not us. The interpreter-exit test above times the same
    mechanism without a kernel."""
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT), extra_arguments=["--HistoryManager.enabled=False"])
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        code = ENDLESS + textwrap.dedent("""
            import concurrent.futures.thread as cft
            before = set(threading.enumerate())
            handle = ProcessingEngine(endless, max_workers=2).start(range(10))
            assert started.wait(30)
        """)
        if stop_first:
            code += "handle.cancel(); handle.result(timeout=30)\n"
        code += textwrap.dedent("""
            ours = [t for t in threading.enumerate() if t not in before and t.name.startswith("procengine")]
            # the endless task's worker still runs (an idle worker may be exiting meanwhile: the pool
            # lets idle workers go once a Stop left nothing to do)
            assert any(t.is_alive() for t in ours if t.name.startswith("procengine-worker")), ours
            assert all(t.daemon for t in ours), [t.name for t in ours if not t.daemon]
            # No public API lists the threads concurrent.futures joins at exit: its registry
            # (_threads_queues, present in 3.11-3.13) is read where it exists; the daemon check above is
            # the public rule (the interpreter never waits for daemon threads), and the interpreter-exit
            # test above checks the behaviour itself.
            registry = getattr(cft, "_threads_queues", {})
            assert not set(ours) & set(registry), "a worker would be joined at exit"
            print("checked", len(ours), "threads")
        """)
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        km.cleanup_resources()


# -- the pool itself --------------------------------------------------------------------------------
def test_daemon_pool_runs_tasks_on_daemon_threads_and_reuses_idle_ones(no_thread_leak):
    pool = DaemonThreadPool(4, thread_name_prefix="test-pool")
    try:
        for _ in range(20):  # one at a time: the idle thread is reused, no new one is started
            assert pool.submit(lambda: threading.current_thread().daemon).result(timeout=10) is True
        assert len(pool._threads) == 1
        futures = [pool.submit(pow, 2, i) for i in range(100)]
        assert [f.result(timeout=10) for f in futures] == [2**i for i in range(100)]
        assert len(pool._threads) <= 4
        failing = pool.submit(int, "x")
        with pytest.raises(ValueError):
            failing.result(timeout=10)
        interrupt = pool.submit(_raise, KeyboardInterrupt)  # a BaseException fails its future only
        assert isinstance(interrupt.exception(timeout=10), KeyboardInterrupt)
        assert pool.submit(str, 1).result(timeout=10) == "1"
    finally:
        pool.shutdown()
    assert all(not t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(str, 1)


def _raise(kind):
    raise kind()


def test_daemon_pool_shutdown_cancels_what_has_not_started_and_never_waits_when_told_not_to(no_thread_leak):
    pool = DaemonThreadPool(1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 30)
    queued = [pool.submit(str, i) for i in range(5)]
    began = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - began < 1.0
    assert all(f.cancelled() for f in queued)
    assert not running.done()
    gate.set()
    assert running.result(timeout=10) is True
    pool._threads[0].join(10)  # the thread exits once its task returned
    assert not pool._threads[0].is_alive()


def test_daemon_pool_refuses_a_bad_size():
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="max_workers"):
            DaemonThreadPool(bad)  # type: ignore[arg-type]


def test_engine_threads_are_daemons_and_gone_after_the_batch(no_thread_leak):
    seen = []
    engine = ProcessingEngine(lambda s: seen.append(threading.current_thread().daemon), max_workers=3)
    result = engine.process_batch(range(30))
    assert len(result) == 30 and set(seen) == {True}
