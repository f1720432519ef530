"""The edges of the promise (issue 11): hostile user objects, results that must not hold memory, huge
timeouts. Each test here fails on the code before this round (61754e0) and names one class of failure."""

from __future__ import annotations

import builtins
import gc
import re
import threading
import tracemalloc
import weakref

import pytest

from procengine_nb import ProcessingEngine, ResultStatus, SymbolResult


# -- resources: an ERROR result keeps the message and the formatted traceback, never the frames --------
class Payload:
    """A big local of a failing call (weakref-able, so a test can see it freed)."""

    def __init__(self, size: int = 0) -> None:
        self.data = bytearray(size)


def _failing(sink: list[weakref.ref], size: int = 0):
    def processor(symbol):
        local = Payload(size)  # kept alive only by the frame
        sink.append(weakref.ref(local))
        try:
            raise KeyError(symbol)
        except KeyError as inner:  # a chained exception: its traceback holds frames too
            raise ValueError(f"no data for {symbol}") from inner

    return processor


def test_error_results_keep_the_traceback_text_but_not_the_frames_or_their_locals():
    refs: list[weakref.ref] = []
    result = ProcessingEngine(_failing(refs), max_workers=2).process_batch(["A", "B", "C"])
    gc.collect()
    assert len(refs) == 3 and all(ref() is None for ref in refs), "a failed call's locals are still alive"
    for r in result.errors:
        assert isinstance(r.error, ValueError) and str(r.error) == f"no data for {r.symbol}"
        assert r.error.__traceback__ is None and r.error.__cause__.__traceback__ is None
        assert isinstance(r.error.__cause__, KeyError)
        assert "in processor" in r.traceback
        assert "The above exception was the direct cause" in r.traceback
        assert r.traceback.rstrip().endswith(f"ValueError: no data for {r.symbol}")


def test_twenty_failures_with_big_locals_keep_no_memory():
    """20 failures with 2 MB locals each: +40 MB if the tracebacks stayed alive; here ~nothing."""
    refs: list[weakref.ref] = []
    gc.collect()
    tracemalloc.start()
    try:
        result = ProcessingEngine(_failing(refs, 2_000_000), max_workers=2).process_batch(range(20))
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.errors) == 20
    assert held < 2_000_000, f"{held / 1e6:.1f} MB still held by 20 ERROR results"


@pytest.mark.skipif(not hasattr(builtins, "ExceptionGroup"), reason="exception groups need Python >= 3.11")
def test_context_chains_exception_groups_and_loops_are_all_released():
    from procengine_nb._tracebacks import detach

    group_type = builtins.ExceptionGroup

    def inner():
        raise OSError("disk")

    try:
        try:
            inner()
        except OSError as first:
            group = group_type("several", [first, RuntimeError("other")])
            raise group  # noqa: B904 - the implicit __context__ is what is tested
    except group_type as exc:
        exc.__context__.__context__ = exc  # a loop in the chain must not hang the walk
        text = detach(exc)
        error = exc
    assert "OSError: disk" in text and "ExceptionGroup: several" in text
    assert error.__traceback__ is None
    assert all(e.__traceback__ is None for e in error.exceptions)


def test_a_backend_failure_gets_a_traceback_text_and_no_frames():
    from concurrent.futures import ThreadPoolExecutor

    class Refusing(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            def broken():
                raise MemoryError("the pool lost the task")
            return super().submit(broken)

    with Refusing(max_workers=1) as pool:
        result = ProcessingEngine(str, executor=pool).process_batch(["A"])
    (failed,) = result.errors
    assert failed.error.__traceback__ is None and "MemoryError: the pool lost the task" in failed.traceback


def test_symbol_result_traceback_is_the_last_field_with_a_default():
    result = SymbolResult("A", ResultStatus.ERROR, None, ValueError("x"), 1.0)
    assert result.traceback is None
    assert SymbolResult.__dataclass_fields__["traceback"].default is None


def test_async_processors_errors_keep_no_frames_either():
    refs: list[weakref.ref] = []

    async def processor(symbol):
        local = Payload(10)
        refs.append(weakref.ref(local))
        raise ValueError(f"no data for {symbol}")

    result = ProcessingEngine(processor, max_workers=2).process_batch(["A", "B"])
    gc.collect()
    assert len(result.errors) == 2 and all(ref() is None for ref in refs)
    assert all(r.error.__traceback__ is None and "ValueError: no data" in r.traceback for r in result.errors)


# -- hostile user objects through every public path -------------------------------------------------
class Boom(Exception):
    """What a hostile dunder raises."""


def _raising(name, *methods, base=object):
    """A class named ``name`` (deriving from ``base``) whose ``methods`` all raise :class:`Boom`."""

    def make(method):
        def raising(self, *args):
            raise Boom(method)

        return raising

    return type(name, (base,), {method: make(method) for method in methods})


_HostileStr = _raising("_HostileStr", "__str__", "__repr__", "__format__", "__len__", "__hash__", "__eq__", base=str)
"""A str subclass (``isinstance(x, str)`` holds) whose own methods all raise."""


def _raising_object():
    return _raising("Raising", "__str__", "__repr__", "__eq__", "__hash__")()


def _returning(value):
    class Returning:
        def __str__(self):
            return value

        __repr__ = __str__

        def __eq__(self, other):
            return value

        def __hash__(self):
            return value

    return Returning()


HOSTILE = {
    "str/repr/eq/hash raise": _raising_object(),
    "str/repr return non-str": _returning(5),
    "str/repr return a hostile str subclass": _returning(_HostileStr("x")),
    "huge str/repr": _returning("x" * 5_000_000),
    "lone surrogate": "A\ud800B",
    "control, ANSI and bidi": "\x1b[31mred\x1b]0;title\x07\r\n\u202eexe.pdf\x00\x9b",
    "hostile str subclass": _HostileStr("sym"),
}


def _hostile_exception(payload):
    """An exception whose ``__str__``/``__repr__`` behave as ``payload``'s do (raise, non-str, huge...)."""

    class HostileError(Exception):
        def __str__(self):
            return str(payload)

        def __repr__(self):
            return repr(payload)

    return HostileError


def _text_ok(text, limit=None):
    assert type(text) is str
    text.encode("utf-8")  # no lone surrogate: a Jupyter message would fail to encode
    if limit is not None:
        assert len(text) <= limit, f"{len(text)} characters"


@pytest.mark.parametrize("payload", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_symbols_and_exceptions_break_no_public_path(payload, caplog, no_thread_leak):
    from procengine_nb import CancellationToken, ProcessingEngine, run
    from procengine_nb.views.console import ConsoleProgress

    error_type = _hostile_exception(payload)

    def processor(symbol):
        if symbol is payload:
            raise error_type()
        return symbol

    def callback(progress):
        raise error_type()

    symbols = [payload, "ok", payload]
    engine = ProcessingEngine(processor, max_workers=2)
    with caplog.at_level("WARNING", logger="procengine_nb"):
        result = engine.process_batch(symbols, progress_callback=callback)
    assert len(result) == 3 and len(result.errors) == 2
    for record in caplog.records:
        _text_ok(record.getMessage(), 100_000)
    for text in (repr(result), result.summary(), repr(result.progress), repr(result.job),
                 *(repr(r) for r in result), *(r.traceback for r in result.errors)):
        _text_ok(text, 70_000)
    for record in result.to_records():
        _text_ok(record["error"] or "")
    assert result.errors[0].error.__traceback__ is None

    # retry and resume take the hostile symbols again
    assert len(engine.retry(result)) == 2
    token = CancellationToken()
    token.cancel()
    stopped = engine.process_batch(symbols, cancellation_token=token)
    _text_ok(repr(stopped.unprocessed), 2_000)
    assert len(engine.resume(stopped)) == 3

    # the timeout path names the symbol in its message
    hung = ProcessingEngine(lambda s: CancellationToken().wait(0.5), timeout=0.05, max_workers=1)
    late = hung.process_batch([payload])
    assert isinstance(late[0].error, TimeoutError)
    _text_ok(str(late[0].error), 2_000)

    # the handle, the terminal view and the panel
    handle = engine.start(symbols, progress_callback=callback)
    handle.result(timeout=30)
    _text_ok(repr(handle), 500)
    import io

    stream = io.StringIO()
    view = ConsoleProgress(CancellationToken(), name="x", stream=stream)
    view.update(result.progress)
    view.finish(result, None)
    _text_ok(stream.getvalue(), 10_000)
    assert "\x1b" not in stream.getvalue() and "\u202e" not in stream.getvalue()

    shown = run(processor, symbols, display=False, max_workers=2)
    assert len(shown.result(timeout=30)) == 3
    panel = shown.panel
    for text in (panel.as_text(), panel.as_html(), panel.status.value, repr(panel)):
        _text_ok(text, 20_000)


# -- crashes that threw away every result ---------------------------------------------------------------
class CustomBase(BaseException):
    """A user's own BaseException (not an Exception)."""


class StrRaises(Exception):
    def __str__(self):
        raise Boom("no str")


def _ways_to_wait():
    """The four ways to run a batch and get its result: each returns the BatchResult or raises."""
    import asyncio

    from procengine_nb import run

    def blocking(symbols, callback):
        return ProcessingEngine(str.upper, max_workers=2).process_batch(symbols, progress_callback=callback)

    def started(symbols, callback):
        handle = ProcessingEngine(str.upper, max_workers=2).start(symbols, progress_callback=callback)
        _ways_to_wait.last_handle = handle
        return handle.result(timeout=30)

    def awaited(symbols, callback):
        handle = ProcessingEngine(str.upper, max_workers=2).start(symbols, progress_callback=callback)
        _ways_to_wait.last_handle = handle

        async def wait():
            return await handle

        return asyncio.run(wait())

    def one_liner(symbols, callback):
        handle = run(str.upper, symbols, progress_callback=callback, display=False, max_workers=2)
        _ways_to_wait.last_handle = handle
        return handle.result(timeout=30)

    return {"process_batch": blocking, "start+result": started, "await handle": awaited, "run": one_liner}


WAYS = _ways_to_wait()


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("raised", [StrRaises, SystemExit, CustomBase, GeneratorExit],
                         ids=["str-raises", "SystemExit", "custom-BaseException", "GeneratorExit"])
def test_a_callback_raising_anything_but_an_interrupt_loses_no_result(way, raised, no_thread_leak):
    calls = []

    def callback(progress):
        calls.append(progress)
        raise raised()

    symbols = [f"s{i}" for i in range(50)]
    result = WAYS[way](symbols, callback)
    assert sorted(r.value for r in result) == sorted(s.upper() for s in symbols)
    assert not result.cancelled and result.progress.completed_symbols == 50
    assert len(calls) == 51  # every snapshot and the final one, although each call raised


@pytest.mark.parametrize("way", list(WAYS))
def test_an_interrupt_from_a_callback_keeps_the_partial_result(way, no_thread_leak):
    """A KeyboardInterrupt escaping a callback stops the batch; the partial result rides on the
    exception (``partial_result``) and stays on the handle (``handle.partial_result``)."""
    def callback(progress):
        if progress.completed_symbols >= 3 and not progress.finished:
            raise KeyboardInterrupt

    symbols = [f"s{i}" for i in range(200)]
    _ways_to_wait.last_handle = None
    with pytest.raises(KeyboardInterrupt) as info:
        WAYS[way](symbols, callback)
    partial = info.value.partial_result
    assert partial.cancelled and len(partial) >= 3
    assert sorted([r.symbol for r in partial] + list(partial.unprocessed)) == sorted(symbols)
    handle = _ways_to_wait.last_handle
    if handle is not None:
        assert handle.done() and handle.partial_result is partial


def test_a_symbol_whose_repr_raises_times_out_as_its_own_error():
    from procengine_nb import CancellationToken

    hostile = _raising_object()
    release = CancellationToken()

    def processor(symbol):
        if symbol is hostile:
            release.wait(5)
        return 1

    try:
        result = ProcessingEngine(processor, timeout=0.05, max_workers=2).process_batch([hostile, "a", "b"])
    finally:
        release.cancel()
    assert len(result) == 3 and [r.symbol for r in result.errors] == [hostile]
    assert isinstance(result.errors[0].error, TimeoutError)
    assert "<unprintable Raising>" in str(result.errors[0].error)


# -- huge timeouts: refused up front, never a late OverflowError or a dead timer thread ---------------
def _huge_timeout_calls():
    import tempfile
    from pathlib import Path

    from procengine_nb import CancellationToken, ProgressPanel, run
    from procengine_nb.backends._marker import MarkerToken
    from procengine_nb.backends.asyncio import AsyncBackend
    from procengine_nb.backends.processes import ProcessBackend
    from procengine_nb.store import ResultStore
    from procengine_nb.views.console import ConsoleProgress

    def handle():
        return ProcessingEngine(str).start(["a"])

    store_path = str(Path(tempfile.mkdtemp()) / "results.db")
    return {
        "ProcessingEngine(timeout=)": lambda huge: ProcessingEngine(str, timeout=huge),
        "run(timeout=)": lambda huge: run(str, ["a"], timeout=huge, display=False),
        "handle.result(timeout)": lambda huge: handle().result(timeout=huge),
        "handle.wait(timeout)": lambda huge: handle().wait(huge),
        "token.cancel_after": lambda huge: CancellationToken().cancel_after(huge),
        "token.wait": lambda huge: CancellationToken().wait(huge),
        "worker token wait": lambda huge: MarkerToken(None).wait(huge),
        "panel min_interval": lambda huge: ProgressPanel(CancellationToken(), min_interval=huge),
        "panel refresh_interval": lambda huge: ProgressPanel(CancellationToken(), refresh_interval=huge),
        "console min_interval": lambda huge: ConsoleProgress(CancellationToken(), min_interval=huge),
        "processes idle_timeout": lambda huge: ProcessBackend(1, idle_timeout=huge),
        "asyncio timeout": lambda huge: AsyncBackend(1, timeout=huge),
        "store commit_seconds": lambda huge: ResultStore(store_path, commit_seconds=huge),
        "store busy_timeout": lambda huge: ResultStore(store_path, busy_timeout=huge),
    }


HUGE_TIMEOUT_CALLS = _huge_timeout_calls()


@pytest.mark.parametrize("huge", [1e10, 1e300], ids=["1e10", "1e300"])
@pytest.mark.parametrize("entry", list(HUGE_TIMEOUT_CALLS))
def test_a_huge_timeout_is_refused_up_front_by_every_entry_point(entry, huge, no_thread_leak):
    import threading

    before = set(threading.enumerate())
    with pytest.raises(ValueError, match=r"at most \d+ seconds") as info:
        HUGE_TIMEOUT_CALLS[entry](huge)
    assert "OverflowError" not in repr(info.value)
    started = [t for t in set(threading.enumerate()) - before if "deadline" in t.name or "ticker" in t.name]
    assert not started, f"a timer thread started: {started}"


def test_the_longest_accepted_timeout_works():
    from procengine_nb import CancellationToken
    from procengine_nb._validation import MAX_SECONDS

    token = CancellationToken()
    token.cancel_after(MAX_SECONDS)
    assert token.wait(0.001) is False
    token.cancel()
    handle = ProcessingEngine(str).start(["a"])
    assert len(handle.result(timeout=MAX_SECONDS)) == 1 and handle.wait(MAX_SECONDS)


@pytest.mark.parametrize("payload", [HOSTILE["str/repr/eq/hash raise"], HOSTILE["str/repr return non-str"]],
                         ids=["str raises", "str returns non-str"])
def test_a_store_turns_a_symbol_it_cannot_key_into_its_error_naming_it(payload, tmp_path):
    ran = []
    result = ProcessingEngine(ran.append).process_batch(["a", payload], store=tmp_path / "results.db")
    assert ran == ["a"] and len(result) == 2 and not result.cancelled  # the others run; it costs its symbol
    [error] = result.errors
    assert error.symbol is payload and isinstance(error.error, ValueError)
    assert re.search(r"str\(symbol\).*<unprintable \w+>: pass key=", str(error.error))
    _text_ok(str(error.error), 500)


def test_a_store_keys_a_hostile_str_subclass_as_a_plain_str(tmp_path):
    from procengine_nb import load_results

    symbol = HOSTILE["str/repr return a hostile str subclass"]
    path = tmp_path / "results.db"
    from procengine_nb import ProcessingJob

    engine = ProcessingEngine(lambda s: 1)
    first = engine.process_batch(ProcessingJob([symbol, "ok"], name="b"), store=path)
    again = engine.process_batch(ProcessingJob([symbol, "ok"], name="b"), store=path)
    assert len(first) == len(again) == 2 and all(r.from_store for r in again)
    assert len(load_results(path)) == 2


def test_a_processor_whose_attributes_raise_still_runs_and_prints():
    from procengine_nb import run

    class Opaque:
        def __call__(self, symbol):
            return symbol

        def __getattr__(self, name):
            raise Boom(name)

    engine = ProcessingEngine(Opaque(), max_workers=2)
    _text_ok(repr(engine), 200)
    assert engine.process_batch([1, 2]).summary() == "2 of 2 processed: 2 ok, 0 failed"
    assert len(run(Opaque(), [1], display=False).result(timeout=30)) == 1


@pytest.mark.timeout(60)  # the code before this round waited forever here
@pytest.mark.parametrize("wait", ["result", "wait"])
def test_a_callback_waiting_for_its_own_job_is_refused_not_a_hang(wait, caplog, no_thread_leak):
    handles = []
    refused = []

    def callback(progress):
        try:
            getattr(handles[0], wait)()
        except RuntimeError as exc:
            refused.append(str(exc))

    engine = ProcessingEngine(str.upper, max_workers=2)
    gate = threading.Event()
    handle = engine.start(["a", "b"], progress_callback=lambda p: (gate.wait(10), callback(p)))
    handles.append(handle)
    gate.set()
    assert len(handle.result(timeout=30)) == 2
    assert refused and "own thread" in refused[0]


def test_lone_surrogates_in_a_stored_batch_name_and_keys_are_kept_apart(tmp_path):
    """SQLite cannot hold a lone surrogate: names and keys that carry one are stored escaped, one-to-one, so
    two such symbols never share a result and a rerun finds every one of them."""
    from procengine_nb import ProcessingJob, load_results

    symbols = ["a", "b\udc80", "b\udc81"]
    path = tmp_path / "results.db"

    def job():
        return ProcessingJob(symbols, name="prices \ud800")

    first = ProcessingEngine(str.upper).process_batch(job(), store=path)
    assert first.summary() == "3 of 3 processed: 3 ok, 0 failed"
    from procengine_nb import ResultStore

    # another processor: reuse="any" takes what the first one stored (by default it would compute again)
    again = ProcessingEngine(lambda s: "recomputed").process_batch(job(), store=ResultStore(path, reuse="any"))
    assert all(r.from_store for r in again)
    assert sorted((r.symbol, r.value) for r in again) == [("a", "A"), ("b\udc80", "B\udc80"), ("b\udc81", "B\udc81")]
    loaded = load_results(path, name="prices \ud800")
    assert len(loaded) == 3 and loaded.job.name == "prices \ud800"


_HostileInt = _raising("_HostileInt", "__repr__", "__str__", "__format__", base=int)
_HostileFloat = _raising("_HostileFloat", "__repr__", "__str__", "__format__", base=float)


def _validation_calls():
    from procengine_nb import CancellationToken, ProcessingJob, ProcessingProgress

    hostile_str = _HostileStr("x")
    return {
        "max_workers=0": lambda: ProcessingEngine(str, max_workers=_HostileInt(0)),
        "max_errors=-1": lambda: ProcessingEngine(str, max_errors=_HostileInt(-1)),
        "chunk_size=0": lambda: ProcessingEngine(str, chunk_size=_HostileInt(0)),
        "timeout=-1": lambda: ProcessingEngine(str, timeout=_HostileFloat(-1.0)),
        "timeout=1e10": lambda: ProcessingEngine(str, timeout=_HostileFloat(1e10)),
        "cancel_after(-1)": lambda: CancellationToken().cancel_after(_HostileFloat(-1.0)),
        "progress counts": lambda: ProcessingProgress(total_symbols=_HostileInt(3), completed_symbols=_HostileInt(5)),
        "progress elapsed": lambda: ProcessingProgress(total_symbols=3, elapsed_time_ms=_HostileFloat(-2.0)),
        "job total": lambda: ProcessingJob(["a"], total=_HostileInt(-1)),
        "job id empty": lambda: ProcessingJob(["a"], job_id=_HostileStr("")),
        "symbols a str": lambda: ProcessingEngine(str).process_batch(hostile_str),
        "running_symbols(-1)": lambda: ProcessingEngine(str).start(["a"]).running_symbols(_HostileInt(-1)),
    }


VALIDATION_CALLS = _validation_calls()


@pytest.mark.parametrize("call", list(VALIDATION_CALLS))
def test_bad_input_given_as_hostile_subclasses_gets_a_clear_error(call):
    """An int/float/str subclass whose repr, str and format raise: the refusal is still a TypeError or
    ValueError with a readable message, never the subclass's own exception."""
    with pytest.raises((TypeError, ValueError)) as info:
        VALIDATION_CALLS[call]()
    _text_ok(str(info.value), 500)


def test_hostile_str_subclasses_as_names_ids_and_reasons_become_plain_str():
    from procengine_nb import CancellationToken, ProcessingJob, run

    job = ProcessingJob(["a"], name=_HostileStr("prices"), job_id=_HostileStr("id-1"))
    assert (type(job.name), type(job.job_id)) == (str, str) and (job.name, job.job_id) == ("prices", "id-1")
    _text_ok(repr(job), 500)
    token = CancellationToken()
    token.cancel(_HostileStr("stop"))
    assert type(token.reason) is str and token.reason == "stop"
    _text_ok(repr(token), 200)
    handle = run(str, ["a"], name=_HostileStr("named"), display=False)
    assert handle.result(timeout=30).job.name == "named"
    _text_ok(repr(handle), 200)


def test_process_pool_errors_carry_the_workers_traceback_text_and_no_frames():
    with ProcessingEngine(_fail_in_a_worker, backend="processes", max_workers=1) as engine:
        result = engine.process_batch(["a", "b"])
    assert len(result.errors) == 2
    for r in result.errors:
        assert r.error.__traceback__ is None and f"ValueError: bad {r.symbol}" in r.traceback
        assert "_fail_in_a_worker" in r.traceback


def _fail_in_a_worker(symbol):
    local = bytearray(10)  # noqa: F841 - a local the traceback would keep
    raise ValueError(f"bad {symbol}")


@pytest.mark.parametrize("raised", [SystemExit, CustomBase, StrRaises], ids=["SystemExit", "custom", "str-raises"])
def test_a_cancellation_callback_raising_anything_still_lets_cancel_reach_the_others(raised, caplog):
    from procengine_nb import CancellationToken

    token = CancellationToken()
    ran = []
    token.register(lambda: (_ for _ in ()).throw(raised()))
    token.register(lambda: ran.append("second"))
    with caplog.at_level("ERROR", logger="procengine_nb"):
        assert token.cancel("stop") is True
    assert ran == ["second"] and token.is_cancelled
    assert any("cancellation callback" in r.getMessage() for r in caplog.records)
