"""``executor=``: which path a caller's executor takes (shares memory or not), and what only process
backends have: a processor's ``cancellation_token.cancel()`` stopping the batch, ``retry_on=`` seeing
the class of an exception that could not be sent back.

The shared promise (accounting, Stop, timeouts, pickling faults) is pinned on ``executor=`` thread and
process pools by the conformance suite (shapes ``executor`` and ``executor-processes``).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from procengine_nb import CancellationToken, ProcessingEngine, ResultStatus
from procengine_nb.backends.threads import classify

pytestmark = pytest.mark.timeout(180)
cloudpickle = pytest.importorskip("cloudpickle")


# -- processors (module level: they travel to the worker processes) ---------------------------------
def cancel_at_five(symbol, cancellation_token):
    if symbol == 5:
        cancellation_token.cancel("fatal: quota exhausted")
    return symbol


def cancel_at_five_without_reason(symbol, cancellation_token):
    if symbol == 5:
        cancellation_token.cancel()
    return symbol


class Flaky(Exception):
    """An exception that cannot be pickled (it holds a lock), as one holding a connection."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def always_flaky(symbol):
    raise Flaky(f"flaky {symbol}")


def first(symbol):
    return threading.Lock() if symbol[0] == 7 else symbol[0]  # a value that cannot be sent back


def note_run(symbol, directory):
    import os
    import time

    with open(os.path.join(directory, f"{symbol}.{os.getpid()}.{time.monotonic_ns()}.ran"), "w"):
        pass
    time.sleep(0.3)
    return symbol


def blocks_on_three(symbol, gate_file):
    import os
    import time

    deadline = time.monotonic() + 60
    while symbol == 3 and not os.path.exists(gate_file) and time.monotonic() < deadline:
        time.sleep(0.002)
    return symbol


def token_name(symbol, cancellation_token):
    return type(cancellation_token).__name__


async def _double(symbol):
    return 2 * symbol


def returns_a_coroutine(symbol):
    return _double(symbol)


# -- the user's own executors -----------------------------------------------------------------------------
class ThreadExecutor(Executor):
    """A user's own thread-based executor (not a ThreadPoolExecutor): one thread per task."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        return future


class DeclaredRemote(ThreadExecutor):
    """An executor that says its workers do not share memory (they may be anywhere)."""

    shares_memory = False


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(params=["processes", "executor-processes"])
def process_engine(request, process_pool):
    def make(processor, **kwargs):
        if request.param == "processes":
            pytest.importorskip("loky")
            return ProcessingEngine(processor, backend="processes", max_workers=2, **kwargs)
        return ProcessingEngine(processor, executor=process_pool, **kwargs)

    return make


# -- which path ------------------------------------------------------------------------------------------
def test_classify_says_which_executors_share_memory_and_which_run_on_this_machine():
    with ThreadPoolExecutor(1) as threads:
        assert classify(threads) == (True, False)
    assert classify(ThreadExecutor()) == (True, False)  # any other executor shares memory
    assert classify(DeclaredRemote()) == (False, False)  # unless it says otherwise
    assert classify(ProcessPoolExecutor.__new__(ProcessPoolExecutor)) == (False, True)
    loky = pytest.importorskip("loky")
    assert classify(loky.ProcessPoolExecutor.__new__(loky.ProcessPoolExecutor)) == (False, True)


def test_a_dask_client_executor_does_not_share_memory():
    cfexecutor = pytest.importorskip("distributed.cfexecutor")
    executor = cfexecutor.ClientExecutor.__new__(cfexecutor.ClientExecutor)
    assert classify(executor) == (False, False)


def test_a_thread_based_executor_of_your_own_gets_the_token_and_awaits_coroutines():
    executor = ThreadExecutor()
    result = ProcessingEngine(token_name, executor=executor).process_batch([1, 2])
    assert [r.value for r in result] == ["CancellationToken", "CancellationToken"]
    result = ProcessingEngine(returns_a_coroutine, executor=executor).process_batch([1, 2, 3])
    assert sorted(r.value for r in result) == [2, 4, 6], result.errors
    for thread in executor.threads:
        thread.join(30)


def test_timeout_is_refused_with_an_executor_that_cannot_report_starts():
    with pytest.raises(ValueError, match=r"timeout= .*executor=DeclaredRemote.*ProcessPoolExecutor"):
        ProcessingEngine(abs, executor=DeclaredRemote(), timeout=1.0)
    ProcessingEngine(abs, executor=DeclaredRemote())  # without timeout=: fine


def test_a_declared_remote_executor_gets_chunks_as_processes_do():
    # (its workers here are threads of this process: what travels is pickled all the same)
    lock = threading.Lock()
    symbols = [3, lock, 4]
    result = ProcessingEngine(token_name, executor=DeclaredRemote(), chunk_size=3).process_batch(symbols)
    by_symbol = {id(r.symbol): r for r in result}
    assert by_symbol[id(symbols[0])].value == "MarkerToken" and by_symbol[id(symbols[2])].value == "MarkerToken"
    assert "cannot be sent to a worker process" in str(by_symbol[id(lock)].error)


def test_results_hold_the_callers_own_symbol_objects_and_one_bad_value_fails_alone(process_engine):
    symbols = [[i] for i in range(40)]  # equal copies would compare equal: identity tells them apart
    with process_engine(first) as engine:  # adaptive chunks: several symbols a task
        result = engine.process_batch(symbols)
    assert sorted(map(id, (r.symbol for r in result))) == sorted(map(id, symbols))
    assert [r.symbol for r in result.errors] == [symbols[7]]
    assert "cannot be sent back" in str(result.errors[0].error)


def test_a_pause_on_a_process_pool_withdraws_the_chunks_not_started_and_each_symbol_runs_once(
        process_pool, tmp_path):
    import functools
    import time

    processor = functools.partial(note_run, directory=str(tmp_path))
    handle = ProcessingEngine(processor, executor=process_pool, chunk_size=1).start(list(range(8)))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*.ran")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.pause()
    time.sleep(1.0)  # the running symbols (at most 2) finish; nothing else starts
    ran_while_paused = len(list(tmp_path.glob("*.ran")))
    assert ran_while_paused <= 2 + 1, ran_while_paused  # (+1: one may have started as the pause landed)
    handle.unpause()
    result = handle.result(timeout=120)
    assert sorted(r.value for r in result) == list(range(8)) and not result.errors
    runs = sorted(int(p.name.split(".")[0]) for p in tmp_path.glob("*.ran"))
    assert runs == list(range(8)), runs  # each symbol ran exactly once


def test_stalled_on_a_process_pool_names_the_symbol_that_hangs_in_its_chunk(tmp_path):
    """As on processes: symbols 0-7 in one chunk, 3 blocks; the worker writes each symbol's index and
    start in the chunk's started file, so stalled() names 3 alone, with its own time."""
    import functools
    import time

    gate = tmp_path / "gate"
    processor = functools.partial(blocks_on_three, gate_file=str(gate))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            handle = ProcessingEngine(processor, executor=pool, chunk_size=8, stall_after=0.2).start(range(8))
            deadline = time.monotonic() + 60
            while not handle.stalled() and time.monotonic() < deadline:
                time.sleep(0.01)
            [(symbol, seconds)] = handle.stalled()
            assert symbol == 3 and 0.2 < seconds < 60
            gate.touch()
            result = handle.result(timeout=60)
            assert sorted(r.value for r in result) == list(range(8)) and handle.stalled() == []
        finally:
            gate.touch()


# -- a processor's cancel() stops the batch, as on threads ---------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 6, None])
def test_a_processors_cancel_stops_the_batch_with_its_reason(process_engine, chunk_size):
    symbols = list(range(400))
    with process_engine(cancel_at_five, chunk_size=chunk_size) as engine:
        result = engine.process_batch(symbols)
    assert result.cancelled and result.cancel_reason == "fatal: quota exhausted"
    assert len(result) + len(result.unprocessed) == len(symbols) and len(result.unprocessed) > 0
    assert not result.errors  # (symbol 5 itself may be unprocessed: its chunk may end after the batch, as on threads)


def test_a_processors_cancel_without_a_reason_says_a_processor_asked(process_engine):
    with process_engine(cancel_at_five_without_reason, chunk_size=1) as engine:
        result = engine.process_batch(list(range(200)))
    assert result.cancelled and result.cancel_reason == "a processor called cancellation_token.cancel()"
    assert not result.errors


def test_a_stop_is_not_mistaken_for_a_processors_request(process_engine):
    token = CancellationToken()
    with process_engine(token_name, chunk_size=1) as engine:
        result = engine.process_batch(list(range(200)), cancellation_token=token,
                                      progress_callback=lambda p: p.completed_symbols >= 3 and token.cancel("Stop"))
    assert result.cancelled and result.cancel_reason == "Stop"


# -- retry_on= sees the class of an exception that could not be sent back ------------------------------------
def test_retry_on_matches_an_exception_that_cannot_be_pickled(process_engine):
    with process_engine(always_flaky, retries=2, retry_on=(Flaky,)) as engine:
        result = engine.process_batch([1, 2, 3])
    assert [r.attempts for r in result] == [3, 3, 3]
    assert all(r.status is ResultStatus.ERROR and type(r.error).__name__ == "RemoteSerializationError"
               for r in result)
    assert all("Flaky" in str(r.error) for r in result)
    with process_engine(always_flaky, retries=2, retry_on=(KeyError,)) as engine:
        result = engine.process_batch([1, 2, 3])
    assert [r.attempts for r in result] == [1, 1, 1]  # a class it is not: no retry


def test_a_stop_claims_the_chunks_not_started_on_a_local_pool_and_never_cancels_its_futures():
    """A cancelled work item still queued when a process pool breaks or is shut down with kill_workers makes
    its manager thread raise InvalidStateError (CPython 3.11's ProcessPoolExecutor, loky) and log it: on
    workers of this machine a Stop claims the chunk instead (the worker that takes it runs nothing)."""
    import os

    from procengine_nb.backends._encoded_executor import EncodedExecutorBatch
    from procengine_nb.backends._remote_task import RemoteTask

    token = CancellationToken()
    batch = EncodedExecutorBatch(ThreadExecutor(), token, local=True)
    try:
        queued = RemoteTask((1, 2))
        queued.inner = Future()  # still queued in the pool
        queued.key = batch._marker.started_file()
        token.cancel()
        batch.cancel_pending([queued])
        assert queued.cancelled() and not queued.inner.cancelled() and os.path.exists(queued.key)
    finally:
        batch.close(cancelled=True)
