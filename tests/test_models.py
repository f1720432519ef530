"""Jobs, results and the unprocessed view."""

from __future__ import annotations

import pickle

import pytest

from procengine_nb import BatchResult, JobType, ProcessingJob, ResultStatus, SymbolResult, UnprocessedView


def test_job_keeps_symbols_as_tuple_in_order():
    job = ProcessingJob(["b", "a", "b"], name="x")
    assert job.symbols == ("b", "a", "b") and len(job) == 3 and not job.lazy
    assert job.display_name == "x"
    assert ProcessingJob([], JobType.EXPORT).display_name == "export job"
    assert ProcessingJob([1]).job_id != ProcessingJob([1]).job_id


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"symbols": None}, "symbols must be an iterable of symbols, not None"),
        ({"symbols": 5}, "not int"),
        ({"symbols": "AAPL"}, "not a single str"),
        ({"symbols": b"AAPL"}, "not a single bytes"),
        ({"symbols": [1], "job_type": "generic"}, "job_type must be a JobType"),
        ({"symbols": [1], "name": 3}, "name must be a str"),
    ],
)
def test_job_rejects_bad_input(kwargs, needle):
    with pytest.raises(TypeError, match=needle):
        ProcessingJob(**kwargs)


def test_job_id_must_be_a_non_empty_str():
    with pytest.raises(TypeError, match="job_id must be a str, not int"):
        ProcessingJob([1], job_id=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="job_id must not be empty"):
        ProcessingJob([1], job_id="")


def test_unprocessed_view_is_head_then_tail_in_input_order():
    source = tuple("abcdefgh")
    view = UnprocessedView(source, head_indices=[3, 1], tail_start=5)
    assert list(view) == ["b", "d", "f", "g", "h"]
    assert len(view) == 5
    assert view[0] == "b" and view[2] == "f" and view[-1] == "h"
    assert view[1:3] == ["d", "f"]
    assert list(view.indices) == [1, 3, 5, 6, 7]
    assert view == ["b", "d", "f", "g", "h"] and view == ("b", "d", "f", "g", "h")
    assert view != ["b"]
    assert (view == 3) is False
    with pytest.raises(IndexError):
        view[5]
    with pytest.raises(TypeError):
        hash(view)
    assert "more" not in repr(view)
    assert repr(UnprocessedView(tuple(range(10)), (), 0)) == "UnprocessedView([0, 1, 2, 3, 4, ... (5 more)])"


def test_unprocessed_view_is_read_only_and_validates():
    view = UnprocessedView((1, 2, 3), (), 1)
    with pytest.raises(TypeError):
        view[0] = 5  # type: ignore[index]
    with pytest.raises(ValueError):
        UnprocessedView((1, 2), (), 5)
    with pytest.raises(ValueError):
        UnprocessedView((1, 2, 3), [2], 1)


def test_unprocessed_view_of_a_million_is_not_a_copy():
    source = tuple(range(1_000_000))
    view = UnprocessedView(source, [5, 7], 10)
    assert view._source is source
    assert len(view) == 999_992
    assert view[-1] == 999_999


def test_batch_result_is_a_list_with_extras():
    results = [
        SymbolResult("A", ResultStatus.SUCCESS, value=1, duration_ms=2.0),
        SymbolResult("B", ResultStatus.ERROR, error=ValueError("bad <b>")),
        SymbolResult("C", ResultStatus.CANCELLED),
    ]
    batch = BatchResult(results, unprocessed=["D"], cancelled=True, cancel_reason="stop")
    assert isinstance(batch, list) and len(batch) == 3
    assert [r.symbol for r in batch.errors] == ["B"]
    assert [r.symbol for r in batch.successes] == ["A"]
    assert [r.symbol for r in batch.cancelled_results] == ["C"]
    assert batch.values == [("A", 1)]
    assert batch.counts() == {"success": 1, "error": 1, "cancelled": 1, "unprocessed": 1}
    assert batch.summary() == "3 of 4 processed: 1 ok, 1 failed, 1 stopped, 1 not processed (cancelled)"
    assert batch.progress.total_symbols == 4 and batch.progress.errors_count == 1
    assert repr(batch).startswith("<BatchResult 3 of 4 processed")
    records = batch.to_records()
    assert records[1] == {"symbol": "B", "status": "error", "value": None,
                          "error": "ValueError: bad <b>", "duration_ms": 0.0}


def test_batch_result_to_dataframe():
    pd = pytest.importorskip("pandas")
    frame = BatchResult([SymbolResult("A", ResultStatus.SUCCESS, value=1)]).to_dataframe()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["symbol", "status", "value", "error", "duration_ms"]
    assert frame.iloc[0]["symbol"] == "A"


def test_batch_result_pickles_with_its_extras():
    batch = BatchResult(
        [SymbolResult("A", ResultStatus.SUCCESS, value=1)],
        unprocessed=UnprocessedView(("A", "B"), (), 1), cancelled=True, cancel_reason="r",
        job=ProcessingJob(["A", "B"], name="n"),
    )
    again = pickle.loads(pickle.dumps(batch))
    assert list(again) == list(batch)
    assert list(again.unprocessed) == ["B"] and again.cancelled and again.cancel_reason == "r"
    assert again.job.name == "n" and again.progress == batch.progress


def test_symbol_result_ok():
    assert SymbolResult("A", ResultStatus.SUCCESS).ok
    assert not SymbolResult("A", ResultStatus.CANCELLED).ok
