"""The batch thread is a fortress: nothing it calls that is not ours can hang it, lose results or hold
the Stop (issue 19). One named test (or group) per class; the README's Guarantees name them.

Blocking is done with events; the few subprocess tests have generous bounds (a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from test_properties import assert_accounted

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingJob, ResultStatus

WAIT = 30  # seconds: a safety net for a broken engine, never reached when it works
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


# -- 1. one guard around everything the batch thread calls that is not ours -------------------------
class _RaisingCheck(type):
    def __instancecheck__(cls, instance):
        raise SystemExit("__instancecheck__ raised")


class Unretryable(Exception, metaclass=_RaisingCheck):
    pass


class Hostile:
    """A symbol (and an exception's payload) whose text raises a BaseException."""

    def __str__(self):
        raise SystemExit("no str")

    def __repr__(self):
        raise SystemExit("no repr")


class HostileError(Exception):
    def __str__(self):
        raise SystemExit("no str")

    def __repr__(self):
        raise SystemExit("no repr")


class _RaisingHandler(logging.Handler):
    def emit(self, record):
        raise SystemExit("handler raised")

    def handleError(self, record):
        raise SystemExit("handleError raised")


def test_a_retry_on_whose_instancecheck_raises_costs_only_the_retry(caplog):
    def processor(s):
        if s % 2:
            raise ValueError(f"odd {s}")
        return s

    engine = ProcessingEngine(processor, max_workers=2, retries=2, retry_on=Unretryable)
    with caplog.at_level(logging.ERROR, logger="procengine_nb"):
        result = engine.process_batch(range(10))
    assert_accounted(list(range(10)), result)
    assert sorted(r.symbol for r in result.errors) == [1, 3, 5, 7, 9]
    assert all(r.attempts == 1 for r in result)  # not retried
    assert sum("retry_on's instance check raised" in r.getMessage() for r in caplog.records) == 1


def test_hostile_symbols_exceptions_callbacks_views_and_log_handlers_cost_a_line_at_most():
    """Whatever a user object raises (SystemExit here) in __str__/__repr__, a callback, a view, a
    logging handler: every symbol is accounted, the batch returns, on every path (sync, start())."""

    class View:
        def update(self, progress):
            raise SystemExit("view update")

        def failed(self, result):
            raise HostileError()

        def finish(self, result, error):
            raise SystemExit("view finish")

    def processor(s):
        if isinstance(s, Hostile) or s == 3:
            raise HostileError()
        return s

    def callback(progress):
        raise HostileError()

    handler = _RaisingHandler()
    package = logging.getLogger("procengine_nb")
    package.addHandler(handler)
    try:
        symbols = [0, 1, Hostile(), 3, Hostile(), 5]
        engine = ProcessingEngine(processor, max_workers=2, retries=1, timeout=WAIT)
        result = engine.process_batch(symbols, callback, views=[View()])
        assert len(result) == 6 and len(result.errors) == 3
        handle = engine.start(symbols, callback, views=[View()])
        assert len(handle.result(timeout=WAIT)) == 6
        seen = threading.Event()
        handle.add_done_callback(lambda h: (seen.set(), (_ for _ in ()).throw(SystemExit("done callback"))))
        assert seen.is_set()
        assert repr(result)  # never raises
    finally:
        package.removeHandler(handler)


class UnreadableError(Exception):
    """An exception none of whose parts can be read: its chain, traceback, text and notes raise."""

    @property
    def __cause__(self):
        raise SystemExit("__cause__")

    @property
    def __context__(self):
        raise SystemExit("__context__")

    @property
    def __traceback__(self):
        raise SystemExit("__traceback__")

    @__traceback__.setter
    def __traceback__(self, value):
        raise SystemExit("__traceback__ =")

    def __str__(self):
        raise SystemExit("__str__")

    def __repr__(self):
        raise SystemExit("__repr__")

    def add_note(self, note):
        raise SystemExit("add_note")


@pytest.mark.parametrize("kind", ["threads", "asyncio", "timeout"])
def test_a_processor_raising_an_exception_none_of_whose_parts_can_be_read_fails_only_its_symbol(kind):
    def processor(s):
        if s == 1:
            raise UnreadableError()
        return s

    async def coroutine(s):
        return processor(s)

    engine = {"threads": lambda: ProcessingEngine(processor, max_workers=2, retries=1),
              "asyncio": lambda: ProcessingEngine(coroutine),
              "timeout": lambda: ProcessingEngine(processor, timeout=WAIT)}[kind]()
    result = engine.process_batch([0, 1, 2])
    assert_accounted([0, 1, 2], result, retries=1 if kind == "threads" else 0)
    assert [r.symbol for r in result.errors] == [1]
    assert {r.symbol: r.status for r in result}[1] is ResultStatus.ERROR
    assert "UnreadableError" in repr(result.errors[0]) and pickle.loads(pickle.dumps(result))


# -- 2. a closed sys.stderr: every path returns, the job's future always resolves -------------------
def test_a_closed_stderr_never_hangs_a_batch_nor_loses_its_results():
    child = _child("""
        import io, sys
        closed = io.StringIO(); closed.close(); sys.stderr = closed
        out = open(sys.__stdout__.fileno(), "w", closefd=False)
        from procengine_nb import ProcessingEngine, run
        def callback(progress): raise ValueError("callback")
        print("run", [r.value for r in run(len, ["a", "bb"]).result(timeout=60)], file=out, flush=True)
        handle = ProcessingEngine(len).start(["a", "bb"], progress_callback=callback)
        print("start", [r.value for r in handle.result(timeout=60)], file=out, flush=True)
        result = ProcessingEngine(len).process_batch(["a", "bb"], progress_callback=callback)
        print("process_batch", sorted(r.value for r in result), file=out, flush=True)
    """)
    assert child.stdout.splitlines() == ["run [1, 2]", "start [1, 2]", "process_batch [1, 2]"], child


def test_the_job_future_resolves_with_the_partial_result_whatever_ends_its_thread(monkeypatch):
    """The engine fails, then every publication of the end raises a Ctrl-C on the job's thread (the
    thread dies on it): the future still resolves, and the settled partial result stays reachable."""
    from procengine_nb import _batch
    from procengine_nb.observe import Publisher

    def broken_take(self, future):
        raise RuntimeError("an engine bug")

    def interrupting_finish(self, result, error):
        raise KeyboardInterrupt

    monkeypatch.setattr(_batch.BatchRun, "_take", broken_take)
    monkeypatch.setattr(Publisher, "finish", interrupting_finish)
    hook = threading.excepthook
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: None if args.exc_type is KeyboardInterrupt else hook(args))
    handle = ProcessingEngine(len, max_workers=1).start(["a", "bb"])
    assert handle.wait(timeout=WAIT)
    assert isinstance(handle.future.exception(), (RuntimeError, KeyboardInterrupt))
    partial = handle.partial_result
    assert partial is not None and len(partial) + len(partial.unprocessed) == 2


# -- 5. linked tokens of any depth --------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1_000, 10_000])
def test_linked_tokens_of_any_depth_propagate_without_recursion(depth):
    root = CancellationToken()
    leaf = root
    for _ in range(depth):
        leaf = CancellationToken.linked(leaf)
    assert root.cancel("the root")
    assert leaf.is_cancelled and leaf.reason == "the root"


def test_a_batch_on_the_leaf_of_a_ten_thousand_deep_chain_stops():
    root = CancellationToken()
    leaf = root
    for _ in range(10_000):
        leaf = CancellationToken.linked(leaf)
    started = threading.Event()

    def processor(s, cancellation_token):
        started.set()
        cancellation_token.wait(WAIT)
        return s

    handle = ProcessingEngine(processor, max_workers=2).start(range(1_000), cancellation_token=leaf)
    assert started.wait(WAIT)
    root.cancel("Stop")
    result = handle.result(timeout=WAIT)
    assert result.cancelled and result.cancel_reason == "Stop"
    assert_accounted(list(range(1_000)), result)


# -- 6. exports keep values exact ----------------------------------------------------------------------
def test_to_dataframe_keeps_int_values_exact_when_some_symbols_failed():
    pytest.importorskip("pandas")
    big = 1700000000123456790

    def processor(s):
        if s == 2:
            raise ValueError("no value")
        return big + s

    frame = ProcessingEngine(processor, max_workers=1).process_batch([0, 1, 2, 3]).to_dataframe()
    values = dict(zip(frame["symbol"].tolist(), frame["value"].tolist(), strict=True))
    assert values[0] == big and type(values[0]) is int and values[3] == big + 3
    assert str(frame["value"].dtype) in ("Int64", "object")
    mixed = ProcessingEngine(lambda s: big if s else 1.5).process_batch([0, 1]).to_dataframe()
    assert [type(v) for v in mixed["value"].tolist()] == [float, int] and big in mixed["value"].tolist()
    huge = ProcessingEngine(lambda s: 2**70 + s).process_batch([0, 1]).to_dataframe()
    assert sorted(huge["value"].tolist()) == [2**70, 2**70 + 1]
    numpy = pytest.importorskip("numpy")
    frame = ProcessingEngine(lambda s: numpy.int64(processor(s))).process_batch([0, 1, 2, 3]).to_dataframe()
    values = dict(zip(frame["symbol"].tolist(), frame["value"].tolist(), strict=True))
    assert values[3] == big + 3 and int(values[3]) == big + 3 and values[3] != float(big + 3)


# -- 7. every refusal says what is accepted -----------------------------------------------------------
def test_a_refusal_suggests_none_only_where_none_is_accepted():
    with pytest.raises(ValueError, match="backoff must be finite, got inf") as info:
        ProcessingEngine(len, backoff=float("inf"))
    assert "None" not in str(info.value)
    with pytest.raises(TypeError, match="backoff must be a number of seconds, not NoneType"):
        ProcessingEngine(len, backoff=None)
    token = CancellationToken()
    with pytest.raises(ValueError, match=r"\(None for no limit\)"):
        token.cancel_after(float("inf"))
    token.cancel_after(0.01)
    token.cancel_after(None)  # what the message suggests: no deadline (it removes the pending one)
    assert not token.wait(0.2)
    with pytest.raises(ValueError, match=r"\(None for no limit\)"):
        token.wait(float("inf"))
    assert not token.wait(0)
    with pytest.raises(ValueError, match=r"timeout must be finite \(None for no limit\)"):
        ProcessingEngine(len, timeout=float("inf"))
    assert ProcessingEngine(len, timeout=None).process_batch(["a"])[0].value == 1


# -- 3. tasks an async processor leaves on the batch's loop never hold the batch ----------------------
async def _swallows_every_cancel():
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass


@pytest.mark.parametrize("way", ["process_batch", "start and Stop"])
def test_tasks_left_on_the_loop_that_swallow_the_cancel_never_hold_the_batch(way, no_thread_leak, caplog):
    spawned: list[asyncio.Future[None]] = []

    first = threading.Event()

    async def processor(s):
        spawned.append(asyncio.ensure_future(_swallows_every_cancel()))
        first.set()
        await asyncio.sleep(0)
        return s

    engine = ProcessingEngine(processor, max_workers=2)
    begun = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="procengine_nb"):
        if way == "process_batch":
            result = engine.process_batch([1, 2, 3])
        else:
            handle = engine.start([1, 2, 3])
            assert first.wait(WAIT)
            handle.cancel("Stop")
            assert handle.wait(timeout=WAIT)
            result = handle.result()
    elapsed = time.monotonic() - begun
    assert_accounted([1, 2, 3], result)
    assert elapsed < WAIT / 2  # bounded by the grace (~0.5 s; generous on a loaded machine)
    if way == "process_batch":  # (after a Stop the loop is not waited for: no_thread_leak sees it end)
        assert [r.status for r in result] == [ResultStatus.SUCCESS] * 3 and len(spawned) == 3
        assert any("ignored cancellation" in r.getMessage() for r in caplog.records)


# -- 4. worker processes never outlive their parent -----------------------------------------------------
_KILLED_PARENT = """
    import sys, time
    from procengine_nb import ProcessingEngine

    def big(s):
        return b"x" * (1 << 20)  # 1 MB values: with the parent gone, workers block writing them

    if __name__ == "__main__":
        engine = ProcessingEngine(big, backend="processes", max_workers=2, chunk_size=50)
        handle = engine.start(range(1_000_000))
        while handle.progress.completed_symbols < 1 and not handle.done():
            time.sleep(0.01)
        print("running", flush=True)
        handle.result()
"""


@pytest.mark.skipif(os.name != "posix", reason="the parent watch relies on POSIX re-parenting")
def test_worker_processes_exit_soon_after_their_parent_is_killed(tmp_path):
    pytest.importorskip("loky")
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_KILLED_PARENT))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    workers = []
    try:
        assert parent.stdout.readline().strip() == "running"
        deadline = time.monotonic() + WAIT
        while len(workers) < 2 and time.monotonic() < deadline:  # the two loky workers
            workers = [p for p in psutil.Process(parent.pid).children(recursive=True)
                       if "resource_tracker" not in " ".join(p.cmdline())]
            time.sleep(0.05)
        assert len(workers) == 2
        parent.kill()  # SIGKILL: no clean-up of any kind in the parent
        parent.wait(WAIT)
        _, alive = psutil.wait_procs(workers, timeout=10)  # they poll every 0.5 s
        assert not alive, f"workers still alive 10 s after their parent was killed: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()
        for worker in workers:
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass


# -- 8. a pickled result that cannot be loaded fails alone ------------------------------------------------
class NeedsArguments(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


class HoldsALock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class GoneLater(Exception):
    pass


def test_a_pickled_result_keeps_every_exception_or_a_faithful_stand_in(monkeypatch):
    from procengine_nb.models import ErrorStandIn

    errors = {1: NeedsArguments(404, "missing"), 2: HoldsALock("locked"), 3: GoneLater("bye"), 4: ValueError("plain")}

    def processor(s):
        if s in errors:
            raise errors[s]
        return s * 10

    symbols = [0, 1, 2, 3, 4, 5]
    result = ProcessingEngine(processor, max_workers=1).process_batch(symbols)
    result.input_error = HoldsALock("the input")
    blob = pickle.dumps(result)
    monkeypatch.delattr(sys.modules[__name__], "GoneLater")  # its class is gone where the result is loaded
    back = pickle.loads(blob)
    assert_accounted(symbols, back)
    by_symbol = {r.symbol: r for r in back}
    assert [by_symbol[s].value for s in (0, 5)] == [0, 50]
    assert type(by_symbol[4].error) is ValueError and str(by_symbol[4].error) == "plain"
    # NeedsArguments does not unpickle with the standard pickler (its __init__ needs arguments), but it
    # does once a process has installed tblib's exception pickling (importing distributed does): then
    # the exception itself comes back, which is better still
    revived = by_symbol[1].error
    if not isinstance(revived, ErrorStandIn):
        assert "tblib" in sys.modules, "NeedsArguments only round-trips with tblib's pickling installed"
        assert type(revived) is NeedsArguments and str(revived) == "404: missing" and revived.code == 404
    for symbol, type_name, message in ((1, "NeedsArguments", "404: missing"), (2, "HoldsALock", "locked"),
                                       (3, "GoneLater", "bye")):
        error = by_symbol[symbol].error
        if symbol == 1 and not isinstance(error, ErrorStandIn):
            continue
        assert isinstance(error, ErrorStandIn), symbol
        assert error.type_name.endswith(type_name) and error.message == message
        assert error.traceback and type_name in error.traceback and message in error.traceback
        assert by_symbol[symbol].status is ResultStatus.ERROR and by_symbol[symbol].traceback == error.traceback
    assert isinstance(back.input_error, ErrorStandIn) and back.input_error.message == "the input"
    assert pickle.loads(pickle.dumps(back))[0].symbol == back[0].symbol  # and it round-trips again


# -- 8. nothing on a batch's event loop can end it: a coroutine's BaseException costs its symbol -----------
def _bounded(call, *args, **kwargs):
    """``call(*args, **kwargs)`` on a daemon thread, at most WAIT seconds (a hang fails the test, never the run)."""
    out: dict[str, object] = {}

    def target():
        try:
            out["value"] = call(*args, **kwargs)
        except BaseException as exc:  # reported below
            out["raised"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), f"{call} still running after {WAIT}s (a hang)"
    if "raised" in out:
        raise AssertionError(f"{call} raised {out['raised']!r}")
    return out["value"]


class _AwaitRaises:
    def __init__(self, kind):
        self.kind = kind

    def __await__(self):
        raise self.kind("from __await__")
        yield  # pragma: no cover - makes __await__ a generator


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["threads", "executor", "asyncio", "threads __await__"])
def test_a_coroutine_raising_systemexit_or_keyboardinterrupt_costs_only_its_symbol(where, kind, no_thread_leak):
    async def work(s):
        await asyncio.sleep(0)
        if s == 3:
            raise kind("from the coroutine")
        return s

    def sync(s):  # a sync processor returning the awaitable: the worker awaits it on the batch's loop
        return _AwaitRaises(kind) if where.endswith("__await__") and s == 3 else work(s)

    symbols = list(range(12))
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(4) if where == "executor" else None
    try:
        for timeout in (None, 5.0):  # with timeout= too: the loop lives on, the others are not timed out
            if where == "asyncio":
                engine = ProcessingEngine(work, max_workers=4, timeout=timeout)
            else:
                engine = ProcessingEngine(sync, max_workers=4, timeout=timeout, executor=pool)
            result = _bounded(engine.process_batch, symbols)
            assert_accounted(symbols, result)
            failed = [r for r in result if r.status is not ResultStatus.SUCCESS]
            assert [(r.symbol, r.status, type(r.error)) for r in failed] == [(3, ResultStatus.ERROR, kind)]
            assert not result.cancelled
    finally:
        if pool is not None:
            pool.shutdown()


def _exit_callback():
    raise SystemExit("from a loop callback")


_left: list[asyncio.Task[None]] = []  # the tasks a rogue processor leaves on its loop


async def _interrupt_later():
    await asyncio.sleep(0.01)
    raise KeyboardInterrupt("from a leftover task")


@pytest.mark.parametrize("how", ["loop.stop()", "callback SystemExit", "leftover KeyboardInterrupt"])
@pytest.mark.parametrize("backend", ["asyncio", "threads"])
def test_a_coroutine_sabotaging_the_loop_costs_a_logged_line_and_the_batch_goes_on(backend, how, no_thread_leak,
                                                                                    caplog):
    async def rogue(s):
        loop = asyncio.get_running_loop()
        if s == 3:
            if how == "loop.stop()":
                loop.stop()
            elif how == "callback SystemExit":
                loop.call_soon(_exit_callback)
            else:
                _left.append(loop.create_task(_interrupt_later()))
        await asyncio.sleep(0.03)
        return s

    symbols = list(range(20))
    processor = rogue if backend == "asyncio" else (lambda s: rogue(s))
    engine = ProcessingEngine(processor, backend=backend, max_workers=4, chunk_size=1)
    with caplog.at_level(logging.WARNING, logger="procengine_nb"):
        result = _bounded(engine.process_batch, symbols)
    assert_accounted(symbols, result)
    assert not result.cancelled and result.cancel_reason is None
    assert sorted(r.value for r in result) == symbols  # every symbol, the saboteur's own included, a SUCCESS
    lines = [r.getMessage() for r in caplog.records if "event loop" in r.getMessage()]
    assert len(lines) == 1, lines
    assert ("stopped the batch's event loop" if how == "loop.stop()" else how.split()[-1]) in lines[0]


def test_a_worker_waiting_on_a_loop_that_ends_under_it_fails_at_once(no_thread_leak):
    """The loop ends with the awaitable still on it (it swallowed every cancel and was abandoned): the worker
    waiting for it gets an ERROR when the loop thread ends, never waits forever."""
    from procengine_nb.backends._loop import Awaiter

    awaiter = Awaiter(None)
    started = threading.Event()
    release = threading.Event()

    async def stubborn():
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass

    waiting = threading.Thread(target=lambda: outcome.append(_raised(awaiter.wait, stubborn())), daemon=True)
    outcome: list[BaseException | None] = []
    waiting.start()
    assert started.wait(WAIT)
    awaiter.close(wait=True)  # the batch ends: cancelled, re-cancelled for 0.5 s, abandoned with the loop
    waiting.join(WAIT)
    release.set()
    assert not waiting.is_alive()
    assert isinstance(outcome[0], RuntimeError) and "event loop has ended" in str(outcome[0])


def _raised(call, *args):
    try:
        call(*args)
    except BaseException as exc:  # what the test looks at
        return exc
    return None


def test_timeout_ends_a_coroutine_that_swallows_the_cancel_at_its_timeout(no_thread_leak, caplog):
    """asyncio backend: past its ``timeout=`` the symbol is a TimeoutError even when its coroutine swallows
    every cancel; that coroutine is abandoned on the loop (one warning), never waited for."""
    release = threading.Event()

    async def stubborn(s):
        if s == 0:
            while not release.is_set():  # released only once the batch has returned: a wait would hang
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass
            return "late"
        await asyncio.sleep(0)
        return s

    symbols = list(range(6))
    try:
        with caplog.at_level(logging.WARNING, logger="procengine_nb"):
            result = _bounded(ProcessingEngine(stubborn, max_workers=2, timeout=0.2).process_batch, symbols)
    finally:
        release.set()
    assert_accounted(symbols, result)
    first = next(r for r in result if r.symbol == 0)
    assert first.status is ResultStatus.ERROR and isinstance(first.error, TimeoutError), first
    assert "0.2s of starting" in str(first.error) and first.duration_ms < WAIT * 1000 / 2
    assert sorted(r.value for r in result if r.symbol != 0) == symbols[1:]
    assert any("ignored cancellation" in r.getMessage() for r in caplog.records)


# -- 9. the input and key= are user code on the batch's thread: only a KeyboardInterrupt is an interrupt ----
def _raising_at(n, kind):
    for i in range(100):
        if i == n:
            raise kind(2)
        yield i


@pytest.mark.parametrize("kind", [SystemExit, GeneratorExit, ValueError])
@pytest.mark.parametrize("way", ["process_batch", "start"])
def test_a_lazy_input_raising_systemexit_ends_the_batch_as_an_input_error(kind, way, no_thread_leak, caplog):
    engine = ProcessingEngine(lambda s: s, max_workers=2)
    with caplog.at_level(logging.ERROR, logger="procengine_nb"):
        if way == "process_batch":
            result = engine.process_batch(_raising_at(37, kind))
        else:
            result = engine.start(_raising_at(37, kind)).result(timeout=WAIT)
    assert isinstance(result.input_error, kind) and result.cancelled
    assert "the input raised" in result.cancel_reason
    assert_accounted(list(range(37)), result, lazy=True)
    assert sum("the input raised" in r.getMessage() for r in caplog.records) == 1


def test_a_lazy_input_raising_keyboardinterrupt_is_an_interrupt_with_the_partial_result(no_thread_leak):
    engine = ProcessingEngine(lambda s: s, max_workers=2)
    with pytest.raises(KeyboardInterrupt) as info:
        engine.process_batch(_raising_at(37, KeyboardInterrupt))
    partial = info.value.partial_result
    assert partial.cancelled and partial.input_error is None
    assert_accounted(list(range(37)), partial, lazy=True)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_keyboardinterrupt_in_key_is_an_interrupt_with_the_partial_result(lazy, tmp_path, no_thread_leak):
    calls = []

    def key(symbol):
        if symbol == 3:
            raise KeyboardInterrupt("a Ctrl-C landing in key=")
        return f"k{symbol}"

    def processor(symbol):
        calls.append(symbol)
        return symbol

    symbols = list(range(8))
    job = ProcessingJob(iter(symbols) if lazy else symbols, name="keys")
    engine = ProcessingEngine(processor, max_workers=2, chunk_size=1)
    with pytest.raises(KeyboardInterrupt, match="landing in key=") as info:
        engine.process_batch(job, store=tmp_path / "r.db", key=key)
    partial = info.value.partial_result
    assert partial.cancelled and partial.cancel_reason == "the batch was interrupted"
    assert not any(isinstance(r.error, ValueError) for r in partial)  # never swallowed into a symbol's error
    if lazy:  # what was drawn before it ran (or is unprocessed); symbol 3, taken from the input, unprocessed
        assert_accounted(symbols[:4], partial, lazy=True)
        assert 3 in list(partial.unprocessed) and 3 not in calls
    else:  # keys are computed before anything runs: nothing ran
        assert calls == [] and len(partial) == 0
        assert_accounted(symbols, partial)
    engine.close()
