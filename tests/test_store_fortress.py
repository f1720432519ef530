"""The store never holds the batch, reuses only what the same code stored, never confuses two symbols, and
reads back whatever it can (issue 19: "The batch thread is a fortress", the store's part)."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from fractions import Fraction

import pytest

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingJob, ResultStatus, ResultStore, load_results
from procengine_nb.store import StoreLoadError, code_fingerprint, default_key

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "results.db"


def written(path):
    assert ResultStore(path).flush(30), "the writers did not finish in time"


def rows_in(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM procengine_results").fetchone()[0]


# -- Stop never waits on I/O ----------------------------------------------------------------------------
def test_a_locked_store_holds_neither_the_callbacks_nor_the_stop_and_the_results_arrive_after(path, caplog,
                                                                                             no_thread_leak):
    store = ResultStore(path, commit_seconds=0.05)
    token = CancellationToken()
    locked = threading.Event()
    after_lock: list[float] = []
    enough = threading.Event()

    def callback(progress):
        if locked.is_set():
            after_lock.append(time.monotonic())
            if len(after_lock) >= 200:
                enough.set()

    def work(symbol):
        time.sleep(0.001)
        return symbol

    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    engine = ProcessingEngine(work, max_workers=2, chunk_size=1)
    handle = engine.start(ProcessingJob(range(100_000), name="locked"), callback, token, store=store)
    try:
        # let the writer write something first, then take the lock and keep it
        deadline = time.monotonic() + 30
        while rows_in(path) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        blocker.execute("BEGIN IMMEDIATE")
        locked.set()
        assert enough.wait(30), "the callbacks stopped while the store was locked"
        deadline = time.monotonic() + 30  # the writer meets the lock (and says so), the batch goes on
        while "database is locked" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        token.cancel("stop")
        result = handle.result(timeout=30)
        stop_seconds = time.monotonic() - started
    finally:
        token.cancel("the test ended")
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert stop_seconds < 1.0, f"Stop took {stop_seconds:.2f} s with the store locked"
    assert result.cancelled and len(result) >= 200
    written(path)  # the lock is gone: every result completed before the Stop reaches the file
    assert rows_in(path) == len(result)
    assert sorted(r.symbol for r in load_results(path, "locked")) == sorted(r.symbol for r in result)
    engine.close()


def test_a_store_locked_at_the_start_runs_the_batch_without_reuse_and_says_so(path, caplog, no_thread_leak):
    store = ResultStore(path)
    engine = ProcessingEngine(str.upper, max_workers=2)
    engine.process_batch(ProcessingJob(["a", "b"], name="x"), store=store)
    written(path)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("PRAGMA locking_mode = EXCLUSIVE")  # in WAL mode, the one lock that stops readers too
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("DELETE FROM procengine_meta WHERE name = 'none'")
    blocker.execute("COMMIT")  # exclusive mode keeps the lock until the connection closes
    try:
        started = time.monotonic()
        result = engine.process_batch(ProcessingJob(["a", "b", "c"], name="x"), store=store)
        seconds = time.monotonic() - started
        assert seconds < 5.0, f"the batch waited {seconds:.1f} s for a locked store"
        assert len(result) == 3 and not any(r.from_store for r in result)  # it ran without reuse
        assert "running without reusing them" in caplog.text and str(path) in caplog.text
    finally:
        blocker.close()
    written(path)
    assert sorted(r.value for r in load_results(path, "x")) == ["A", "B", "C"]
    engine.close()


def test_process_batch_returns_without_waiting_for_the_writer(path, no_thread_leak):
    """The batch's end and its result never wait for the file: the writer writes afterwards."""
    store = ResultStore(path, commit_seconds=3600, commit_results=10**6)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        result = ProcessingEngine(lambda s: bytes(1 << 20), max_workers=2).process_batch(
            ProcessingJob(range(20), name="big"), store=store)
        assert time.monotonic() - started < 10.0 and len(result) == 20
        assert rows_in(path) == 0  # nothing could be written yet
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    written(path)
    assert rows_in(path) == 20 and all(len(r.value) == 1 << 20 for r in load_results(path))


# -- a value whose pickling raises anything ----------------------------------------------------------------
class _Exit(BaseException):
    pass


class _RaisesBaseException:
    def __reduce__(self):
        raise _Exit("no pickle for you")


class _RaisesSystemExit:
    def __reduce__(self):
        raise SystemExit(3)


class _RaisesKeyboardInterrupt:
    def __reduce__(self):
        raise KeyboardInterrupt


def _hostile_value(symbol):
    return {0: _RaisesBaseException, 1: _RaisesSystemExit, 2: _RaisesKeyboardInterrupt}.get(symbol % 4, int)()


def test_a_value_whose_pickling_raises_a_base_exception_costs_only_that_value(path, no_thread_leak):
    result = ProcessingEngine(_hostile_value, max_workers=2).process_batch(ProcessingJob(range(8), name="h"),
                                                                          store=path)
    assert len(result) == 8 and result.counts()["success"] == 8 and not result.cancelled
    written(path)
    loaded = {r.symbol: r.value for r in load_results(path, "h")}
    assert "no pickle for you" in loaded[0].reason and "SystemExit" in loaded[1].reason
    assert "KeyboardInterrupt" in loaded[2].reason and loaded[3] == 0
    again = ProcessingEngine(_hostile_value, max_workers=2).process_batch(ProcessingJob(range(8), name="h"),
                                                                         store=path)
    assert sorted(r.symbol for r in again if r.from_store) == [3, 7]  # the values it could not keep run again


# -- reuse only what the same code stored -------------------------------------------------------------------
def _cell(source):
    """A function defined the way a notebook cell defines it (same name, module and qualname each time)."""
    namespace = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
    return namespace["f"]


def test_a_fixed_processor_is_computed_again_not_taken_from_the_store(path, caplog, no_thread_leak):
    buggy = _cell("def f(s):\n    return s * 3  # the bug\n")
    fixed = _cell("def f(s):\n    return s * 2\n")
    symbols = list(range(5))
    first = ProcessingEngine(buggy, max_workers=2).process_batch(ProcessingJob(symbols, name="cells"), store=path)
    assert sorted(r.value for r in first) == [0, 3, 6, 9, 12]
    again = ProcessingEngine(fixed, max_workers=2).process_batch(ProcessingJob(symbols, name="cells"), store=path)
    assert not any(r.from_store for r in again) and sorted(r.value for r in again) == [0, 2, 4, 6, 8]
    assert "5 stored result(s) of batch 'cells' were made by other code of the processor" in caplog.text
    same = ProcessingEngine(fixed, max_workers=2).process_batch(ProcessingJob(symbols, name="cells"), store=path)
    assert all(r.from_store for r in same) and sorted(r.value for r in same) == [0, 2, 4, 6, 8]
    assert sorted(r.value for r in load_results(path, "cells")) == [0, 2, 4, 6, 8]  # the newer code's results
    # the explicit choice: reuse what is stored, whatever code made it
    anything = ProcessingEngine(buggy, max_workers=2).process_batch(ProcessingJob(symbols, name="cells"),
                                                                    store=ResultStore(path, reuse="any"))
    assert all(r.from_store for r in anything) and sorted(r.value for r in anything) == [0, 2, 4, 6, 8]


def test_moving_a_function_or_rerunning_its_cell_keeps_its_results(path):
    one = _cell("def f(s):\n    return s + 1\n")
    two = _cell("\n\n\n# a comment above it\ndef f(s):\n    return s + 1\n")  # other line numbers, same code
    assert code_fingerprint(one) == code_fingerprint(two)
    ProcessingEngine(one).process_batch(ProcessingJob([1, 2], name="moved"), store=path)
    again = ProcessingEngine(two).process_batch(ProcessingJob([1, 2], name="moved"), store=path)
    assert all(r.from_store for r in again)


class _Scaler:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, symbol):
        return symbol * self.factor

    def method(self, symbol):
        return symbol


def _power(symbol, exponent):
    return symbol ** exponent


def test_code_fingerprints_tell_processors_apart():
    assert code_fingerprint(_cell("def f(s): return s + 1")) != code_fingerprint(_cell("def f(s): return s + 2"))
    assert code_fingerprint(_cell("def f(s): return s + 1")) != code_fingerprint(_cell("def f(s): return s - 1"))
    nested_a = _cell("def f(s):\n    def g(x): return x + 1\n    return g(s)\n")
    nested_b = _cell("def f(s):\n    def g(x): return x + 2\n    return g(s)\n")
    assert code_fingerprint(nested_a) != code_fingerprint(nested_b)  # nested code objects count
    assert code_fingerprint(functools.partial(_power, exponent=2)) != code_fingerprint(
        functools.partial(_power, exponent=3))  # a partial's arguments count
    assert code_fingerprint(functools.partial(_power, exponent=2)) == code_fingerprint(
        functools.partial(_power, exponent=2))
    assert code_fingerprint(_Scaler(2)) == code_fingerprint(_Scaler(3))  # an object: its type and __call__
    assert code_fingerprint(_Scaler(2)) != code_fingerprint(_cell("def f(s): return s"))
    assert code_fingerprint(_Scaler(2).method) != code_fingerprint(_Scaler(2))
    assert code_fingerprint(str.upper) != code_fingerprint(str.lower)
    wrapped = functools.wraps(_power)(lambda *a, **k: _power(*a, **k))
    assert code_fingerprint(wrapped) == code_fingerprint(_power)  # functools.wraps layers are looked through
    closure_2 = _cell("def make(k):\n    return lambda s: s * k\nf = make(2)\n")
    closure_3 = _cell("def make(k):\n    return lambda s: s * k\nf = make(3)\n")
    assert code_fingerprint(closure_2) != code_fingerprint(closure_3)  # plain values it closes over count


def test_a_code_fingerprint_is_the_same_in_another_process(tmp_path):
    """A kernel restart (another process, another hash seed) must find the same fingerprint, or a store
    would never be reused after a restart."""
    module = tmp_path / "cellcode.py"
    module.write_text("def f(s):\n    return s in {'alpha', 'beta', 'gamma', 'delta'} and {'k': (1, 2.5, None)}\n")
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); import cellcode; "
              "from procengine_nb.store import code_fingerprint; print(json.dumps(code_fingerprint(cellcode.f)))")
    seen = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                             env=env, timeout=60, check=True).stdout
        seen.add(json.loads(out))
    assert len(seen) == 1


@pytest.mark.parametrize("bad, error, message", [
    ("sometimes", ValueError, r"reuse must be 'same_code' .* or 'any' .*got 'sometimes'"),
    (1, TypeError, r"reuse must be a str, one of 'same_code', 'any'"),
])
def test_reuse_is_checked_and_the_message_says_what_is_accepted(path, bad, error, message):
    with pytest.raises(error, match=message):
        ResultStore(path, reuse=bad)


# -- keys never confuse two symbols ---------------------------------------------------------------------------
def _typed(symbol):
    return f"{type(symbol).__name__}:{symbol!r}"


def test_symbols_equal_as_text_but_of_other_types_never_share_a_key(path, no_thread_leak):
    symbols = [1, "1", Decimal("1"), 1.0, True, Fraction(1), (1,), "(1,)", b"1", None, "None"]
    assert len({default_key(s) for s in symbols}) == len(symbols)
    engine = ProcessingEngine(_typed, max_workers=3)
    engine.process_batch(ProcessingJob(symbols, name="types"), store=path)
    again = engine.process_batch(ProcessingJob(symbols, name="types"), store=path)
    assert all(r.from_store for r in again)
    assert all(r.value == _typed(r.symbol) for r in again), [(r.symbol, r.value) for r in again]
    assert sorted(map(repr, (r.symbol for r in load_results(path, "types")))) == sorted(map(repr, symbols))


def test_a_str_key_from_key_is_used_as_it_is_and_str_symbols_are_their_own_key(path):
    assert default_key("AAPL") == "AAPL" and default_key("\x00int:1") != default_key(1)
    engine = ProcessingEngine(lambda s: s["id"] * 2)
    engine.process_batch(ProcessingJob([{"id": 7}], name="k"), store=path, key=lambda s: str(s["id"]))
    written(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT key FROM procengine_results").fetchall() == [("7",)]
    assert ResultStore(path).forget("k", ["7"]) == 1


def _format_1_store(path, rows):
    """A store as the previous format wrote it: no code column, keys ``str(symbol)``."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE procengine_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE procengine_results (batch TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
                symbol BLOB, value BLOB, value_note TEXT, error_type TEXT, error_message TEXT,
                error_traceback TEXT, duration_ms REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 1,
                finished_at REAL NOT NULL, PRIMARY KEY (batch, key));
            PRAGMA application_id = 1346719298;
            PRAGMA user_version = 1;
        """)
        import pickle

        for n, (key, symbol, value) in enumerate(rows):
            conn.execute("INSERT INTO procengine_results (batch, key, status, symbol, value, finished_at) "
                         "VALUES ('old', ?, 'success', ?, ?, ?)",
                         (key, None if symbol == key else pickle.dumps(symbol), pickle.dumps(value), float(n)))


def test_a_store_of_the_previous_format_is_upgraded_and_its_rows_reused_only_when_asked(path, caplog):
    _format_1_store(path, [("a", "a", "A (old code)"), ("1", 1, "one (old code)")])
    processor = lambda s: f"{s} (new code)"  # noqa: E731
    engine = ProcessingEngine(processor)
    first = engine.process_batch(ProcessingJob(["a", 1], name="old"), store=path)  # upgrades the file
    assert not any(r.from_store for r in first)  # old rows have no code fingerprint: not reused by default
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    path2 = path.with_name("again.db")
    _format_1_store(path2, [("a", "a", "A (old code)"), ("1", 1, "one (old code)")])
    anything = engine.process_batch(ProcessingJob(["a", 1], name="old"), store=ResultStore(path2, reuse="any"))
    by_symbol = {r.symbol: r for r in anything}
    assert by_symbol["a"].from_store and by_symbol["a"].value == "A (old code)"  # a str symbol's key is unchanged
    assert not by_symbol[1].from_store  # its old key "1" could be any type's: never taken for the int 1


# -- reading back --------------------------------------------------------------------------------------------
def test_load_results_never_makes_a_store_of_an_empty_file(path):
    path.touch()
    with pytest.raises(ValueError, match=r"empty \(0 bytes\): not a result store") as info:
        load_results(path)
    assert str(path) in str(info.value)
    assert path.stat().st_size == 0 and not path.with_name(path.name + "-wal").exists()


def _store_with_rows(path, n=300):
    ProcessingEngine(lambda s: s * 1000, max_workers=2).process_batch(ProcessingJob(range(n), name="c"), store=path)
    written(path)


def test_a_damaged_store_file_is_an_error_that_names_it(path, tmp_path):
    _store_with_rows(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    original = path.read_bytes()
    rng = random.Random(19)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(60):
        damaged = tmp_path / f"damaged-{trial}.db"
        data = bytearray(original)
        if trial % 3 == 0:  # cut short
            data = data[: rng.randrange(100, len(data))]
        else:  # bytes overwritten somewhere
            start = rng.randrange(0, len(data) - 64)
            for i in range(start, start + rng.choice([1, 8, 64])):
                data[i] = rng.randrange(256)
        damaged.write_bytes(bytes(data))
        try:
            loaded = load_results(damaged, "c")
        except (ValueError, FileNotFoundError) as exc:
            assert str(damaged) in str(exc), f"trial {trial}: {exc!r} does not name the file"
            outcomes["refused"] += 1
        else:
            assert len(loaded) <= 300  # whatever was readable; a row that is not fails alone
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 0


def test_a_row_that_cannot_be_loaded_fails_alone(path):
    _store_with_rows(path, 5)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE procengine_results SET value = ? WHERE key = ?",
                     (b"\x80\x05cno_such_module\nThing\n.", default_key(2)))
        conn.execute("UPDATE procengine_results SET value = ? WHERE key = ?", (b"not a pickle", default_key(3)))
    loaded = {r.symbol: r for r in load_results(path, "c")}
    assert len(loaded) == 5
    for symbol in (2, 3):
        assert loaded[symbol].status is ResultStatus.ERROR and isinstance(loaded[symbol].error, StoreLoadError)
        assert "the stored value could not be loaded" in str(loaded[symbol].error)
    assert [loaded[s].value for s in (0, 1, 4)] == [0, 1000, 4000]


def test_a_batch_name_the_store_does_not_hold_is_an_error_listing_the_names(path):
    _store_with_rows(path, 2)
    with pytest.raises(ValueError, match=r"holds no batch named 'C'; it holds 'c'"):
        load_results(path, "C")
    empty = path.with_name("empty.db")
    ResultStore(empty)
    with pytest.raises(ValueError, match="holds no batch yet"):
        load_results(empty, "anything")
    assert len(load_results(empty)) == 0  # no name asked for: an empty store reads as an empty result


def test_load_results_waits_for_what_this_process_still_writes(path):
    store = ResultStore(path, commit_seconds=3600, commit_results=10**6)  # the writer would wait an hour
    ProcessingEngine(str.upper).process_batch(ProcessingJob(["a", "b"], name="w"), store=store)
    assert sorted(r.value for r in load_results(path, "w")) == ["A", "B"]


def test_interpreter_exit_writes_what_a_batch_left(tmp_path):
    """A script that ends right after its batch: the writer finishes before the process exits."""
    target = tmp_path / "exit.db"
    script = textwrap.dedent(f"""
        from procengine_nb import ProcessingEngine, ProcessingJob, ResultStore
        store = ResultStore({str(target)!r}, commit_seconds=3600, commit_results=10**6)
        ProcessingEngine(str, max_workers=2).process_batch(ProcessingJob(range(5000), name="exit"), store=store)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=dict(os.environ))
    assert ResultStore(target).count("exit") == 5000


def test_a_writer_that_gives_up_logs_the_file_and_the_count_once(path, caplog):
    caplog.set_level(logging.WARNING, "procengine_nb.store")
    store = ResultStore(path, busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        ProcessingEngine(str).process_batch(ProcessingJob(range(7), name="gone"), store=store)
        assert store.flush(30)  # settled: written or given up on
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "7 result(s) of batch 'gone'" in errors[0]


def test_a_batch_starting_beside_a_running_one_on_the_same_file_does_not_wait_for_it(path, no_thread_leak):
    token = CancellationToken()
    running = threading.Event()

    def steady(symbol):
        running.set()
        time.sleep(0.001)
        return symbol

    engine = ProcessingEngine(steady, max_workers=2)
    handle = engine.start(ProcessingJob(range(10**6), name="long"), cancellation_token=token, store=path)
    try:
        assert running.wait(30)
        for name in ("other", "long"):  # another batch, and the same batch name: neither waits for it
            started = time.monotonic()
            result = ProcessingEngine(str).process_batch(ProcessingJob(["a", "b"], name=name), store=path)
            assert len(result) == 2 and time.monotonic() - started < 4.0  # (the open waits at most 5 s)
    finally:
        token.cancel("the test ended")
        handle.result(timeout=30)
        engine.close()
    written(path)


def test_results_completed_before_a_stop_reach_the_store_with_nobody_waiting(path, no_thread_leak):
    store = ResultStore(path, commit_seconds=0.2, commit_results=10**6)
    token = CancellationToken()

    def callback(progress):
        if progress.completed_symbols >= 50:
            token.cancel("enough")

    def work(symbol):
        time.sleep(0.001)
        return symbol

    result = ProcessingEngine(work, max_workers=2, chunk_size=1).process_batch(
        ProcessingJob(range(10_000), name="stopped"), callback, token, store=store)
    assert result.cancelled and len(result) >= 50
    deadline = time.monotonic() + 20  # no flush asked: the writer writes them right after the batch ended
    while rows_in(path) < len(result):
        assert time.monotonic() < deadline, f"{rows_in(path)} of {len(result)} written"
        time.sleep(0.01)
    assert rows_in(path) == len(result)


class _RaisingHandler(logging.Handler):
    def emit(self, record):
        raise _Exit("a logging handler that raises")


def test_a_logging_handler_that_raises_costs_the_store_a_line_never_its_results(path, no_thread_leak):
    store_log = logging.getLogger("procengine_nb.store")
    handler = _RaisingHandler()
    store_log.addHandler(handler)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        store = ResultStore(path, commit_seconds=0.05)
        ProcessingEngine(_cell("def f(s): return s + 1")).process_batch(ProcessingJob(range(5), name="l"), store=store)
        written(path)
        blocker.execute("BEGIN IMMEDIATE")  # the writer will log that it cannot write yet
        edited = ProcessingEngine(_cell("def f(s): return s + 2"))  # the session logs that the code changed
        result = edited.process_batch(ProcessingJob(range(5), name="l"), store=store)
        assert sorted(r.value for r in result) == [2, 3, 4, 5, 6] and not any(r.from_store for r in result)
        blocker.execute("COMMIT")
        written(path)
    finally:
        store_log.removeHandler(handler)
        blocker.close()
    assert sorted(r.value for r in load_results(path, "l")) == [2, 3, 4, 5, 6]


def test_fixing_a_helper_the_processor_calls_computes_again(path):
    namespace = {"__name__": "__main__"}  # a notebook's namespace: each exec is a cell run
    exec("def helper(s):\n    return s * 3  # the bug\n\ndef f(s):\n    return helper(s) + 1\n", namespace)
    f = namespace["f"]
    ProcessingEngine(f).process_batch(ProcessingJob([1, 2], name="helpers"), store=path)
    same = ProcessingEngine(f).process_batch(ProcessingJob([1, 2], name="helpers"), store=path)
    assert all(r.from_store for r in same)
    exec("def helper(s):\n    return s * 2\n", namespace)  # only the helper's cell is fixed and rerun
    again = ProcessingEngine(f).process_batch(ProcessingJob([1, 2], name="helpers"), store=path)
    assert not any(r.from_store for r in again) and sorted(r.value for r in again) == [3, 5]


# -- a store is a regular file: anything else is refused at once, before anything opens it ----------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("entry", ["ResultStore", "start", "process_batch", "load_results"])
def test_a_fifo_or_device_as_a_store_is_refused_at_once_naming_the_path(entry, tmp_path, no_thread_leak):
    fifo = tmp_path / "results.db"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes: nothing may open it
    engine = ProcessingEngine(abs, max_workers=2)
    calls = {
        "ResultStore": lambda target: ResultStore(target),
        "start": lambda target: engine.start(ProcessingJob([1, -2], name="n"), store=target),
        "process_batch": lambda target: engine.process_batch(ProcessingJob([1, -2], name="n"), store=target),
        "load_results": lambda target: load_results(target, "n"),
    }
    outcome: list[BaseException] = []

    def attempt(target):
        try:
            calls[entry](target)
        except BaseException as exc:  # what the test looks at
            outcome.append(exc)

    for target, kind in ((fifo, "a FIFO"), ("/dev/null", "a character device")):
        outcome.clear()
        thread = threading.Thread(target=attempt, args=(target,), daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), f"{entry} on {kind} blocked (a hang)"
        assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
        assert str(target) in str(outcome[0]) and kind in str(outcome[0])
        assert "a result store is a regular file" in str(outcome[0])
    engine.close()


@pytest.mark.parametrize("entry", ["start", "process_batch"])
def test_a_store_path_locked_at_the_start_runs_the_batch_without_reuse_and_says_so(entry, path, caplog,
                                                                                 no_thread_leak):
    """``store="path"`` (no ResultStore made before the lock): the call returns at once and the batch runs as
    with a ResultStore object, without reuse, then writes once the lock is gone."""
    engine = ProcessingEngine(str.upper, max_workers=2)
    engine.process_batch(ProcessingJob(["a", "b"], name="x"), store=str(path))
    written(path)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("PRAGMA locking_mode = EXCLUSIVE")  # in WAL mode, the one lock that stops readers too
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("DELETE FROM procengine_meta WHERE name = 'none'")
    blocker.execute("COMMIT")  # exclusive mode keeps the lock until the connection closes
    try:
        started = time.monotonic()
        job = ProcessingJob(["a", "b", "c"], name="x")
        if entry == "start":
            handle = engine.start(job, store=str(path))
            returned = time.monotonic() - started
            result = handle.result(timeout=60)
        else:
            result = engine.process_batch(job, store=str(path))
            returned = time.monotonic() - started
        assert returned < 5.0, f"{entry} waited {returned:.1f} s for a locked store (its busy timeout is 10 s)"
        assert len(result) == 3 and not any(r.from_store for r in result)  # it ran without reuse
        assert "running without reusing them" in caplog.text and str(path) in caplog.text
    finally:
        blocker.close()
    written(path)
    assert sorted(r.value for r in load_results(path, "x")) == ["A", "B", "C"]
    engine.close()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write to: chmod for a normal user; as root (permissions do not stop
    root) a tmpfs remounted read-only."""
    folder = tmp_path / "media"
    folder.mkdir()
    if os.geteuid() != 0:
        yield folder, lambda: folder.chmod(0o555)
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "none", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        message = f"root without the right to mount a tmpfs: {mounted.stderr!r}"
        if os.environ.get("CI", "").lower() == "true":  # as the browser and remote-host tests: CI must run it
            pytest.fail(message)
        pytest.skip(message)
    try:
        def remount():  # refused while a file there is still open for writing (a writer closing): retried
            for _ in range(100):
                if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode == 0:
                    return
                time.sleep(0.1)
            raise AssertionError(f"{folder} could not be remounted read-only")

        yield folder, remount
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def test_a_store_on_read_only_media_loads(read_only_folder, no_thread_leak):
    folder, make_read_only = read_only_folder
    store_path = folder / "results.db"
    engine = ProcessingEngine(str.upper, max_workers=2)
    engine.process_batch(ProcessingJob(["a", "b", "c"], name="x"), store=store_path)
    written(store_path)
    engine.close()
    make_read_only()
    assert sorted(load_results(store_path, "x").values) == [("a", "A"), ("b", "B"), ("c", "C")]
    store = ResultStore._existing(store_path)
    assert store.batches() == ["x"] and store.count("x") == 3
    assert sorted(os.listdir(folder)) == ["results.db"]  # nothing was (or could be) written there
