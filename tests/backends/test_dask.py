"""backend="dask" on a real LocalCluster (127.0.0.1, two single-threaded worker processes).

One cluster for the module (starting one takes seconds); every test waits until both workers are up,
since some tests kill a worker on purpose (the nanny restarts it).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from threadcheck import child_processes

from procengine_nb import CancellationToken, ProcessingEngine, ResultStatus

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = [pytest.mark.dask, pytest.mark.timeout(240)]

# distributed keeps these process-wide helper threads once used; they never grow per batch
_DASK_GLOBAL_THREADS = ("Dask-Callback-Thread", "Dask-Offload")


@pytest.fixture(scope="module")
def cluster():
    # A task that kills its worker is retried once, then fails with KilledWorker (keeps the test short).
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # keep port 8787 free
        )
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def module_client(cluster):
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()


@pytest.fixture
def client(module_client):
    module_client.wait_for_workers(2, timeout=120)
    # and idle: a batch releases the tasks it leaves running when it ends, so a previous test's may still
    # execute (call_stack) though the scheduler lists none
    deadline = time.monotonic() + 60
    while _executing(module_client):
        assert time.monotonic() < deadline, "the previous test's tasks never ended"
        time.sleep(0.02)
    return module_client


def _extra_threads(before: set[threading.Thread]) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        extra = [t for t in threading.enumerate()
                 if t not in before and t.is_alive() and not t.name.startswith(_DASK_GLOBAL_THREADS)]
        if not extra or time.monotonic() > deadline:
            return [t.name for t in extra]
        extra[0].join(0.05)


def _accounted(result, symbols) -> None:
    seen = [r.symbol for r in result] + list(result.unprocessed)
    assert sorted(map(repr, seen)) == sorted(map(repr, symbols))


def double(symbol):
    if symbol == 13:
        raise ValueError(f"unlucky {symbol}")
    return symbol * 2


def test_same_results_as_threads(client):
    symbols = list(range(40))
    threads = ProcessingEngine(double, max_workers=2).process_batch(symbols)
    before = set(threading.enumerate())
    engine = ProcessingEngine(double, backend="dask", client=client)
    assert engine.max_workers == 2  # the cluster's threads
    result = engine.process_batch(symbols)
    engine.close()  # a client we passed is ours: still usable
    assert client.status == "running"
    key = lambda r: r.symbol  # noqa: E731
    assert [(r.symbol, r.status, r.value) for r in sorted(result, key=key)] == [
        (r.symbol, r.status, r.value) for r in sorted(threads, key=key)
    ]
    assert [type(r.error) for r in result.errors] == [ValueError], [str(r.error) for r in result.errors]
    assert not result.cancelled and list(result.unprocessed) == [] and result.progress.running_symbols == 0
    assert not _extra_threads(before)


def test_a_notebook_style_closure_and_the_callers_symbol_objects(client):
    class Box:
        def __init__(self, n):
            self.n = n

    offset = 10
    boxes = [Box(i) for i in range(5)]
    with ProcessingEngine(lambda b: b.n + offset, backend="dask", client=client) as engine:
        result = engine.process_batch(boxes)
    assert {id(r.symbol) for r in result} == {id(b) for b in boxes}
    assert sorted(r.value for r in result) == [10, 11, 12, 13, 14]


def die_once(symbol, flag_dir):
    if symbol == 3:
        flag = Path(flag_dir, "died")
        if not flag.exists():
            flag.touch()
            os._exit(9)  # the worker process dies mid-batch
    time.sleep(0.01)
    return symbol


def test_a_lost_worker_loses_no_symbol(client, tmp_path):
    symbols = list(range(20))
    processor = lambda s: die_once(s, str(tmp_path))  # noqa: E731
    with ProcessingEngine(processor, backend="dask", client=client) as engine:
        result = engine.process_batch(symbols)
    assert (tmp_path / "died").exists()
    # the scheduler ran the lost task again on another worker: every symbol succeeded
    assert sorted(r.value for r in result) == symbols
    assert not result.cancelled and list(result.unprocessed) == []


def always_die(symbol):
    if symbol == 3:
        os._exit(9)
    return symbol


def test_a_task_that_keeps_killing_workers_is_an_error_and_the_batch_goes_on(client):
    symbols = list(range(12))
    with ProcessingEngine(always_die, backend="dask", client=client) as engine:
        result = engine.process_batch(symbols)
    _accounted(result, symbols)
    assert not result.cancelled and list(result.unprocessed) == []
    errors = {r.symbol: r.error for r in result.errors}
    assert 3 in errors and type(errors[3]).__name__ == "KilledWorker"
    # Dask counts a worker's death against every task queued on it too, so a bystander can also end as
    # KilledWorker (rarely, with allowed-failures=1 here); never anything else, never a lost symbol
    assert all(type(e).__name__ == "KilledWorker" for e in errors.values())
    assert sorted(r.value for r in result if r.ok) == [s for s in symbols if s not in errors]


def _executing(client) -> int:
    return sum(len(keys) for keys in client.call_stack().values())


def wait_for_stop(symbol, cancellation_token):
    cancellation_token.wait(60)
    cancellation_token.throw_if_cancelled()
    return symbol


def test_stop_cancels_pending_tasks_reports_the_running_ones_and_reaches_them(client):
    symbols = list(range(40))
    before = set(threading.enumerate())
    with ProcessingEngine(wait_for_stop, backend="dask", client=client) as engine:
        handle = engine.start(symbols)
        deadline = time.monotonic() + 60
        while _executing(client) < 2:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.02)
        handle.cancel()
        result = handle.result(timeout=60)
    assert result.cancelled and len(result) == 0
    _accounted(result, symbols)
    # what still ran at the return (known from the started reports); the Stop may already have ended some
    assert 0 <= result.progress.running_symbols <= 2
    # the pending ones were cancelled on the scheduler; the running ones saw the Stop (marker token)
    deadline = time.monotonic() + 30
    while client.processing() and any(client.processing().values()):
        assert time.monotonic() < deadline, f"tasks still on the cluster: {client.processing()}"
        time.sleep(0.02)
    assert not _extra_threads(before)


def stubborn(symbol):
    time.sleep(6)  # ignores the token: Dask cannot stop it (distributed#2617)
    return symbol


def test_tasks_that_ignore_stop_are_reported_as_still_running_not_awaited(client):
    symbols = list(range(20))
    with ProcessingEngine(stubborn, backend="dask", client=client) as engine:
        handle = engine.start(symbols)
        deadline = time.monotonic() + 60
        while _executing(client) < 2:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.02)
        handle.cancel()
        result = handle.result(timeout=60)
        assert result.cancelled and len(result) == 0 and len(result.unprocessed) == 20
        assert result.progress.running_symbols == 2
        assert _executing(client) == 2  # really still running there
    # the pending tasks were cancelled: only the two running ones finish, then the cluster is idle
    deadline = time.monotonic() + 60
    while any(client.processing().values()):
        assert time.monotonic() < deadline, f"tasks still on the cluster: {client.processing()}"
        time.sleep(0.05)


def test_a_cancelled_token_before_the_start_runs_nothing(client):
    token = CancellationToken()
    token.cancel()
    with ProcessingEngine(double, backend="dask", client=client) as engine:
        result = engine.process_batch([1, 2, 3], cancellation_token=token)
    assert result.cancelled and list(result.unprocessed) == [1, 2, 3]


def test_an_address_gets_its_own_client_closed_by_the_engine(client, cluster):
    engine = ProcessingEngine(double, backend="dask", client=cluster.scheduler_address)
    result = engine.process_batch([1, 2, 3])
    own = engine.backend.client
    assert own is not client and own.status == "running"
    assert sorted(r.value for r in result) == [2, 4, 6]
    engine.close()
    assert own.status == "closed"
    assert client.status == "running"


def test_without_a_client_the_engine_starts_and_closes_a_local_cluster(client):
    children_before = {p.pid for p in child_processes()}
    before = set(threading.enumerate())
    with ProcessingEngine(lambda s: s + 1, backend="dask", max_workers=1) as engine:
        assert engine.backend.client is None  # started lazily, at the first batch
        first = engine.process_batch([1, 2])
        own = engine.backend.client
        second = engine.process_batch([3])  # the same cluster serves every batch
        assert engine.backend.client is own
        assert sum(own.nthreads().values()) == 1
        assert own.scheduler.address.startswith("tcp://127.0.0.1:")
    assert sorted(r.value for r in first) == [2, 3] and [r.value for r in second] == [4]
    assert own.status == "closed"
    deadline = time.monotonic() + 30
    while {p.pid for p in child_processes()} - children_before:
        assert time.monotonic() < deadline, "the LocalCluster's processes outlived engine.close()"
        time.sleep(0.05)
    assert not _extra_threads(before)
    assert client.status == "running"  # the module's cluster was not touched


def test_bad_options_and_the_missing_extra(monkeypatch):
    with pytest.raises(TypeError, match="client"):
        ProcessingEngine(double, backend="dask", client=42)
    with pytest.raises(ValueError, match="cluster_options"):
        ProcessingEngine(double, backend="dask", client="tcp://127.0.0.1:1", cluster_options={"n_workers": 1})
    with pytest.raises(TypeError, match="idle_timeout"):
        ProcessingEngine(double, backend="dask", idle_timeout=3)
    with pytest.raises(TypeError, match="client"):
        ProcessingEngine(double, client="tcp://127.0.0.1:1")  # client= without backend="dask"
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "procengine_nb.backends.dask", raising=False)
    with pytest.raises(ImportError, match=r"procengine_nb\[dask\]"):
        ProcessingEngine(double, backend="dask")


def test_results_match_on_every_backend(client):
    symbols = [f"s{i}" for i in range(25)]
    outcomes = {}
    for backend, options in (("threads", {}), ("processes", {}), ("dask", {"client": client})):
        with ProcessingEngine(str.upper, backend=backend, max_workers=2, **options) as engine:
            result = engine.process_batch(symbols)
        outcomes[backend] = sorted((r.symbol, r.value, r.status) for r in result)
    assert outcomes["threads"] == outcomes["processes"] == outcomes["dask"]
    assert all(status is ResultStatus.SUCCESS for _, _, status in outcomes["dask"])


def test_run_without_a_client_closes_its_cluster_when_the_batch_ends(client):
    """run() owns the engine it builds: the LocalCluster it started ends with the batch."""
    from procengine_nb import run

    children_before = {p.pid for p in child_processes()}
    handle = run(lambda s: s * 2, [1, 2, 3], backend="dask", max_workers=1, display=False)
    backend = handle._batch.settings.backend  # (an ended job drops its settings; starting the cluster takes seconds)
    result = handle.result(120)
    assert sorted(r.value for r in result) == [2, 4, 6]
    own = backend.client
    assert own is None or own.status == "closed"  # closed before result() returned
    deadline = time.monotonic() + 30
    while {p.pid for p in child_processes()} - children_before:
        assert time.monotonic() < deadline, "run()'s LocalCluster outlived its batch"
        time.sleep(0.1)


# -- issue 11: a client or cluster closed during a batch ----------------------------------------------
def slow_half_second(symbol):
    time.sleep(0.5)
    return symbol


def _wait_executing(client, count: int = 1) -> None:
    deadline = time.monotonic() + 60
    while _executing(client) < count:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.02)


def _closed_under_it(error: BaseException) -> bool:
    # the watcher's error, or Dask's own cancel of the futures it dropped while closing
    return type(error).__name__ in ("DaskClientClosed", "DaskTaskCancelled") and "closed" in str(error)


def test_the_users_client_closed_during_a_batch_ends_it_within_seconds(client, cluster):
    symbols = list(range(40))
    own = distributed.Client(cluster.scheduler_address, set_as_default=False)
    before = set(threading.enumerate())
    engine = ProcessingEngine(slow_half_second, backend="dask", client=own)
    handle = engine.start(symbols)
    _wait_executing(client)
    own.close()
    began = time.monotonic()
    result = handle.result(timeout=60)  # before: never returned
    assert time.monotonic() - began < 10
    _accounted(result, symbols)
    # the chunks in flight: ERRORs that say the client was closed; the rest: unprocessed
    assert result.errors and all(_closed_under_it(r.error) for r in result.errors)
    assert result.cancelled and "Client is" in result.cancel_reason and "closed" in result.cancel_reason
    assert not _extra_threads(before)


def test_engine_close_on_its_own_cluster_during_a_batch_ends_it_within_seconds(client):
    symbols = list(range(40))
    engine = ProcessingEngine(slow_half_second, backend="dask", max_workers=1)
    handle = engine.start(symbols)
    deadline = time.monotonic() + 120
    while engine.backend.client is None or _executing(engine.backend.client) < 1:
        assert time.monotonic() < deadline, "the cluster never ran a task"
        time.sleep(0.05)
    began = time.monotonic()
    engine.close()
    result = handle.result(timeout=60)  # before: never returned
    assert time.monotonic() - began < 20
    _accounted(result, symbols)
    assert result.errors and all(_closed_under_it(r.error) for r in result.errors)
    assert client.status == "running"  # the module's cluster was not touched


# -- the probe's findings (F6, F8, F15, F18, F19, F20) ------------------------------------------------
def cancel_at_12(symbol, cancellation_token):
    if symbol == 12:
        cancellation_token.cancel("fatal: quota exhausted")
    return symbol


def test_a_processor_cancelling_its_token_stops_the_batch_with_its_reason(client):
    symbols = list(range(200))
    with ProcessingEngine(cancel_at_12, backend="dask", client=client, chunk_size=5) as engine:
        result = engine.process_batch(symbols)
    # before: "the executor cancelled a task it had accepted (...); was it shut down?"
    assert result.cancelled and result.cancel_reason == "fatal: quota exhausted"
    assert 12 in {r.symbol for r in result}  # the asking chunk's results count (it ran them)
    assert len(result.unprocessed) > 100 and not result.errors
    _accounted(result, symbols)


def quick(symbol):
    time.sleep(0.002)
    return symbol


def test_early_stops_print_no_scheduler_traceback(client, caplog):
    caplog.set_level(logging.ERROR)
    with ProcessingEngine(quick, backend="dask", client=client) as engine:
        for _ in range(8):
            token = CancellationToken()

            def stop_early(progress, token=token):
                if progress.completed_symbols >= 3:
                    token.cancel()

            symbols = list(range(300))
            result = engine.process_batch(symbols, progress_callback=stop_early, cancellation_token=token)
            assert result.cancelled
            _accounted(result, symbols)
    # before: the Stop asked the scheduler for the call stacks of released keys (KeyError logged at ERROR)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_an_asynchronous_client_is_refused_by_name(cluster):
    import asyncio

    async def make():
        async with distributed.Client(cluster.scheduler_address, asynchronous=True) as async_client:
            with pytest.raises(TypeError, match=r"asynchronous.*synchronous one"):
                ProcessingEngine(abs, backend="dask", client=async_client)

    asyncio.run(make())


def test_an_unreachable_address_never_blocks_start_and_ends_the_batch_accounted():
    symbols = [1, -2, 3]
    # nothing listens on port 1: a connection is retried until distributed.comm.timeouts.connect
    with dask.config.set({"distributed.comm.timeouts.connect": "30s"}):
        engine = ProcessingEngine(abs, backend="dask", client="tcp://127.0.0.1:1")
        began = time.monotonic()
        handle = engine.start(symbols)  # before: connected here, blocking the caller 30 s, then OSError
        assert time.monotonic() - began < 10
        handle.cancel()  # Stop while it connects: the batch ends at once
        result = handle.result(timeout=10)
        assert result.cancelled and list(result.unprocessed) == symbols
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = engine.process_batch(symbols)
    assert result.cancelled and list(result.unprocessed) == symbols and len(result) == 0
    assert "cannot connect to the Dask scheduler at 'tcp://127.0.0.1:1'" in result.cancel_reason
    engine.close()


def endless(symbol):
    while True:  # ignores its token: only a restart of its worker frees it
        time.sleep(0.05)


def test_timeouts_on_the_engines_own_cluster_free_the_workers_for_the_next_batch():
    with ProcessingEngine(endless, backend="dask", max_workers=2, timeout=0.5, chunk_size=1) as engine:
        first = engine.process_batch([1, 2])
        assert [type(r.error).__name__ for r in first] == ["TimeoutError", "TimeoutError"]
        follow = ProcessingEngine(abs, backend="dask", client=engine.backend.client)
        began = time.monotonic()
        handle = follow.start([-1, -2, -3, -4])
        second = handle.result(timeout=120)  # before: never started (both workers ran the abandoned tasks)
        assert sorted(r.value for r in second) == [1, 2, 3, 4]
        assert time.monotonic() - began < 120


def cooperative_endless(symbol, cancellation_token, flag_dir):
    flag = Path(flag_dir, "saw-7")
    if symbol != 7:  # the others keep the batch open for 6 s on the other worker
        time.sleep(0.3)
        return symbol
    while not cancellation_token.wait(0.01):
        pass
    flag.write_text(cancellation_token.reason or "")
    return symbol


def test_timeouts_on_your_cluster_cancel_the_abandoned_chunks_token(client, tmp_path):
    processor = lambda s, cancellation_token: cooperative_endless(s, cancellation_token, str(tmp_path))  # noqa: E731
    with ProcessingEngine(processor, backend="dask", client=client, timeout=2, chunk_size=1) as engine:
        result = engine.process_batch([7, *range(10, 30)])
    # before: symbol 7's token turned cancelled only at the batch's end ("the batch was stopped (or is over)")
    assert "timeout" in Path(tmp_path, "saw-7").read_text()
    assert {r.symbol: type(r.error).__name__ for r in result.errors} == {7: "TimeoutError"}
    assert sorted(r.value for r in result if r.error is None) == list(range(10, 30))


_CTRL_C_CHILD = r'''
import sys, time
from procengine_nb import ProcessingEngine

def proc(s, cancellation_token=None):
    cancellation_token.wait(0.5)
    return s

if __name__ == "__main__":
    engine = ProcessingEngine(proc, backend="dask", max_workers=2)
    engine.process_batch([0])
    print("ready", flush=True)
    try:
        engine.process_batch(list(range(200)))
    except KeyboardInterrupt as exc:
        print("interrupted:", exc.partial_result.summary(), flush=True)
        raise SystemExit(130)
'''


def test_ctrl_c_in_a_terminal_exits_promptly_and_quietly(tmp_path):
    import signal
    import subprocess

    script = tmp_path / "child.py"
    script.write_text(_CTRL_C_CHILD)
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, env={**os.environ})
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        out, err = child.communicate(timeout=60)  # before: sometimes never exited (joining Dask's callback thread)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert child.returncode == 130 and "interrupted:" in out
    # before: the workers' KeyboardInterrupt tracebacks, and the scheduler's errors about results fetched
    # while the cluster closed
    assert "Traceback" not in err and " - ERROR - " not in err, err[-3000:]
