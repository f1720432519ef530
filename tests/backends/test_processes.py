"""backend="processes": loky worker processes, per-symbol serialization faults, Stop, a dead worker, cleanup.

These use a real loky pool of two worker processes (spawned once, reused by the tests).
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from threadcheck import child_processes

from procengine_nb import CancellationToken, ProcessingCancelledException, ProcessingEngine, ResultStatus
from procengine_nb.backends import make_backend
from procengine_nb.backends._marker import MarkerToken
from procengine_nb.backends._wire import RemoteSerializationError, RemoteTraceback

loky = pytest.importorskip("loky")
shutdown_pools = pytest.importorskip("procengine_nb.backends.processes").shutdown_pools

pytestmark = pytest.mark.timeout(180)


# -- processors (module level or closures: both travel with cloudpickle) ----------------------------
def double(symbol):
    if symbol == 13:
        raise ValueError(f"unlucky {symbol}")
    return symbol * 2


def token_type(symbol, cancellation_token=None):
    return type(cancellation_token).__name__, cancellation_token.is_cancelled, os.getpid()


class _Explodes:
    """Pickles fine in the worker, cannot be unpickled here."""

    def __reduce__(self):
        return (_explode, ("boom on load",))


def _explode(message):
    raise RuntimeError(message)


def bad_results(symbol):
    if symbol == "lock":
        return threading.Lock()  # cannot be pickled in the worker
    if symbol == "explode":
        return _Explodes()  # cannot be unpickled in the parent
    return symbol.upper()


def _wait_no_children(timeout: float = 20.0, *, warm_pool_too: bool = True) -> list[psutil.Process]:
    """The child processes left after ``timeout``; first stops the warm pool unless told not to (to
    check that something else, e.g. ``close()``, killed the workers)."""
    if warm_pool_too:
        shutdown_pools()
    deadline = time.monotonic() + timeout
    while True:
        left = [c for c in child_processes() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _accounted(result, symbols) -> None:
    seen = [r.symbol for r in result] + list(result.unprocessed)
    assert sorted(map(repr, seen)) == sorted(map(repr, symbols))


# -- success, errors, same results as threads -----------------------------------------------------
def test_same_results_as_threads_and_the_callers_symbol_objects():
    symbols = list(range(40))
    threads = ProcessingEngine(double, max_workers=2).process_batch(symbols)
    with ProcessingEngine(double, backend="processes", max_workers=2) as engine:
        assert engine.backend.name == "processes" and not engine.backend.shares_memory
        result = engine.process_batch(symbols)
    key = lambda r: r.symbol  # noqa: E731
    assert [(r.symbol, r.status, r.value) for r in sorted(result, key=key)] == [
        (r.symbol, r.status, r.value) for r in sorted(threads, key=key)
    ]
    failed = result.errors
    assert [r.symbol for r in failed] == [13]
    assert isinstance(failed[0].error, ValueError) and str(failed[0].error) == "unlucky 13"
    # the worker's traceback travels as the cause
    assert isinstance(failed[0].error.__cause__, RemoteTraceback)
    assert "double" in str(failed[0].error.__cause__)
    assert not result.cancelled and list(result.unprocessed) == []
    assert result.progress.percentage == 100.0 and result.progress.running_symbols == 0


def test_symbols_come_back_as_the_same_objects():
    class Box:  # no __eq__: identity is the only way to match it
        def __init__(self, n):
            self.n = n

    boxes = [Box(i) for i in range(6)]
    with ProcessingEngine(lambda box: box.n + 1, backend="processes", max_workers=2) as engine:
        result = engine.process_batch(boxes)
    assert {id(r.symbol) for r in result} == {id(b) for b in boxes}
    assert sorted(r.value for r in result) == [1, 2, 3, 4, 5, 6]


def test_a_closure_defined_like_in_a_notebook_cell_runs_in_worker_processes():
    offset = 100

    def add_offset(symbol):  # a local function: only cloudpickle can send it
        return symbol + offset, os.getpid()

    with ProcessingEngine(add_offset, backend="processes", max_workers=2) as engine:
        result = engine.process_batch([1, 2, 3])
    assert sorted(r.value[0] for r in result) == [101, 102, 103]
    assert all(r.value[1] != os.getpid() for r in result)


def test_the_processor_gets_a_worker_local_token_not_none():
    with ProcessingEngine(token_type, backend="processes", max_workers=2) as engine:
        result = engine.process_batch(["a", "b"])
    assert [r.status for r in result] == [ResultStatus.SUCCESS] * 2
    assert {r.value[:2] for r in result} == {("MarkerToken", False)}


# -- serialization faults cost one symbol -----------------------------------------------------------
def test_a_processor_that_cannot_be_pickled_fails_every_symbol_clearly():
    lock = threading.Lock()

    def holds_a_lock(symbol):
        with lock:
            return symbol

    with ProcessingEngine(holds_a_lock, backend="processes", max_workers=2) as engine:
        result = engine.process_batch(["a", "b", "c"])
    assert [r.status for r in result] == [ResultStatus.ERROR] * 3
    assert all("processor" in str(r.error) and "cannot be sent" in str(r.error) for r in result)
    _accounted(result, ["a", "b", "c"])


def test_results_that_cannot_cross_back_are_only_their_symbols_errors():
    symbols = ["x", "lock", "y", "explode", "z"]
    with ProcessingEngine(bad_results, backend="processes", max_workers=2, chunk_size=5) as engine:
        result = engine.process_batch(symbols)
    outcome = {r.symbol: r for r in result}
    assert {s: outcome[s].value for s in ("x", "y", "z")} == {"x": "X", "y": "Y", "z": "Z"}
    lock_error = outcome["lock"].error
    assert isinstance(lock_error, RemoteSerializationError)
    assert "cannot be sent back from the worker" in str(lock_error) and "lock" in str(lock_error)
    load_error = outcome["explode"].error
    assert isinstance(load_error, RemoteSerializationError)
    assert "cannot be unpickled here" in str(load_error) and "boom on load" in str(load_error)


# -- a worker process that dies ---------------------------------------------------------------------
def die_on_seven(symbol, ran_dir=None):
    if ran_dir is not None:
        Path(ran_dir, str(symbol)).touch()
    if symbol == 7:
        os._exit(3)
    time.sleep(0.01)
    return symbol


def _runs(numbers) -> list[list[int]]:
    """Sorted integers as runs of consecutive ones: [1, 2, 3, 7, 8] -> [[1, 2, 3], [7, 8]]."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def test_a_worker_that_dies_mid_batch_loses_no_symbol_and_the_batch_goes_on(tmp_path):
    symbols = list(range(60))
    processor = functools.partial(die_on_seven, ran_dir=str(tmp_path))
    with ProcessingEngine(processor, backend="processes", max_workers=2) as engine:
        result = engine.process_batch(symbols)
        assert not result.cancelled and list(result.unprocessed) == []
        _accounted(result, symbols)
        errors = {r.symbol: r.error for r in result.errors}
        # only the symbol the dead worker was running fails; its chunk's other symbols, the chunk
        # the other worker was running and the chunks not started all ran on the fresh pool
        assert list(errors) == [7]
        assert type(errors[7]).__name__ == "TerminatedWorkerError" and "EXIT(3)" in str(errors[7])
        assert all(r.value == r.symbol for r in result if r.ok)
        # and the engine keeps working afterwards
        again = engine.process_batch([1, 2, 3])
        assert sorted(r.value for r in again) == [1, 2, 3]


def die_on_multiples(symbol, every):
    if symbol % every == every - 1:
        os._exit(5)
    return symbol


@pytest.mark.parametrize(("every", "count"), [(100, 600), (7, 42)])
def test_many_killer_symbols_among_tiny_ones_fail_alone(every, count):
    """Tiny symbols travel in chunks of thousands; a chunk holding a symbol that kills its worker must
    not take its thousands of neighbours (nor the other worker's chunk) down with it. (Each death costs
    loky up to 0.25 s to notice: a handful of them here.)"""
    symbols = list(range(count))
    with ProcessingEngine(functools.partial(die_on_multiples, every=every), backend="processes",
                          max_workers=2) as engine:
        engine.process_batch([s for s in range(2000) if s % every != every - 1])  # warm: no killer
        result = engine.process_batch(symbols)
    _accounted(result, symbols)
    assert sorted(r.symbol for r in result.errors) == [s for s in symbols if s % every == every - 1]
    assert all(type(r.error).__name__ == "TerminatedWorkerError" for r in result.errors)
    assert all(r.value == r.symbol for r in result if r.ok)


def waits_for_release(symbol, started_dir, release_file):
    Path(started_dir, str(symbol)).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.005)
    return symbol


def test_a_killed_worker_fails_only_the_symbol_it_was_running(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    symbols = list(range(40))
    processor = functools.partial(waits_for_release, started_dir=str(started), release_file=str(release))
    with ProcessingEngine(processor, backend="processes", max_workers=2, chunk_size=4) as engine:
        handle = engine.start(symbols)
        _wait_for_files(started, 2)  # one chunk runs on each worker, two more wait in the pool
        time.sleep(0.05)
        victim = next(iter(child_processes()))  # the pool's workers are the only children here
        os.kill(victim.pid, 9)
        deadline = time.monotonic() + 60
        while not handle.done():  # the fresh pool's workers wait for the release like the others did
            if len(list(started.iterdir())) > 2:
                break
            assert time.monotonic() < deadline, "nothing ran after the worker was killed"
            time.sleep(0.01)
        release.touch()
        result = handle.result(timeout=60)
    _accounted(result, symbols)
    # the killed worker was running the first symbol of its chunk (0 or 4): that symbol alone fails;
    # the rest of its chunk, the other worker's chunk (cut short by loky) and the queued ones all ran
    errors = [r.symbol for r in result.errors]
    assert errors in ([0], [4]), errors
    assert type(result.errors[0].error).__name__ == "TerminatedWorkerError"
    assert "EXIT(-9)" in str(result.errors[0].error) or "SIGKILL" in str(result.errors[0].error)
    assert sorted(r.symbol for r in result if r.ok) == [s for s in symbols if s not in errors]


def test_a_chunk_lost_unstarted_is_sent_again_at_most_a_few_times_and_never_after_a_stop(monkeypatch):
    from procengine_nb.backends import _recovery, processes
    from procengine_nb.backends.base import Chunk

    token = CancellationToken()
    backend = processes.ProcessBackend(max_workers=1)
    batch = backend.open(token)
    sends = []

    class Broken:
        def __init__(self):
            self.error = loky.process_executor.TerminatedWorkerError("the pool broke")

        def cancelled(self):
            return False

        def exception(self):
            return self.error

        def add_done_callback(self, callback):
            callback(self)  # it broke at once, before the chunk could start

    class BrokenPool:  # a pool that breaks before it runs anything, every time
        productive = False

        def submit(self, fn, *args):
            sends.append(args)
            return Broken()

    real_pool = batch._pool
    monkeypatch.setattr(batch, "_pool", BrokenPool())
    try:
        task = batch.submit_chunk(Chunk((1, 2), abs, False))
        assert task.done() and len(sends) == 1 + _recovery._MAX_RESENDS  # never an endless loop
        assert type(task.exception()).__name__ == "TerminatedWorkerError"
        token.cancel()
        sends.clear()
        stopped = batch.submit_chunk(Chunk((3,), abs, False))
        assert stopped.cancelled() and len(sends) == 1  # a Stop: not sent again, it ran nothing
    finally:
        batch._pool = real_pool
        batch.close(cancelled=True)
        backend.close()


def test_a_chunk_whose_started_file_was_being_made_when_the_pool_broke_runs_again(tmp_path):
    """The flaky failure of test_many_killer_symbols_among_tiny_ones_fail_alone, made deterministic: a
    worker creates a chunk's started file, then sizes it; a pool that broke in between (another worker
    died) left an empty file. That chunk had run no symbol: it runs again on the fresh pool (it used to
    fail whole, each of its symbols a TerminatedWorkerError)."""
    from procengine_nb.backends import processes
    from procengine_nb.backends._started_file import read_progress
    from procengine_nb.backends.base import Chunk

    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    blocked = functools.partial(waits_for_release, started_dir=str(started), release_file=str(release))
    token = CancellationToken()
    backend = processes.ProcessBackend(max_workers=1)
    batch = backend.open(token)
    try:
        first = batch.submit_chunk(Chunk((0,), blocked, False))
        _wait_for_files(started, 1)  # symbol 0 runs; the next chunk waits in the pool
        second = batch.submit_chunk(Chunk((1, 2), blocked, False))
        with open(second.key, "x"):  # what a worker leaves between creating the file and sizing it
            pass
        running, pid = read_progress(first.key)
        assert running == 0
        os.kill(pid, 9)  # the pool breaks while the second chunk's file is still empty
        assert first.result(timeout=60)[0].status is ResultStatus.ERROR
        release.touch()
        ran = second.result(timeout=60)
        assert [(r.symbol, r.status) for r in ran] == [(1, ResultStatus.SUCCESS), (2, ResultStatus.SUCCESS)]
    finally:
        release.touch()
        batch.close(cancelled=True)
        backend.close()
        shutdown_pools()


def test_a_chunk_taken_back_at_a_pause_never_runs_even_when_the_pool_breaks(tmp_path):
    """take_back claims a chunk no worker started (loky's call queue cannot give it back): the worker
    that picks it up runs nothing, and when the pool breaks the recovery does not send it again."""
    from procengine_nb.backends import processes
    from procengine_nb.backends._started_file import read_progress
    from procengine_nb.backends.base import Chunk

    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    blocked = functools.partial(waits_for_release, started_dir=str(started), release_file=str(release))
    token = CancellationToken()
    backend = processes.ProcessBackend(max_workers=1)
    batch = backend.open(token)
    try:
        first = batch.submit_chunk(Chunk((0,), blocked, False))
        _wait_for_files(started, 1)
        second = batch.submit_chunk(Chunk((1, 2), blocked, False))
        assert batch.take_back([first, second]) == [second]  # the running one stays
        assert batch.take_back([first]) == []
        _, pid = read_progress(first.key)
        os.kill(pid, 9)
        assert first.result(timeout=60)[0].status is ResultStatus.ERROR
        release.touch()
        assert second.cancelled() or second.result(timeout=60) == []
        time.sleep(0.3)
        assert sorted(p.name for p in started.iterdir()) == ["0"]  # 1 and 2 never ran
    finally:
        release.touch()
        batch.close(cancelled=True)
        backend.close()
        shutdown_pools()


# -- Stop ---------------------------------------------------------------------------------------------
def wait_for_stop(symbol, cancellation_token, started_dir):
    Path(started_dir, f"{symbol}").touch()
    if cancellation_token.wait(60):
        Path(started_dir, f"{symbol}.stopped").touch()
        cancellation_token.throw_if_cancelled()
    return symbol


def _wait_for_files(directory: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.iterdir())) < count:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.01)


def test_stop_mid_batch_returns_the_partial_result_and_reaches_running_processors(tmp_path):
    symbols = list(range(50))
    processor = lambda s, cancellation_token: wait_for_stop(s, cancellation_token, str(tmp_path))  # noqa: E731
    before = set(threading.enumerate())
    engine = ProcessingEngine(processor, backend="processes", max_workers=2)
    try:
        handle = engine.start(symbols)
        _wait_for_files(tmp_path, 2)  # both workers are inside a processor
        handle.cancel()
        result = handle.result(timeout=60)
        assert result.cancelled
        _accounted(result, symbols)
        # at most the two that had started can still be running (the marker may have stopped them
        # already); the chunks queued in loky but not started are not counted: they run no symbol
        assert 0 <= result.progress.running_symbols <= 2
        assert len(result.unprocessed) >= 50 - len(result)
        # Stop reached them through their token (well before their 60 s wait ran out)
        deadline = time.monotonic() + 30
        started = {p.name for p in tmp_path.iterdir() if not p.name.endswith(".stopped")}
        while {p.name for p in tmp_path.iterdir() if p.name.endswith(".stopped")} != {f"{n}.stopped" for n in started}:
            assert time.monotonic() < deadline, "the running processors never saw the Stop"
            time.sleep(0.01)
    finally:
        engine.close()
    assert not _wait_no_children()
    leftovers = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    deadline = time.monotonic() + 10
    while leftovers and time.monotonic() < deadline:
        leftovers[0].join(0.1)
        leftovers = [t for t in leftovers if t.is_alive()]
    assert not leftovers, [t.name for t in leftovers]


def test_a_processor_that_ignores_stop_keeps_running_until_close_kills_it(tmp_path):
    def stubborn(symbol):
        Path(tmp_path, str(symbol)).touch()
        time.sleep(120)  # ignores the token
        return symbol

    engine = ProcessingEngine(stubborn, backend="processes", max_workers=2)
    handle = engine.start(list(range(10)))
    _wait_for_files(tmp_path, 2)
    handle.cancel()
    result = handle.result(timeout=60)
    assert result.cancelled and len(result) == 0 and len(result.unprocessed) == 10
    assert result.progress.running_symbols == 2  # exactly the two started, reported, not waited for
    assert child_processes(), "the stubborn processors should still be running"
    started = time.monotonic()
    engine.close()  # kills the workers a Stop left running instead of waiting two minutes
    assert time.monotonic() - started < 5
    assert not _wait_no_children(warm_pool_too=False)


def test_a_cancelled_token_before_the_start_runs_nothing():
    token = CancellationToken()
    token.cancel("not today")
    with ProcessingEngine(double, backend="processes", max_workers=2) as engine:
        result = engine.process_batch([1, 2, 3], cancellation_token=token)
    assert result.cancelled and len(result) == 0 and list(result.unprocessed) == [1, 2, 3]


# -- the marker token ----------------------------------------------------------------------------------
def test_marker_token_turns_cancelled_when_the_marker_appears(tmp_path):
    host = socket.gethostname()
    marker = tmp_path / "stop"
    token = MarkerToken((host, str(marker)))
    assert not token.is_cancelled and not token.wait(0.01)
    token.throw_if_cancelled()
    marker.touch()
    assert token.wait(5)
    assert token.is_cancelled and token.reason == "the batch was stopped"
    with pytest.raises(ProcessingCancelledException):
        token.throw_if_cancelled()
    assert not MarkerToken(None).wait(0)
    # the batch is over (its directory removed): a chunk still running or starting late stops
    closed = MarkerToken((host, str(tmp_path / "removed" / "batch")))
    assert closed.wait(5) and closed.reason == "the batch is over"
    # a worker on another machine cannot see the file: its token is never cancelled
    remote = MarkerToken(("another-host.invalid", str(tmp_path / "removed" / "batch")))
    assert not remote.wait(0.02) and not remote.is_cancelled
    # it travels (a processor may hand it to a subprocess of its own)
    assert pickle.loads(pickle.dumps(token)).is_cancelled


# -- options, cleanup, missing extra ----------------------------------------------------------------
def test_bad_options_are_clear_errors():
    with pytest.raises(TypeError, match="client"):
        ProcessingEngine(double, backend="processes", client="tcp://x:1")
    with pytest.raises(TypeError, match="idle_timeout"):
        make_backend("processes", max_workers=2, executor=None, idle_timeout="soon")
    with pytest.raises(ValueError, match="idle_timeout"):
        make_backend("processes", max_workers=2, executor=None, idle_timeout=0)
    with pytest.raises(ValueError, match="'threads', 'processes', 'dask'"):
        ProcessingEngine(double, backend="gpu")


def test_a_closed_backend_refuses_new_batches_and_close_is_idempotent():
    engine = ProcessingEngine(double, backend="processes", max_workers=2)
    assert sorted(r.value for r in engine.process_batch([1, 2])) == [2, 4]
    engine.close()
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.process_batch([1])


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "loky", None)
    monkeypatch.delitem(sys.modules, "procengine_nb.backends.processes", raising=False)
    with pytest.raises(ImportError, match=r"procengine_nb\[processes\]"):
        ProcessingEngine(double, backend="processes")


def test_the_interpreter_exits_promptly_with_abandoned_tasks_still_running(tmp_path):
    """A reused pool is fine only if the interpreter still exits: loky alone would wait for the task."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from procengine_nb import ProcessingEngine

        def stubborn(symbol):
            Path({str(tmp_path)!r}, str(symbol)).touch()
            time.sleep(300)

        if __name__ == "__main__":
            engine = ProcessingEngine(stubborn, backend="processes", max_workers=2)
            handle = engine.start(range(10))
            while len(list(Path({str(tmp_path)!r}).iterdir())) < 2:
                time.sleep(0.01)
            handle.cancel()
            result = handle.result(timeout=60)
            print("running at return:", result.progress.running_symbols, flush=True)
            # no engine.close(): the interpreter exits with the pool still busy
    """)
    path = tmp_path.parent / f"{tmp_path.name}_exit.py"
    path.write_text(script)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "running at return: 2" in done.stdout
    assert elapsed < 100  # far from the 300 s the tasks would take


def sleeps_on_two(symbol):
    if symbol == 2:
        time.sleep(120)
    return symbol


def test_a_per_symbol_timeout_abandons_the_late_symbol_and_close_does_not_wait_for_it():
    engine = ProcessingEngine(sleeps_on_two, backend="processes", max_workers=2, timeout=2.0)
    try:
        result = engine.process_batch(list(range(8)))
        assert not result.cancelled and list(result.unprocessed) == []
        assert [r.symbol for r in result.errors] == [2]
        assert isinstance(result.errors[0].error, TimeoutError)
        assert sorted(r.value for r in result if r.ok) == [0, 1, 3, 4, 5, 6, 7]
    finally:
        started = time.monotonic()
        engine.close()
        assert time.monotonic() - started < 5  # the abandoned task is killed, not awaited
    assert not _wait_no_children(warm_pool_too=False)


def test_batches_leave_no_temporary_directory(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    token = CancellationToken()
    with ProcessingEngine(double, backend="processes", max_workers=2) as engine:
        engine.process_batch([1, 2, 3])
        token.cancel()
        engine.process_batch([1, 2, 3], cancellation_token=token)
        assert list(tmp_path.iterdir()) == []  # removed at the end of each batch, not at close


# -- issue 11: hostile symbols, stuck workers, close mid-batch ---------------------------------------
class Hostile:
    """A symbol whose repr() raises; ``sendable=False`` also makes it impossible to pickle."""

    def __init__(self, n, sendable=True):
        self.n = n
        self.sendable = sendable

    def __repr__(self):
        raise RuntimeError("no repr for you")

    def __reduce__(self):
        if not self.sendable:
            raise TypeError("cannot pickle a Hostile")
        return (Hostile, (self.n, True))


def lock_for_two(symbol):
    if symbol.n == 2:
        return threading.Lock()  # cannot be pickled back from the worker
    return symbol.n * 10


def test_an_unpicklable_symbol_whose_repr_raises_is_only_that_symbols_error():
    symbols = [Hostile(i, sendable=(i != 2)) for i in range(5)]
    with ProcessingEngine(lambda s: s.n, backend="processes", max_workers=2, chunk_size=5) as engine:
        result = engine.process_batch(symbols)
    assert not result.cancelled and len(result) == 5  # before: the batch was cancelled, 0 of 5 processed
    assert sorted(r.value for r in result if r.ok) == [0, 1, 3, 4]
    (error,) = result.errors
    assert error.symbol is symbols[2]
    assert isinstance(error.error, RemoteSerializationError)
    assert "cannot be sent to a worker process" in str(error.error) and "unprintable Hostile" in str(error.error)


def test_an_unpicklable_value_for_a_symbol_whose_repr_raises_fails_only_that_symbol():
    symbols = [Hostile(i) for i in range(5)]
    with ProcessingEngine(lock_for_two, backend="processes", max_workers=2, chunk_size=5) as engine:
        result = engine.process_batch(symbols)
    # before: the worker failed formatting the error message, and every symbol of the chunk was an ERROR
    assert sorted(r.value for r in result if r.ok) == [0, 10, 30, 40]
    (error,) = result.errors
    assert error.symbol is symbols[2]
    assert "cannot be sent back from the worker" in str(error.error)


def stubborn_until(symbol, started_dir, release_file):
    """Ignores its token; runs until ``release_file`` exists (or 120 s)."""
    Path(started_dir, str(symbol)).write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    return symbol


def test_after_a_stop_with_token_ignoring_tasks_the_next_batch_runs_at_once(tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    release = str(tmp_path / "release")  # never created: the stubborn tasks run until killed
    stubborn = lambda s: stubborn_until(s, str(started), release)  # noqa: E731
    engine = ProcessingEngine(stubborn, backend="processes", max_workers=2)
    try:
        handle = engine.start(list(range(10)))
        _wait_for_files(started, 2)
        handle.cancel()
        assert handle.result(timeout=60).progress.running_symbols == 2
        # both workers are still busy with the abandoned tasks; before, this batch never progressed
        began = time.monotonic()
        second = ProcessingEngine(double, backend="processes", max_workers=2).start(list(range(20)))
        result = second.result(timeout=60)
        assert sorted(r.symbol for r in result) == list(range(20)) and len(result.errors) == 1
        assert time.monotonic() - began < 30
    finally:
        began = time.monotonic()
        engine.close()
        assert time.monotonic() - began < 5
    stuck = {int(p.read_text()) for p in started.iterdir()}
    deadline = time.monotonic() + 20
    while any(map(_alive, stuck)):
        assert time.monotonic() < deadline, "the workers running the abandoned tasks were not killed"
        time.sleep(0.05)


def test_close_during_a_batch_returns_at_once_and_the_batch_still_accounts_every_symbol(tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    release = tmp_path / "release"
    slow = lambda s: stubborn_until(s, str(started), str(release))  # noqa: E731
    engine = ProcessingEngine(slow, backend="processes", max_workers=2)
    handle = engine.start(list(range(6)))
    _wait_for_files(started, 2)
    began = time.monotonic()
    engine.close()  # before: waited for the running tasks (here: until they are released)
    assert time.monotonic() - began < 5
    release.touch()
    result = handle.result(timeout=60)
    _accounted(result, list(range(6)))
    with pytest.raises(RuntimeError, match="closed"):
        engine.process_batch([1])


# -- issue 14: one warm pool of our own ----------------------------------------------------------------
def pid_of(symbol):
    return os.getpid()


def test_one_warm_pool_is_reused_across_engines_threads_and_start_calls():
    shutdown_pools()
    pids: set[int] = set()
    for _ in range(3):  # a new engine per call, as run() makes, closed each time
        with ProcessingEngine(pid_of, backend="processes", max_workers=2) as engine:
            pids |= {r.value for r in engine.process_batch(range(8))}
    handles = []
    threads = [threading.Thread(target=lambda: handles.append(
        ProcessingEngine(pid_of, backend="processes", max_workers=2).start(range(8)))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for handle in handles:
        pids |= {r.value for r in handle.result(timeout=60)}
    assert len(pids) <= 2  # before: a fresh pool per start() thread (12 worker pids in 5 calls)
    shutdown_pools()
    assert not _wait_no_children()


def test_the_engine_never_shuts_down_lokys_shared_reusable_executor():
    users = loky.get_reusable_executor(max_workers=2)
    assert users.submit(abs, -1).result(timeout=60) == 1
    with ProcessingEngine(double, backend="processes", max_workers=2) as engine:
        engine.process_batch([1, 2, 3])
    # before: "cannot schedule new futures after shutdown"
    assert users.submit(abs, -2).result(timeout=60) == 2
    users.shutdown(wait=True)


def test_values_only_cloudpickle_can_send_travel_with_their_neighbours():
    def make(symbol):
        if symbol == "fn":
            return lambda: "called"  # the standard pickler refuses a lambda; cloudpickle sends it
        if symbol == "lock":
            return threading.Lock()
        return symbol * 2

    with ProcessingEngine(make, backend="processes", max_workers=2, chunk_size=4) as engine:
        result = engine.process_batch(["a", "fn", "lock", "b"])
    outcome = {r.symbol: r for r in result}
    assert outcome["fn"].value() == "called"
    assert (outcome["a"].value, outcome["b"].value) == ("aa", "bb")
    assert not outcome["lock"].ok and "cannot be sent back" in str(outcome["lock"].error)


def test_a_dead_worker_is_told_from_a_live_one_by_its_pid():
    """How the culprit is found: the dead process (a zombie not reaped yet, or gone) broke the pool;
    a live one is only about to be killed by loky."""
    import subprocess

    from procengine_nb.backends._recovery import process_gone

    assert not process_gone(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not process_gone(child.pid):  # exited, not reaped yet: a zombie
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    child.wait()
    assert process_gone(child.pid)  # reaped: gone


def test_a_started_file_holds_the_running_symbol_and_the_workers_pid(tmp_path):
    from procengine_nb.backends._started_file import PROGRESS_BYTES, StartedFile, claim, read_progress, read_running

    path = str(tmp_path / "0.started")
    progress = StartedFile(path)
    try:
        assert read_progress(path) == (-1, os.getpid())  # started, no symbol yet
        progress.view[0] = 7
        assert read_progress(path) == (7, os.getpid())
        assert read_running(path) is None  # no start written: not told as running
        progress.view[2] = at = time.monotonic_ns()
        assert read_running(path) == (7, at)
    finally:
        progress.close()
    # the worker's loop marks the end of its chunk: a later death of that worker is not this chunk's
    from procengine_nb.backends._worker import run_columns

    path = str(tmp_path / "1.started")
    progress = StartedFile(path)
    try:
        before = time.monotonic_ns()
        run_columns(abs, (1, -2, 3), MarkerToken(None), False, progress.view, True)
        assert read_progress(path) == (3, os.getpid())
        assert before <= progress.view[2] <= time.monotonic_ns()  # stamped at its look at the token
    finally:
        progress.close()
    Path(tmp_path / "unsized").touch()  # what a worker leaves between creating the file and sizing it
    assert read_progress(str(tmp_path / "unsized")) == (-1, 0)  # no symbol had begun
    assert claim(str(tmp_path / "claimed")) and not claim(str(tmp_path / "claimed"))
    assert not claim(str(tmp_path / "unsized"))  # a worker's: not the parent's
    assert read_progress(str(tmp_path / "claimed")) is None  # the parent's own: no worker has it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.started", "1.started", "claimed", "unsized"]
    assert read_progress(str(tmp_path / "missing")) is None
    assert read_running(str(tmp_path / "claimed")) is None and read_running(str(tmp_path / "unsized")) is None
    assert PROGRESS_BYTES == 24


def test_a_stop_claims_queued_chunks_and_never_cancels_lokys_futures():
    """loky's ``shutdown(kill_workers=True)`` (a pool replaced, interpreter exit) raises InvalidStateError in
    its manager thread on a cancelled work item still queued, and logs "Exception in executor manager thread"
    (seen after a Stop in 5 of 10 scripts that exit right after it): a Stop claims the chunks not started
    (the worker that takes one runs no symbol) and leaves loky's futures alone (a pause too)."""
    from concurrent.futures import Future

    from procengine_nb.backends._remote_task import RemoteTask

    token = CancellationToken()
    batch = make_backend("processes", max_workers=1, executor=None).open(token)
    try:
        queued = RemoteTask((1, 2))
        queued.inner = Future()  # still queued in loky
        queued.key = batch._marker.started_file()
        token.cancel()
        batch.cancel_pending([queued])
        assert queued.cancelled() and not queued.inner.cancelled()
        assert os.path.exists(queued.key)  # claimed: a worker that takes it runs nothing
    finally:
        batch.close(cancelled=True)
