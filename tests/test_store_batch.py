"""store= and key= on process_batch / start / run: skip what is stored, write what completes, on every backend."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time

import pytest

from procengine_nb import (
    CancellationToken,
    ProcessingEngine,
    ProcessingJob,
    ResultStatus,
    ResultStore,
    SymbolResult,
    load_results,
    run,
)
from procengine_nb.store import StoreVersionError

pytestmark = pytest.mark.timeout(120)


def double(symbol):
    if symbol == 13:
        raise ValueError(f"unlucky {symbol}")
    return symbol * 2


class Counting:
    """A processor that counts its calls per symbol."""

    def __init__(self, fn=double):
        self.fn = fn
        self.calls: list = []
        self._lock = threading.Lock()

    def __call__(self, symbol):
        with self._lock:
            self.calls.append(symbol)
        return self.fn(symbol)


def stored_count(path, batch=None):
    with sqlite3.connect(path) as conn:
        if batch is None:
            return conn.execute("SELECT count(*) FROM procengine_results").fetchone()[0]
        return conn.execute("SELECT count(*) FROM procengine_results WHERE batch = ?", (batch,)).fetchone()[0]


def written(path):
    """Wait for this process's writers of ``path`` (a batch returns without waiting for its writes)."""
    assert ResultStore(path).flush(30), "the writers did not finish in time"


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def exactly_once(result, symbols):
    seen = [r.symbol for r in result] + list(result.unprocessed)
    assert sorted(map(repr, seen)) == sorted(map(repr, symbols))


@pytest.fixture
def path(tmp_path):
    return tmp_path / "results.db"


# -- skipping what the store holds ----------------------------------------------------------------------
def test_a_rerun_skips_stored_successes_and_runs_failures_again(path, no_thread_leak):
    symbols = list(range(20))
    processor = Counting()
    engine = ProcessingEngine(processor, max_workers=3)
    first = engine.process_batch(ProcessingJob(symbols, name="nums"), store=path)
    assert not any(r.from_store for r in first) and first.progress.from_store == 0
    written(path)
    assert stored_count(path, "nums") == 20
    processor.calls.clear()
    snapshots = []
    again = engine.process_batch(ProcessingJob(symbols, name="nums"), snapshots.append, store=path)
    assert processor.calls == [13]  # only the failure ran again
    exactly_once(again, symbols)
    assert len(again) == 20 and not again.cancelled and list(again.unprocessed) == []
    assert sum(r.from_store for r in again) == 19
    assert all(r.from_store == (r.symbol != 13) for r in again)
    assert {r.symbol: r.value for r in again if r.ok} == {s: s * 2 for s in symbols if s != 13}
    assert again.progress.from_store == 19 and again.progress.completed_symbols == 20
    assert again.progress.finished and again.progress.percentage == 100.0
    assert [s.from_store for s in snapshots[:19]] == list(range(1, 20))  # counted as completed at once
    assert snapshots[-1].from_store == 19 and snapshots[-1].errors_count == 1


def test_new_symbols_run_and_stored_ones_keep_the_callers_objects(path):
    engine = ProcessingEngine(lambda s: s[0] * 10, max_workers=2)
    first = [(1, "a"), (2, "b")]
    engine.process_batch(ProcessingJob(first, name="tuples"), store=path)
    second = [(1, "a"), (2, "b"), (3, "c")]
    again = engine.process_batch(ProcessingJob(second, name="tuples"), store=path)
    by_symbol = {r.symbol: r for r in again}
    assert by_symbol[(1, "a")].from_store and by_symbol[(1, "a")].value == 10
    assert not by_symbol[(3, "c")].from_store
    assert any(r.symbol is second[0] for r in again)  # the caller's object, not an unpickled copy


def test_everything_from_the_store_runs_nothing(path, no_thread_leak):
    processor = Counting()
    engine = ProcessingEngine(processor, max_workers=2)
    engine.process_batch(ProcessingJob(["a", "b", "a"], name="dup"), store=path)
    processor.calls.clear()
    again = engine.process_batch(ProcessingJob(["a", "b", "a"], name="dup"), store=path)
    assert processor.calls == []
    assert [r.symbol for r in again] == ["a", "b", "a"] and all(r.from_store for r in again)
    assert again.progress.from_store == 3 and again.summary() == "3 of 3 processed: 3 ok, 0 failed"


def test_batches_with_other_names_do_not_share_results(path):
    processor = Counting()
    engine = ProcessingEngine(processor, max_workers=2)
    engine.process_batch(ProcessingJob([1, 2], name="a"), store=path)
    processor.calls.clear()
    other = engine.process_batch(ProcessingJob([1, 2], name="b"), store=path)
    assert sorted(processor.calls) == [1, 2] and not any(r.from_store for r in other)


def test_key_decides_what_counts_as_the_same_symbol(path):
    processor = Counting(lambda s: s["id"].upper())
    engine = ProcessingEngine(processor, max_workers=2)
    engine.process_batch(ProcessingJob([{"id": "x", "n": 1}], name="k"), store=path, key=lambda s: s["id"])
    processor.calls.clear()
    again = engine.process_batch(ProcessingJob([{"id": "x", "n": 2}, {"id": "y"}], name="k"), store=path,
                                 key=lambda s: s["id"])
    assert processor.calls == [{"id": "y"}]
    assert {r.symbol["id"]: (r.value, r.from_store) for r in again} == {"x": ("X", True), "y": ("Y", False)}


# -- errors before any symbol runs ----------------------------------------------------------------------
def test_a_key_that_raises_costs_its_symbol_alone(path, no_thread_leak):
    processor = Counting(lambda s: s["id"])
    engine = ProcessingEngine(processor, max_workers=2)

    class Exit(BaseException):
        pass

    def key(s):
        if "exit" in s:
            raise Exit("no key for you")
        return s["id"]

    symbols = [{"id": "a"}, {"name": "no id"}, {"id": "c"}, {"exit": 1}]
    result = engine.process_batch(ProcessingJob(symbols, name="k"), store=path, key=key)
    assert len(result) == 4 and not result.cancelled and list(result.unprocessed) == []
    by_status = {repr(r.symbol): r for r in result}
    assert sorted(processor.calls, key=repr) == [{"id": "a"}, {"id": "c"}]  # the unkeyed ones never ran
    bad = by_status[repr({"name": "no id"})]
    assert bad.status is ResultStatus.ERROR and isinstance(bad.error, ValueError)
    assert "key= raised KeyError('id') for the symbol {'name': 'no id'}" in str(bad.error)
    assert "Exit('no key for you')" in str(by_status[repr({"exit": 1})].error)
    assert result.progress.errors_count == 2 and result.progress.completed_symbols == 4
    handle = engine.start(ProcessingJob(symbols, name="k"), store=path, key=key)
    again = handle.result(timeout=10)
    assert sum(r.from_store for r in again) == 2 and again.counts()["error"] == 2
    with pytest.raises(TypeError, match="key must be callable"):
        engine.process_batch(ProcessingJob([1], name="k"), store=path, key="id")
    returns_int = engine.process_batch(ProcessingJob([{"id": 1}], name="k2"), store=path, key=lambda s: s["id"])
    assert "key= must return a str, not int" in str(returns_int[0].error)
    written(path)
    assert sorted(r.symbol["id"] for r in load_results(path, "k")) == ["a", "c"]


def test_bad_store_and_key_arguments(path, tmp_path, no_thread_leak):
    engine = ProcessingEngine(double)
    job = ProcessingJob([1], name="x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        engine.process_batch(job, store=tmp_path / "missing" / "r.db")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        engine.start(job, store=str(tmp_path / "missing" / "r.db"))  # up front, no thread started
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(double, [1], name="x", store=tmp_path / "missing" / "r.db", display=False)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(TypeError, match="store must be a path"):
        engine.process_batch(job, store=42)
    with pytest.raises(ValueError, match="key= is only used with store="):
        engine.process_batch(job, key=str)
    with pytest.raises(TypeError, match="key must be callable"):
        engine.process_batch(job, store=path, key="id")
    with pytest.raises(TypeError, match="key must be callable"):
        run(double, [1], name="x", store=path, key="id", display=False)


def test_a_store_of_another_version_is_refused_before_anything_runs(path, no_thread_leak):
    processor = Counting()
    engine = ProcessingEngine(processor)
    engine.process_batch(ProcessingJob([1, 2], name="v"), store=path)
    assert ResultStore(path).flush(timeout=30)  # the writer thread may still be writing them
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    processor.calls.clear()
    with pytest.raises(StoreVersionError, match="another version"):
        engine.process_batch(ProcessingJob([1, 2, 3], name="v"), store=path)
    with pytest.raises(StoreVersionError):
        engine.start(ProcessingJob([1, 2, 3], name="v"), store=path)
    assert processor.calls == []
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_a_writer_whose_file_became_another_version_gives_up_at_once_and_says_so(path, caplog, no_thread_leak):
    """The file turned into a store of another version while a batch's writer still had results to write:
    trying again cannot help, so the writer logs what it could not write and ends at once (it used to
    retry for busy_timeout, 10 s, after the batch)."""
    engine = ProcessingEngine(Counting())
    engine.process_batch(ProcessingJob([1], name="v"), store=path)
    assert ResultStore(path).flush(timeout=30)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    from procengine_nb.store.writer import Writer

    writer = Writer(path, "v2", str, None, commit_seconds=0.0, commit_results=1, give_up=60.0)
    began = time.monotonic()
    writer.add([SymbolResult("x", ResultStatus.SUCCESS, 1)])
    writer.close()
    assert writer.flush(30)
    assert time.monotonic() - began < 5
    assert writer.lost == 1 and "another version" in caplog.text and "could not be written" in caplog.text


def named_processor(symbol):
    return symbol


def test_the_batch_name_without_a_job_name(path):
    engine = ProcessingEngine(named_processor)
    engine.process_batch([1, 2], store=path)
    assert ResultStore(path).batches() == [f"{__name__}.named_processor"]
    again = engine.process_batch([1, 2], store=path)
    assert all(r.from_store for r in again)
    with pytest.raises(ValueError, match=r"store= needs a batch name.*name='prices'"):
        ProcessingEngine(lambda s: s).process_batch([1], store=path)
    with pytest.raises(ValueError, match="store= needs a batch name"):
        run(lambda s: s, [1], store=path, display=False)
    handle = run(lambda s: s, [1], store=path, name="lambda batch", display=False)
    assert handle.result(timeout=10).summary() == "1 of 1 processed: 1 ok, 0 failed"
    assert "lambda batch" in ResultStore(path).batches()


# -- writing however the batch ends ----------------------------------------------------------------------
def test_a_cancelled_batch_stores_what_completed_and_a_rerun_finishes_it(path, no_thread_leak):
    store = ResultStore(path, commit_seconds=3600, commit_results=10**6)  # only the end of the batch writes
    token = CancellationToken()
    release = threading.Event()

    def gated(symbol):
        if symbol >= 10:
            release.wait(10)
        return symbol

    engine = ProcessingEngine(gated, max_workers=2, chunk_size=1)
    seen = []

    def callback(progress):
        seen.append(progress.completed_symbols)
        if progress.completed_symbols == 10:
            token.cancel("enough")

    first = engine.process_batch(ProcessingJob(list(range(30)), name="c"), callback, token, store=store)
    release.set()
    assert first.cancelled and len(first) >= 10
    written(path)  # by the writer, right after the batch ended (the batch does not wait for it)
    assert stored_count(path, "c") == len(first)
    again = engine.process_batch(ProcessingJob(list(range(30)), name="c"), store=store)
    exactly_once(again, range(30))
    assert len(again) == 30 and sum(r.from_store for r in again) == len(first)


def test_an_interrupt_still_writes_what_completed(path, no_thread_leak):
    store = ResultStore(path, commit_seconds=3600, commit_results=10**6)

    def callback(progress):
        if progress.completed_symbols == 25:
            raise KeyboardInterrupt

    engine = ProcessingEngine(named_processor, max_workers=2)
    with pytest.raises(KeyboardInterrupt) as caught:
        engine.process_batch(ProcessingJob(list(range(200)), name="i"), callback, store=store)
    partial = caught.value.partial_result
    written(path)
    assert stored_count(path, "i") == len(partial) >= 25


def test_results_are_committed_while_a_slow_symbol_runs(path, no_thread_leak):
    store = ResultStore(path, commit_seconds=0.05, commit_results=10**6)
    release = threading.Event()

    def slow_last(symbol):
        if symbol == "slow":
            release.wait(20)
        return symbol

    handle = ProcessingEngine(slow_last, max_workers=2).start(
        ProcessingJob(["slow", *map(str, range(20))], name="t"), store=store)
    try:
        # the batch thread waits for "slow" with nothing else to do: the buffered results are still
        # written within commit_seconds, not when the next completion happens to arrive
        wait_until(lambda: stored_count(path, "t") == 20)
    finally:
        release.set()
    assert len(handle.result(timeout=10)) == 21
    written(path)
    assert stored_count(path, "t") == 21


def test_an_unpicklable_value_is_kept_in_memory_and_computed_again_on_a_rerun(path):
    processor = Counting(lambda s: threading.Lock() if s == "lock" else s)
    engine = ProcessingEngine(processor, max_workers=2)
    first = engine.process_batch(ProcessingJob(["lock", "a"], name="u"), store=path)
    assert {r.symbol: type(r.value).__name__ for r in first} == {"lock": "lock", "a": "str"}
    processor.calls.clear()
    again = engine.process_batch(ProcessingJob(["lock", "a"], name="u"), store=path)
    assert processor.calls == ["lock"]
    assert {r.symbol: r.from_store for r in again} == {"lock": False, "a": True}
    loaded = {r.symbol: r.value for r in load_results(path, "u")}
    assert "could not pickle" in loaded["lock"].reason


def test_timeouts_are_stored_as_errors(path, no_thread_leak):
    release = threading.Event()

    def stuck(symbol):
        if symbol == "stuck":
            release.wait(10)
        return symbol

    try:
        result = ProcessingEngine(stuck, max_workers=2, timeout=0.2).process_batch(
            ProcessingJob(["stuck", "ok"], name="to"), store=path)
    finally:
        release.set()
    assert result.counts()["error"] == 1
    [error] = load_results(path, "to").errors
    assert error.symbol == "stuck" and error.error.type_name == "TimeoutError"


def test_two_batches_at_once_on_one_file(path, no_thread_leak):
    engine = ProcessingEngine(named_processor, max_workers=2)
    handles = [engine.start(ProcessingJob(list(range(500)), name=name), store=path) for name in ("a", "b", "a")]
    results = [h.result(timeout=60) for h in handles]
    assert all(len(r) == 500 for r in results)
    written(path)
    assert stored_count(path, "a") == stored_count(path, "b") == 500
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(r.value for r in load_results(path, "a")) == list(range(500))


# -- other backends and processors ------------------------------------------------------------------------
def test_run_with_a_store(path):
    handle = run(double, list(range(5)), name="run", store=path, display=False, max_workers=2)
    assert handle.result(timeout=10).progress.from_store == 0
    again = run(double, list(range(6)), name="run", store=str(path), display=False, max_workers=2)
    result = again.result(timeout=10)
    assert result.progress.from_store == 5 and again.panel.progress_bar.value == 6
    assert again.panel.counts.value.endswith("6 / 6 (100%), 5 from the store")


def test_an_async_processor_with_a_store(path):
    async def fetch(symbol):
        await asyncio.sleep(0)
        return symbol * 3

    engine = ProcessingEngine(fetch, max_workers=4)
    engine.process_batch(ProcessingJob(range(10), name="async"), store=path)
    again = engine.process_batch(ProcessingJob(range(12), name="async"), store=path)
    assert sum(r.from_store for r in again) == 10 and sorted(r.value for r in again) == [s * 3 for s in range(12)]


def test_the_processes_backend_with_a_store(path):
    pytest.importorskip("loky")
    with ProcessingEngine(double, backend="processes", max_workers=2) as engine:
        first = engine.process_batch(ProcessingJob(range(30), name="p"), store=path)
        again = engine.process_batch(ProcessingJob(range(30), name="p"), store=path)
    written(path)
    assert len(first) == 30 and stored_count(path, "p") == 30
    assert sum(r.from_store for r in again) == 29
    assert load_results(path, "p").errors[0].error.message == "unlucky 13"


@pytest.mark.slow
def test_the_dask_backend_with_a_store(path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        engine = ProcessingEngine(double, backend="dask", client=client)
        first = engine.process_batch(ProcessingJob(range(30), name="d"), store=path)
        again = engine.process_batch(ProcessingJob(range(30), name="d"), store=path)
        engine.close()
    written(path)
    assert len(first) == 30 and stored_count(path, "d") == 30
    assert sum(r.from_store for r in again) == 29 and sorted(r.symbol for r in again) == list(range(30))


def test_load_results_reads_what_a_batch_wrote(path):
    ProcessingEngine(double, max_workers=2).process_batch(ProcessingJob(range(20), name="r"), store=path)
    loaded = load_results(path)
    assert len(loaded) == 20 and all(r.from_store for r in loaded)
    assert loaded.counts()["error"] == 1 and loaded.errors[0].error.type_name == "ValueError"
    assert "unlucky 13" in loaded.errors[0].error.traceback_text
    assert sorted(v for _, v in loaded.values) == sorted(s * 2 for s in range(20) if s != 13)
    assert all(r.status in (ResultStatus.SUCCESS, ResultStatus.ERROR) for r in loaded)


# -- lazy input and retries ----------------------------------------------------------------------------
def test_a_generator_rerun_skips_what_the_store_holds(path, no_thread_leak):
    processor = Counting()
    engine = ProcessingEngine(processor, max_workers=2)
    engine.process_batch(ProcessingJob(list(range(0, 1500, 2)), name="lazy"), store=path)  # the even ones
    processor.calls.clear()
    snapshots = []
    again = engine.process_batch(ProcessingJob(iter(range(1500)), name="lazy"), snapshots.append, store=path)
    assert sorted(processor.calls) == list(range(1, 1500, 2))  # odd ones run; 13 is odd: it failed first
    exactly_once(again, range(1500))
    assert len(again) == 1500 and again.input_exhausted and not again.cancelled
    assert sum(r.from_store for r in again) == 750 == again.progress.from_store
    assert again.progress.total_symbols == 1500 and again.progress.total_known
    assert snapshots[-1].completed_symbols == 1500 and snapshots[-1].from_store == 750


def test_a_stopped_generator_rerun_keeps_every_symbol_once(path):
    token = CancellationToken()

    def callback(progress):
        if progress.completed_symbols >= 40:
            token.cancel("enough")

    engine = ProcessingEngine(named_processor, max_workers=2, chunk_size=1)
    first = engine.process_batch(ProcessingJob(iter(range(100)), name="g"), callback, token, store=path)
    assert first.cancelled
    again = engine.process_batch(ProcessingJob(iter(range(100)), name="g"), store=path)
    exactly_once(again, range(100))
    assert sum(r.from_store for r in again) == len(first)


def test_a_key_that_raises_on_a_lazy_input_costs_its_symbol_alone(path, no_thread_leak):
    processor = Counting(lambda s: s["id"])
    symbols = [{"id": "a"}, {"id": "b"}, {"nope": 1}, {"id": "d"}]
    result = ProcessingEngine(processor, max_workers=1, chunk_size=1).process_batch(
        ProcessingJob(iter(symbols), name="lk"), store=path, key=lambda s: s["id"])
    assert not result.cancelled and result.input_error is None and result.input_exhausted
    [error] = result.errors
    assert error.symbol == {"nope": 1} and "key= raised KeyError('id') for the symbol {'nope': 1}" in str(error.error)
    assert {"nope": 1} not in processor.calls and list(result.unprocessed) == []
    exactly_once(result, symbols)
    assert result.progress.total_symbols == 4 and result.progress.completed_symbols == 4
    written(path)
    assert sorted(r.value for r in load_results(path, "lk")) == ["a", "b", "d"]


def test_retried_symbols_are_stored_once_with_their_attempts(path):
    calls: dict = {}

    def flaky(symbol):
        calls[symbol] = calls.get(symbol, 0) + 1
        if symbol == "twice" and calls[symbol] < 2:
            raise ConnectionError("429")
        if symbol == "never":
            raise ConnectionError("429")
        return symbol

    engine = ProcessingEngine(flaky, max_workers=2, retries=2)
    engine.process_batch(ProcessingJob(["ok", "twice", "never"], name="retry"), store=path)
    loaded = {r.symbol: r for r in load_results(path, "retry")}
    assert len(loaded) == 3 and loaded["twice"].ok and loaded["twice"].attempts == 2
    assert loaded["never"].status is ResultStatus.ERROR and loaded["never"].attempts == 3
    calls.clear()
    engine.process_batch(ProcessingJob(["ok", "twice", "never"], name="retry"), store=path)
    assert calls == {"never": 3}  # only the failure runs again (with its retries)
