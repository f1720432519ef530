"""backend="dask" on a real LocalCluster (127.0.0.1, two single-threaded worker processes).

One cluster for the module (starting one takes seconds); every test waits until both workers are up,
since some tests kill a worker on purpose (the nanny restarts it).
"""

from __future__ import annotations

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
    # what still ran at the return (found with call_stack); the marker may already have stopped some
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
