"""The pure formatting helpers shared by the panel and the terminal line."""

from __future__ import annotations

import math

import pytest

from procengine_nb import ProcessingProgress
from procengine_nb.views._format import (
    JobState,
    bar_style,
    clean_text,
    describe_error,
    format_counts,
    format_duration,
    format_rate,
    html_text,
    job_state,
    safe_str,
    status_text,
    truncate,
)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "—"), (0, "0.0s"), (400, "0.4s"), (999, "0.9s"), (9_960, "9.9s"), (2599.9999, "2.6s"),
        (10_000, "10s"), (65_000, "1m 05s"), (3_599_999, "59m 59s"), (3_600_000, "1h 00m 00s"),
        (90_061_000, "25h 01m 01s"), (-5, "0.0s"), (math.nan, "—"), (math.inf, "—"),
    ],
)
def test_format_duration(ms, text):
    assert format_duration(ms) == text


def test_format_duration_refuses_non_numbers():
    with pytest.raises(TypeError, match="ms"):
        format_duration("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ms"):
        format_duration(True)


@pytest.mark.parametrize(
    ("rate", "text"),
    [(0.0, "—"), (-1.0, "—"), (math.nan, "—"), (math.inf, "—"), (0.02, "1.2/min"), (0.5, "0.50/s"),
     (1.0, "1.0/s"), (99.94, "99.9/s"), (100.0, "100/s"), (4321.4, "4321/s")],
)
def test_format_rate(rate, text):
    assert format_rate(rate) == text


def test_format_rate_refuses_non_numbers():
    with pytest.raises(TypeError, match="per_second"):
        format_rate(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("done", "total", "text"),
    [(0, 100, "0 / 100 (0%)"), (37, 100, "37 / 100 (37%)"), (999, 1000, "999 / 1000 (99%)"),
     (1000, 1000, "1000 / 1000 (100%)"), (0, 0, "0 / 0 (100%)")],
)
def test_format_counts_floors_the_percentage(done, total, text):
    assert format_counts(ProcessingProgress(total_symbols=total, completed_symbols=done)) == text


def test_clean_text_strips_escape_sequences_and_controls():
    assert clean_text("\x1b[31mred\x1b[0m") == "red"
    assert clean_text("\x1b]0;title\x07after") == "after"
    assert clean_text("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert clean_text("a\rb\nc\td\x07e\x85f\x9b2Jg") == "a b c d e fg"
    assert clean_text("x" * 300) == "x" * 199 + "…"
    assert clean_text(12) == "12"


def test_html_text_escapes_after_cleaning():
    assert html_text("<script>alert('x')</script>") == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert html_text('a & "b"') == "a &amp; &quot;b&quot;"
    assert html_text("\x1b[1m<b>\x1b[0m") == "&lt;b&gt;"


def test_safe_str_survives_a_broken_str():
    class Broken:
        def __str__(self):
            raise RuntimeError("no")

        def __repr__(self):
            return "Broken()"

    class Hopeless:
        def __str__(self):
            raise RuntimeError("no")

        def __repr__(self):
            raise RuntimeError("no")

    assert safe_str(Broken()) == "Broken()"
    assert safe_str(Hopeless()) == "<unprintable Hopeless>"
    assert clean_text(Broken()) == "Broken()"


def test_truncate_checks_its_limit():
    assert truncate("abc", 3) == "abc" and truncate("abcd", 3) == "ab…" and truncate("abcd", 1) == "…"
    with pytest.raises(ValueError, match="limit"):
        truncate("abc", 0)
    with pytest.raises(TypeError, match="limit"):
        truncate("abc", 2.0)  # type: ignore[arg-type]


def test_describe_error():
    assert describe_error(None) == ("", "")
    assert describe_error(KeyError("k")) == ("KeyError", "'k'")


def p(**kw):
    kw.setdefault("total_symbols", 100)
    return ProcessingProgress(**kw)


def test_job_state_and_status_text_for_every_state():
    running = p(completed_symbols=10)
    assert job_state(running) is JobState.RUNNING and status_text(JobState.RUNNING, running) == "Running"
    stopping = p(completed_symbols=10, running_symbols=4)
    assert job_state(stopping, cancel_requested=True) is JobState.STOPPING
    assert job_state(p(cancelled=True)) is JobState.STOPPING
    assert status_text(JobState.STOPPING, stopping) == "Stopping… 4 still running"
    done = p(completed_symbols=100, finished=True)
    assert job_state(done, ended=True) is JobState.DONE
    assert status_text(JobState.DONE, done) == "Done: 100 processed"
    errors = p(completed_symbols=100, errors_count=3, finished=True)
    assert job_state(errors, ended=True) is JobState.DONE_WITH_ERRORS
    assert status_text(JobState.DONE_WITH_ERRORS, errors) == "Done with errors: 3 of 100 failed"
    cancelled = p(completed_symbols=37, cancelled=True, finished=True)
    assert job_state(cancelled, ended=True) is JobState.CANCELLED
    assert job_state(done, ended=True, cancelled=True) is JobState.CANCELLED
    assert status_text(JobState.CANCELLED, cancelled) == "Cancelled: 37 of 100 processed, 63 not processed"
    error = RuntimeError("pool died")
    assert job_state(running, ended=True, error=error) is JobState.FAILED
    assert status_text(JobState.FAILED, running, error=error) == "Failed: RuntimeError: pool died"
    assert status_text(JobState.FAILED, running, error=RuntimeError()) == "Failed: RuntimeError"
    for state in JobState:
        assert status_text(state, cancelled, error=error).startswith(state.value)
        assert bar_style(state) in {"success", "danger", "warning", "info"}
