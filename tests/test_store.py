"""ResultStore on its own: the file checks, the schema, the buffered writer, reading back."""

from __future__ import annotations

import functools
import hashlib
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from procengine_nb import ResultStatus, SymbolResult
from procengine_nb.store import (
    FORMAT_VERSION,
    NotStored,
    ResultStore,
    StoredError,
    StoreLoadError,
    StoreVersionError,
    default_batch_name,
    load_results,
    make_key_function,
    resolve_store,
)


def ok(symbol, value, duration_ms=1.0):
    return SymbolResult(symbol, ResultStatus.SUCCESS, value, None, duration_ms)


def failed(symbol, exc):
    try:
        raise exc
    except BaseException as caught:  # give it a real traceback
        return SymbolResult(symbol, ResultStatus.ERROR, None, caught, 2.0)


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def rows_in(path, batch=None):
    with sqlite3.connect(path) as conn:
        if batch is None:
            return conn.execute("SELECT count(*) FROM procengine_results").fetchone()[0]
        return conn.execute("SELECT count(*) FROM procengine_results WHERE batch = ?", (batch,)).fetchone()[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finish(session):
    """End a session as a batch does, then wait for its writer (the batch itself never waits)."""
    session.close()
    assert session.flush(30), "the writer did not finish in time"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "results.db"


# -- the file -----------------------------------------------------------------------------------------
def test_a_new_file_gets_the_schema_in_wal_mode(path):
    store = ResultStore(path)
    assert store.path == path
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x50454E42
    ResultStore(path)  # opening it again is fine
    assert store.batches() == [] and store.count() == 0


def test_a_missing_folder_is_a_clear_error_and_creates_nothing(tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "r.db"
    with pytest.raises(FileNotFoundError, match=r"folder .* does not exist"):
        ResultStore(target)
    assert not (tmp_path / "no").exists()
    with pytest.raises(FileNotFoundError):
        resolve_store(str(target))


def test_a_folder_is_not_a_store(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        ResultStore(tmp_path)


@pytest.mark.parametrize("bad, error", [
    (42, TypeError), (b"r.db", TypeError), ("", ValueError), (":memory:", ValueError),
    ("file:r.db?mode=memory", ValueError), (None, TypeError),
])
def test_bad_paths(bad, error):
    with pytest.raises(error):
        ResultStore(bad)


@pytest.mark.parametrize("option, value, error", [
    ("commit_seconds", 0, ValueError), ("commit_seconds", float("inf"), ValueError),
    ("commit_seconds", "1", TypeError), ("commit_results", 0, ValueError), ("commit_results", 1.5, TypeError),
    ("commit_results", True, TypeError), ("busy_timeout", -1, ValueError),
])
def test_bad_options(path, option, value, error):
    with pytest.raises(error, match=option):
        ResultStore(path, **{option: value})


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(path):
    path.write_text("my precious notes\n" * 100)
    before = digest(path)
    with pytest.raises(ValueError, match="not an SQLite file"):
        ResultStore(path)
    with pytest.raises(ValueError, match="not an SQLite file"):
        load_results(path)
    assert digest(path) == before
    assert not Path(str(path) + "-wal").exists()


def test_another_sqlite_database_is_refused_and_left_unchanged(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mine (x)")
        conn.execute("INSERT INTO mine VALUES (1)")
    before = digest(path)
    with pytest.raises(ValueError, match="not a procengine_nb result store"):
        ResultStore(path)
    assert digest(path) == before


def test_a_store_of_another_version_is_refused_and_nothing_is_lost(path):
    store = ResultStore(path)
    session = store._session("b", str).open()
    session.add([ok("A", 1)])
    finish(session)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = digest(path)
    with pytest.raises(StoreVersionError, match=r"format 99.*another version"):
        ResultStore(path)
    with pytest.raises(StoreVersionError):
        load_results(path)
    assert isinstance(StoreVersionError("x"), ValueError)
    assert digest(path) == before
    assert rows_in(path) == 1


def test_an_empty_existing_file_becomes_a_store(path):
    path.touch()
    ResultStore(path)
    assert rows_in(path) == 0


def test_two_stores_creating_the_same_file_at_once(path):
    errors = []
    barrier = threading.Barrier(4)

    def make():
        barrier.wait()
        try:
            ResultStore(path)
        except Exception as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ResultStore(path).batches() == []


# -- writing and reading back ---------------------------------------------------------------------------
def test_round_trip_of_every_status(path):
    store = ResultStore(path)
    session = store._session("prices", str).open()
    cancelled = SymbolResult("C", ResultStatus.CANCELLED, None, RuntimeError("stop"), 0.5)
    session.add([ok("A", {"px": 1.5}), failed("B", KeyError("no data")), cancelled, ok(("t", 1), [1, 2])])
    finish(session)
    loaded = load_results(path, "prices")
    assert [r.symbol for r in loaded] == ["A", "B", "C", ("t", 1)]
    assert all(r.from_store for r in loaded)
    assert loaded[0].value == {"px": 1.5} and loaded[0].duration_ms == 1.0
    error = loaded[1].error
    assert loaded[1].status is ResultStatus.ERROR and isinstance(error, StoredError)
    assert error.type_name == "KeyError" and error.message == "'no data'"
    assert "Traceback" in error.traceback_text and "failed" in error.traceback_text  # the raising function
    assert error.__traceback__ is None  # text only: no live frames
    assert loaded[2].status is ResultStatus.CANCELLED and str(loaded[2].error) == "RuntimeError: stop"
    assert loaded[3].value == [1, 2]
    assert loaded.job.name == "prices" and loaded.summary() == "4 of 4 processed: 2 ok, 1 failed, 1 stopped"


def test_a_custom_exception_type_keeps_its_qualified_name(path):
    class Throttled(Exception):
        pass

    session = ResultStore(path)._session("b", str).open()
    session.add([failed("A", Throttled("429"))])
    finish(session)
    error = load_results(path).errors[0].error
    assert error.type_name.endswith("test_a_custom_exception_type_keeps_its_qualified_name.<locals>.Throttled")
    assert str(error).endswith("Throttled: 429")


def test_an_exception_whose_str_raises_is_still_stored(path):
    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    session = ResultStore(path)._session("b", str).open()
    session.add([failed("A", Nasty())])
    finish(session)
    assert "whose str() failed" in load_results(path).errors[0].error.message


def test_an_unpicklable_value_stays_in_memory_and_the_store_says_why(path):
    store = ResultStore(path)
    lock = threading.Lock()
    result = ok("A", lock)
    session = store._session("b", str).open()
    session.add([result, ok("B", 2)])
    finish(session)
    assert result.value is lock and session.unkept == 1
    loaded = {r.symbol: r for r in load_results(path)}
    assert isinstance(loaded["A"].value, NotStored)
    assert "could not pickle" in loaded["A"].value.reason and "lock" in loaded["A"].value.reason
    assert loaded["A"].status is ResultStatus.SUCCESS and loaded["B"].value == 2
    # a rerun computes it again: the store cannot give the value back
    rerun = store._session("b", str).open()
    assert not rerun.is_known("A") and rerun.is_known("B")
    assert list(rerun.done(["A", "B"], ["A", "B"])) == [1]
    finish(rerun)


def test_an_unpicklable_symbol_reads_back_as_its_key(path):
    lock = threading.Lock()
    session = ResultStore(path)._session("b", lambda s: "the-lock").open()
    session.add([ok(lock, 1)])
    finish(session)
    assert [r.symbol for r in load_results(path)] == ["the-lock"]


def test_done_gives_stored_successes_for_the_current_symbols(path):
    store = ResultStore(path)
    session = store._session("b", str).open()
    session.add([ok(1, "one"), failed(2, ValueError("x")), ok(3, "three")])
    finish(session)
    rerun = store._session("b", str).open()
    assert rerun.has_known
    symbols = [1, 2, 3, 1]  # a duplicate symbol gets the stored result too
    found = rerun.done(symbols, [str(s) for s in symbols])
    assert sorted(found) == [0, 2, 3]
    assert found[0].symbol == 1 and found[0].value == "one" and found[0].from_store
    assert found[0].status is ResultStatus.SUCCESS and found[3].value == "one"
    finish(rerun)
    other = store._session("another batch", str).open()
    assert not other.has_known and other.done([1], ["1"]) == {}
    finish(other)


def test_a_stored_value_that_no_longer_unpickles_is_computed_again(path, caplog):
    store = ResultStore(path)
    session = store._session("b", str).open()
    session.add([ok("A", 1), ok("B", 2)])
    finish(session)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE procengine_results SET value = ? WHERE key = 'A'",
                     (b"\x80\x05cno_such_module\nThing\n.",))
    rerun = store._session("b", str).open()
    found = rerun.done(["A", "B"], ["A", "B"])
    assert list(found) == [1] and not rerun.is_known("A")
    assert "could not be loaded" in caplog.text and "running it again" in caplog.text
    finish(rerun)
    loaded = {r.symbol: r for r in load_results(path)}  # that symbol alone is an ERROR; the load holds
    assert loaded["A"].status is ResultStatus.ERROR and isinstance(loaded["A"].error, StoreLoadError)
    assert "could not be loaded" in str(loaded["A"].error) and "no_such_module" in str(loaded["A"].error)
    assert loaded["B"].value == 2 and loaded["B"].ok


def test_a_kept_success_is_never_replaced_by_a_failure(path):
    store = ResultStore(path)
    first = store._session("b", str).open()
    first.add([ok("A", 1), failed("B", ValueError("x"))])
    finish(first)
    second = store._session("b", str).open()
    second.add([failed("A", ValueError("late")), ok("B", 2), ok("C", threading.Lock())])
    finish(second)
    loaded = {r.symbol: r for r in load_results(path)}
    assert loaded["A"].value == 1 and loaded["B"].value == 2
    third = store._session("b", str).open()
    third.add([ok("C", 3)])  # a kept value replaces one that could not be kept
    finish(third)
    assert {r.symbol: r for r in load_results(path)}["C"].value == 3


def test_results_from_the_store_are_not_written_again(path):
    store = ResultStore(path)
    session = store._session("b", str).open()
    session.add([ok("A", 1)])
    finish(session)
    rerun = store._session("b", str).open()
    [again] = rerun.done(["A"], ["A"]).values()
    rerun.add([again])
    assert rerun.writer.waiting == 0 and not rerun.writer.running  # nothing handed over
    finish(rerun)
    assert rows_in(path) == 1


# -- the background writer -------------------------------------------------------------------------------
def test_commits_are_batched_by_time(path):
    store = ResultStore(path, commit_seconds=0.3, commit_results=1000)
    session = store._session("b", str).open()
    session.add([ok(i, i) for i in range(10)])
    assert session.writer.waiting == 10  # handed over, the batch did not wait
    wait_until(lambda: rows_in(path) == 10)  # written within commit_seconds, with no flush asked
    assert session.writer.written == 10 and session.writer.waiting == 0
    session.add([ok("late", 1)])
    wait_until(lambda: rows_in(path) == 11)
    finish(session)
    wait_until(lambda: not session.writer.running)  # the thread ends once the batch ended and all is written


def test_commits_are_batched_by_count(path):
    store = ResultStore(path, commit_seconds=3600, commit_results=100)
    session = store._session("b", str).open()
    session.add([ok(i, i) for i in range(99)])
    assert rows_in(path) == 0 and session.writer.waiting == 99  # below commit_results: an hour to wait
    session.add([ok(99, 99)])
    wait_until(lambda: rows_in(path) == 100)  # commit_results reached: written at once
    session.add([ok(100, 100)])
    assert session.flush(30) and rows_in(path) == 101  # flush writes now
    finish(session)
    finish(session)  # idempotent
    assert rows_in(path) == 101


def test_a_locked_store_keeps_the_rows_and_retries_in_the_background(path, caplog):
    store = ResultStore(path, commit_seconds=0.05)
    session = store._session("b", str).open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        started = time.monotonic()
        session.add([ok("A", 1)])
        session.close()  # the batch ends: close() returns at once, however locked the file
        assert time.monotonic() - started < 1.0
        wait_until(lambda: session.writer.failing is not None)
        assert "database is locked" in session.writer.failing and "cannot write 1 result(s)" in caplog.text
        assert not session.flush(0.2)  # still waiting, kept for the next try
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert session.flush(30) and rows_in(path) == 1  # once the lock is gone, the rows arrive
    assert session.writer.failing is None and not session.writer.lost


def test_a_store_locked_past_busy_timeout_after_the_batch_gives_up_and_says_so(path, caplog):
    store = ResultStore(path, busy_timeout=0.3)
    session = store._session("the batch", str).open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        session.add([ok(i, i) for i in range(3)])
        session.close()
        assert session.flush(30)  # settled: given up on
        wait_until(lambda: not session.writer.running)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert session.writer.lost == 3 and rows_in(path) == 0
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert str(path) in line and "3 result(s) of batch 'the batch' could not be written" in line


def test_a_value_whose_pickling_raises_a_base_exception_costs_that_value_only(path):
    class Exit(BaseException):
        pass

    class Hostile:
        def __reduce__(self):
            raise Exit("no pickle for you")

    class Interrupting:
        def __reduce__(self):
            raise KeyboardInterrupt

    session = ResultStore(path)._session("b", str).open()
    session.add([ok("A", Hostile()), ok("B", Interrupting()), ok("C", SystemExit), ok("D", 4)])
    finish(session)
    assert session.unkept == 2 and session.writer.written == 4
    loaded = {r.symbol: r.value for r in load_results(path)}
    assert "could not pickle the value" in loaded["A"].reason and "no pickle for you" in loaded["A"].reason
    assert "KeyboardInterrupt" in loaded["B"].reason
    assert loaded["C"] is SystemExit and loaded["D"] == 4


def test_every_writer_thread_ends(path, no_thread_leak):
    store = ResultStore(path)
    sessions = [store._session(f"b{n}", str).open() for n in range(5)]
    for n, session in enumerate(sessions):
        session.add([ok(n, n)])
        session.close()
    assert store.flush(30) and store.count() == 5
    never_used = store._session("nothing", str).open()
    never_used.close()
    assert not never_used.writer.running  # no result, no thread


def test_concurrent_batches_on_one_file(path):
    store = ResultStore(path, commit_results=7)
    barrier = threading.Barrier(4)
    errors = []

    def batch(n):
        try:
            session = ResultStore(path, commit_results=7)._session(f"batch {n % 2}", str).open()
            barrier.wait()
            for i in range(300):
                session.add([ok(f"{n}-{i}", i)])
            finish(session)
        except Exception as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.batches() == ["batch 0", "batch 1"]
    assert store.count("batch 0") == store.count("batch 1") == 600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- reading --------------------------------------------------------------------------------------------
def test_load_results_needs_a_name_when_the_store_holds_several_batches(path):
    store = ResultStore(path)
    for name in ("a", "b"):
        session = store._session(name, str).open()
        session.add([ok(name, 1)])
        finish(session)
    with pytest.raises(ValueError, match=r"several batches .*'a', 'b'.*pass name="):
        load_results(path)
    assert [r.symbol for r in load_results(store, "b")] == ["b"]
    with pytest.raises(ValueError, match=r"holds no batch named 'no such batch'; it holds 'a', 'b'") as info:
        load_results(path, "no such batch")
    assert str(path) in str(info.value)
    with pytest.raises(TypeError):
        load_results(path, 3)


def test_load_results_never_creates_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no store"):
        load_results(tmp_path / "nothing.db")
    assert list(tmp_path.iterdir()) == []


def test_forget(path):
    store = ResultStore(path)
    session = store._session("b", str).open()
    session.add([ok(s, 1) for s in "ABCD"])
    finish(session)
    assert store.forget("b", ["A", "B", "Z"]) == 2
    assert sorted(r.symbol for r in store.load("b")) == ["C", "D"]
    assert store.forget("b") == 2 and store.count() == 0
    with pytest.raises(TypeError):
        store.forget("b", [1])


# -- keys and names ---------------------------------------------------------------------------------------
def test_key_functions():
    assert make_key_function(None)("42") == "42"
    key = make_key_function(lambda s: s["id"])
    assert key({"id": "x1"}) == "x1"
    with pytest.raises(ValueError, match=r"key= raised KeyError\('id'\) for the symbol \{'n': 1\}"):
        key({"n": 1})
    with pytest.raises(TypeError, match="key= must return a str, not int"):
        make_key_function(len)("abc")
    with pytest.raises(TypeError, match="key must be callable"):
        make_key_function("id")


def fetch(symbol):
    return symbol


def test_default_batch_names():
    assert default_batch_name(fetch) == f"{__name__}.fetch"
    assert default_batch_name(functools.wraps(fetch)(lambda s: s)) == f"{__name__}.fetch"
    assert default_batch_name(lambda s: s) is None
    assert default_batch_name(functools.partial(fetch)) is None
    assert default_batch_name(str.upper) is None or default_batch_name(str.upper).endswith("upper")


def test_resolve_store(path):
    store = ResultStore(path)
    assert resolve_store(None) is None and resolve_store(store) is store
    assert resolve_store(str(path)).path == path and resolve_store(path).path == path
    with pytest.raises(TypeError, match="store must be a path"):
        resolve_store(3)


def test_symbol_result_keeps_its_field_order():
    result = SymbolResult("A", ResultStatus.SUCCESS, 1, None, 2.0)
    assert (result.symbol, result.value, result.duration_ms, result.from_store) == ("A", 1, 2.0, False)
    assert pickle.loads(pickle.dumps(result)).from_store is False
