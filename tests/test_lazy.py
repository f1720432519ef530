"""Lazy input: iterators and generators drawn on the batch thread, total= hints, resume, refusals."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import types
from collections.abc import Iterator

import pytest
from test_properties import Recorder, assert_accounted

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingJob, ResultStatus, run
from procengine_nb.models import coerce_symbols

WAIT = 30  # seconds: a safety net only


class Counting:
    """An iterator that counts what was drawn from it (optionally endless, optionally failing)."""

    def __init__(self, n: int | None = None, fail_at: int | None = None,
                 error: BaseException | None = None) -> None:
        self.drawn = 0
        self.n = n
        self.fail_at = fail_at
        self.error = error or ValueError("the feed broke")
        self.thread: str | None = None

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        self.thread = threading.current_thread().name
        if self.fail_at is not None and self.drawn == self.fail_at:
            raise self.error
        if self.n is not None and self.drawn >= self.n:
            raise StopIteration
        self.drawn += 1
        return self.drawn - 1


def test_a_generator_is_drawn_lazily_on_the_batch_thread_and_start_returns_at_once(no_thread_leak):
    source = Counting()  # endless
    first_ran = threading.Event()
    release = threading.Event()

    def processor(n: int) -> int:
        first_ran.set()
        release.wait(WAIT)
        return n

    engine = ProcessingEngine(processor, max_workers=2)
    handle = engine.start(source)
    assert first_ran.wait(WAIT)
    # read-ahead is bounded by the window (2 tasks a worker, one symbol each until tasks are measured)
    assert source.drawn <= 4
    assert source.thread is not None and source.thread.startswith("procengine-job")
    handle.cancel("enough")
    release.set()
    result = handle.result(timeout=WAIT)
    assert result.cancelled and not result.input_exhausted
    assert len(result) + len(result.unprocessed) == source.drawn
    assert_accounted(list(range(source.drawn)), result, lazy=True)


def test_an_endless_generator_stops_at_a_deadline_in_bounded_read_ahead(no_thread_leak):
    source = Counting()
    token = CancellationToken()
    seen = threading.Semaphore(0)

    def processor(n: int) -> int:
        if n == 500:
            token.cancel_after(0.05)  # a deadline, set once the batch is well under way
        seen.release()
        return n

    result = ProcessingEngine(processor, max_workers=2).process_batch(source, cancellation_token=token)
    assert result.cancelled and not result.input_exhausted and result.input_error is None
    assert len(result) >= 500
    # everything drawn is accounted for: results + unprocessed == the drawn prefix, nothing more
    assert_accounted(list(range(source.drawn)), result, lazy=True)
    # bounded read-ahead: at most a window of chunks (4 tasks of <= 4096 symbols) beyond the results
    assert len(result.unprocessed) <= 4 * 4096
    final = result.progress
    assert final.total_symbols == source.drawn and not final.total_known


def test_without_total_snapshots_count_what_was_drawn_and_show_no_eta():
    recorder = Recorder()
    result = ProcessingEngine(str, max_workers=1, chunk_size=1).process_batch((n for n in range(50)),
                                                                              progress_callback=recorder)
    assert not result.cancelled and result.input_exhausted
    assert not recorder.snapshots[0].total_known and recorder.snapshots[0].total_symbols <= 3
    for p in recorder.snapshots[:-1]:
        # the total stays unknown until the input is used up (read-ahead: 2 tasks of one symbol)
        if p.total_known:
            assert p.total_symbols == 50
        else:
            assert p.estimated_remaining_ms is None
            assert p.completed_symbols <= p.total_symbols <= p.completed_symbols + 2
    final = recorder.snapshots[-1]
    assert final is result.progress
    assert final.total_known and final.total_symbols == 50 and final.percentage == 100.0
    assert final.estimated_remaining_ms == 0


@pytest.mark.parametrize("hint", [10, 50, 80])
def test_a_total_hint_is_used_while_drawing_and_corrected_at_the_end(hint):
    recorder = Recorder()
    result = ProcessingEngine(str, max_workers=2, chunk_size=1).process_batch(
        iter(range(50)), progress_callback=recorder, total=hint)
    assert len(result) == 50 and not result.cancelled
    for p in recorder.snapshots:
        assert p.total_known
        assert p.total_symbols >= p.completed_symbols
        assert 0.0 <= p.percentage <= 100.0
    assert result.progress.total_symbols == 50 and result.progress.percentage == 100.0
    assert recorder.snapshots[0].total_symbols == max(hint, 1) or hint < 2


def test_total_must_match_an_input_with_len_and_be_a_non_negative_int():
    engine = ProcessingEngine(str)
    with pytest.raises(ValueError, match="total=3 but the input has 2 symbols"):
        engine.process_batch(["a", "b"], total=3)
    with pytest.raises(ValueError, match="total must be >= 0"):
        engine.process_batch(iter([]), total=-1)
    with pytest.raises(TypeError, match="total must be an int"):
        engine.process_batch(iter([]), total=2.0)
    with pytest.raises(TypeError, match="total must be an int"):
        engine.process_batch(iter([]), total=True)
    with pytest.raises(ValueError, match="differs from the job's own total"):
        engine.process_batch(ProcessingJob(iter([]), total=2), total=3)
    assert len(engine.process_batch(ProcessingJob(iter("ab")), total=2)) == 2


def test_inputs_with_len_are_used_as_they_are_and_unprocessed_stays_a_view():
    symbols = tuple(f"S{i}" for i in range(1000))
    assert coerce_symbols(symbols) is symbols
    numbers = range(10**6)
    assert coerce_symbols(numbers) is numbers
    token = CancellationToken()

    def processor(s: str) -> str:
        if s == "S10":
            token.cancel()
        return s

    result = ProcessingEngine(processor, max_workers=1, chunk_size=1).process_batch(symbols, cancellation_token=token)
    assert result.unprocessed._source is symbols  # a view on the input, not a copy
    assert_accounted(symbols, result)
    assert result.input_exhausted  # an input with len(): nothing is left outside `unprocessed`


def test_a_generator_that_raises_ends_the_batch_cancelled_with_the_reason(caplog):
    source = Counting(fail_at=30)
    with caplog.at_level(logging.ERROR, logger="procengine_nb.engine"):
        result = ProcessingEngine(str, max_workers=2, chunk_size=4).process_batch(source)
    assert result.cancelled
    assert result.input_error is source.error
    assert "the input raised ValueError: the feed broke after 30 symbol(s)" in result.cancel_reason
    assert result.input_exhausted  # it is never drawn again
    assert_accounted(list(range(30)), result, lazy=True)
    assert any("the input raised" in r.getMessage() for r in caplog.records)


class Custom(BaseException):
    """Not an Exception, not an interrupt."""


@pytest.mark.parametrize("error", [Custom("odd"), GeneratorExit()])
def test_an_input_raising_a_base_exception_is_reported_like_any_failure(error):
    source = Counting(fail_at=6, error=error)
    result = ProcessingEngine(str, max_workers=1, chunk_size=4).process_batch(source)
    assert result.cancelled and result.input_error is error
    assert_accounted(list(range(6)), result, lazy=True)


def test_an_empty_generator_is_an_empty_finished_batch():
    recorder = Recorder()
    result = ProcessingEngine(str).process_batch(iter(()), progress_callback=recorder)
    assert len(result) == 0 and not result.cancelled and result.input_exhausted
    assert result.progress.total_known and result.progress.percentage == 100.0
    assert_accounted([], result, recorder.snapshots, lazy=True)


def test_symbols_drawn_in_the_chunk_where_the_input_raised_are_unprocessed():
    source = Counting(fail_at=5)
    result = ProcessingEngine(str, max_workers=1, chunk_size=4).process_batch(source)
    # chunk 1 = 0..3 ran; chunk 2 drew 4 then the input raised: 4 is drawn, never run
    assert_accounted(list(range(5)), result, lazy=True)
    assert 4 in list(result.unprocessed) or 4 in [r.symbol for r in result]


def test_an_interrupt_raised_by_the_input_keeps_the_partial_result():
    source = Counting(fail_at=7, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as caught:
        ProcessingEngine(str, max_workers=1, chunk_size=3).process_batch(source)
    partial = caught.value.partial_result
    assert partial.cancelled
    assert_accounted(list(range(7)), partial, lazy=True)


def test_resume_continues_with_unprocessed_and_then_the_rest_of_the_same_iterator(no_thread_leak):
    source = Counting(n=200)
    token = CancellationToken()

    def processor(n: int) -> int:
        if n == 40:
            token.cancel("stop")
        return n

    engine = ProcessingEngine(processor, max_workers=2, chunk_size=3)
    first = engine.process_batch(source, cancellation_token=token, total=200)
    assert first.cancelled and not first.input_exhausted
    drawn_before = source.drawn
    second = engine.resume(first)
    assert not second.cancelled and second.input_exhausted
    assert second.job.total == 200 - len(first)
    # the second batch starts with first.unprocessed (input order), then draws from the same iterator
    assert source.drawn == 200 > drawn_before
    assert collections.Counter(r.symbol for r in itertools.chain(first, second)) == collections.Counter(range(200))


def test_resume_of_a_used_up_lazy_input_processes_only_unprocessed():
    token = CancellationToken()

    def processor(n: int) -> int:
        if n == 2:
            token.cancel()
        return n

    engine = ProcessingEngine(processor, max_workers=1, chunk_size=1)
    first = engine.process_batch(iter(range(4)), cancellation_token=token)
    second = engine.resume(first)
    assert sorted([r.symbol for r in first] + [r.symbol for r in second]) == [0, 1, 2, 3]


def _fake_dataframe(module: str) -> object:
    cls = type("DataFrame", (), {"__iter__": lambda self: iter(["col_a", "col_b"]), "__len__": lambda self: 2})
    cls.__module__ = module
    sub = type("MyFrame", (cls,), {})  # a subclass is still refused
    return sub()


class _Mapping(collections.abc.Mapping):
    def __getitem__(self, key):
        return 1

    def __iter__(self):
        return iter(["k"])

    def __len__(self):
        return 1


@pytest.mark.parametrize(("value", "needles"), [
    (_fake_dataframe("pandas.core.frame"),
     ["pandas DataFrame", "df.index", "df.itertuples()", 'df.to_dict("records")']),
    (_fake_dataframe("polars.dataframe.frame"), ["polars DataFrame", "df.iter_rows(named=True)"]),
    ("AAPL", ["not a single str", "['AAPL']"]),
    (b"AAPL", ["not a single bytes"]),
    (bytearray(b"ab"), ["not a single bytearray"]),
    (memoryview(b"ab"), ["not a single memoryview"]),
    ({"a": 1}, ["not a dict (a mapping)", "list(d)", "d.values()", "d.items()"]),
    (collections.OrderedDict(a=1), ["OrderedDict", "d.items()"]),
    (types.MappingProxyType({"a": 1}), ["mappingproxy", "d.values()"]),
    (_Mapping(), ["_Mapping", "list(d)"]),
    (None, ["not None"]),
    (5, ["not int"]),
])
def test_ambiguous_inputs_are_refused_saying_what_to_pass(value, needles):
    engine = ProcessingEngine(str)
    for call in (lambda: engine.process_batch(value), lambda: engine.start(value),
                 lambda: run(str, value, display=False), lambda: ProcessingJob(value)):
        with pytest.raises(TypeError) as caught:
            call()
        for needle in needles:
            assert needle in str(caught.value)


def test_unambiguous_containers_are_accepted():
    engine = ProcessingEngine(str)
    for value in ({"a": 1}.keys(), {"a": 1}.values(), {"a": 1}.items(), {"a", "b"}, frozenset("ab"),
                  collections.deque("ab"), (c for c in "ab"), map(str, "ab")):
        result = engine.process_batch(value)
        assert len(result) == len(list(value)) or len(result) == 2


def test_a_pandas_series_is_a_sequence_of_its_values():
    pd = pytest.importorskip("pandas")
    series = pd.Series(["x", "y"], index=[10, 20])
    assert sorted(r.symbol for r in ProcessingEngine(str).process_batch(series)) == ["x", "y"]


def test_run_takes_a_generator_and_a_total(no_thread_leak):
    handle = run(str, (n for n in range(20)), display=False, total=20, max_workers=2)
    result = handle.result(timeout=WAIT)
    assert len(result) == 20 and result.progress.total_symbols == 20
    assert all(r.status is ResultStatus.SUCCESS for r in result)


def test_a_lazy_job_has_a_repr_that_draws_nothing_and_its_result_pickles():
    import pickle

    source = Counting(n=3)
    job = ProcessingJob(source, name="feed", total=3)
    assert "<lazy Counting>" in repr(job) and "total=3" in repr(job) and source.drawn == 0
    with pytest.raises(TypeError, match="has no len"):
        len(job)
    result = ProcessingEngine(str).process_batch(job)
    again = pickle.loads(pickle.dumps(result))
    assert sorted(r.symbol for r in again) == [0, 1, 2] and again.input_exhausted
    assert again.job.job_id == job.job_id and again.job.lazy and list(again.job.symbols) == []
    assert repr(result.job) and repr(result)
