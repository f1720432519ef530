"""The terminal view: in-place redraws on a TTY, periodic lines otherwise, escapes stripped, Ctrl-C."""

from __future__ import annotations

import _thread
import io
import logging
import threading

import pytest

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingProgress
from procengine_nb.models import BatchResult, ResultStatus, SymbolResult
from procengine_nb.views.console import ConsoleProgress, progress_line


def snap(done, total=10, **kw):
    return ProcessingProgress(total_symbols=total, completed_symbols=done, **kw)


def test_progress_line_has_the_panel_figures_and_no_control_characters():
    p = snap(4, errors_count=1, elapsed_time_ms=65_000, estimated_remaining_ms=None, rate_per_second=0.5)
    line = progress_line("\x1b[31mjob\rname\x1b[0m", p, status="Running")
    assert line == "job name: 4 / 10 (40%) | errors 1 | elapsed 1m 05s | ETA — | 0.50/s | Running"


def test_non_tty_writes_a_plain_line_per_interval(fake_clock):
    out = io.StringIO()
    view = ConsoleProgress(name="n", stream=out, tty=False, min_interval=5.0, clock=fake_clock)
    for done in range(1, 10):
        view.update(snap(done))
        fake_clock.advance(1.0)
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split(" |")[0] for line in lines] == ["1 / 10 (10%)", "6 / 10 (60%)"]
    assert "\r" not in out.getvalue() and view.lines_written == 2


def test_tty_redraws_in_place_and_pads_shorter_lines(fake_clock):
    out = io.StringIO()
    view = ConsoleProgress(name="n", stream=out, tty=True, clock=fake_clock, ticker=False)
    view.update(snap(1, errors_count=1, rate_per_second=1234.0))
    fake_clock.advance(0.2)
    view.update(snap(2))
    text = out.getvalue()
    assert text.count("\r") == 2 and "\n" not in text
    first, second = text.split("\r")[1:]
    assert len(second) >= len(first)  # the longer first line is fully overwritten
    fake_clock.advance(0.01)
    view.update(snap(3))  # throttled
    assert out.getvalue() == text
    fake_clock.advance(0.5)
    view.tick()  # elapsed moves while nothing completes
    assert out.getvalue().count("\r") == 3 and "3 / 10" in out.getvalue().split("\r")[-1]


def test_finish_prints_the_summary_and_stripped_errors(fake_clock):
    out = io.StringIO()
    view = ConsoleProgress(name="n", stream=out, tty=True, clock=fake_clock, ticker=False)
    view.update(snap(1))
    errors = [SymbolResult(f"\x1b[2JS{i}", ResultStatus.ERROR, error=ValueError(f"bad\n\x1b[31m{i}")) for i in range(7)]
    result = BatchResult(errors, unprocessed=["X"] * 3, cancelled=True)
    view.finish(result, None)
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.split("\r")[-1].splitlines()
    assert lines[0].startswith("n: 7 / 10 (70%) | errors 7") and "ETA —" in lines[0]
    assert lines[1] == "n: Cancelled: 7 of 10 processed, 3 not processed"
    assert lines[2] == "  7 of 10 processed: 0 ok, 7 failed, 3 not processed (cancelled)"
    assert lines[3] == "  S0: ValueError: bad 0"
    assert lines[-1] == "  +2 more failed (see result.errors)"
    view.update(snap(9))
    view.finish(result, None)
    assert out.getvalue() == text  # nothing after the end


def test_finish_of_a_crashed_engine(fake_clock):
    out = io.StringIO()
    ConsoleProgress(name="n", stream=out, tty=False, clock=fake_clock).finish(None, RuntimeError("boom"))
    assert out.getvalue().splitlines()[-1] == "n: Failed: RuntimeError: boom"


def test_stopping_is_shown_as_soon_as_the_token_is_cancelled(fake_clock):
    out = io.StringIO()
    token = CancellationToken()
    view = ConsoleProgress(token, name="n", stream=out, tty=False, min_interval=0, clock=fake_clock)
    token.cancel()
    view.update(snap(2, running_symbols=3))
    assert out.getvalue().rstrip().endswith("| Stopping… 3 still running")


def test_defaults_follow_the_stream(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert ConsoleProgress(stream=Tty())._min_interval == 0.1
    assert ConsoleProgress(stream=io.StringIO())._min_interval == 5.0
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    view = ConsoleProgress()
    view.update(snap(1))
    assert "1 / 10" in err.getvalue() and repr(view) == "ConsoleProgress(name='batch')"


def test_bad_arguments():
    with pytest.raises(TypeError, match="name"):
        ConsoleProgress(name=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stream"):
        ConsoleProgress(stream=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_interval"):
        ConsoleProgress(min_interval=-1)


def test_ctrl_c_while_waiting_cancels_and_prints_the_partial_summary(no_thread_leak):
    out = io.StringIO()
    started = threading.Event()

    def slow(symbol, cancellation_token):
        started.set()
        cancellation_token.wait(30)
        return symbol

    handle = ProcessingEngine(slow, max_workers=2).start(range(50))
    handle.attach(ConsoleProgress(handle.token, name="slow", stream=out, tty=True))
    assert started.wait(10)
    timer = threading.Timer(0.2, _thread.interrupt_main)  # what Ctrl-C does to the main thread
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        handle.result()
    timer.join()
    assert handle.done()
    result = handle.result()
    assert result.cancelled and len(result.unprocessed) == 50 - len(result)
    text = out.getvalue()
    assert "slow: Cancelled: " in text and "not processed (cancelled)" in text
    assert not any(t.name == "procengine-console-ticker" for t in threading.enumerate())


# -- log records while the line is shown ---------------------------------------------------------------
class FakeTty(io.StringIO):
    def isatty(self):
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: ``\\r`` returns to column 0 and later characters overwrite."""
    lines, row, col = [], [], 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(row).rstrip())
            row, col = [], 0
        elif ch == "\r":
            col = 0
        else:
            if col < len(row):
                row[col] = ch
            else:
                row.append(ch)
            col += 1
    lines.append("".join(row).rstrip())
    return lines


@pytest.fixture
def tty_logger():
    stream = FakeTty()
    log = logging.getLogger("procengine-test-worker")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        yield log, handler, stream
    finally:
        log.removeHandler(handler)


def test_a_log_record_gets_its_own_line_and_the_progress_line_is_redrawn_below(fake_clock, tty_logger):
    log, handler, stream = tty_logger
    view = ConsoleProgress(name="n", stream=stream, tty=True, clock=fake_clock, ticker=False)
    view.update(snap(3))
    log.warning("worker_3 reached the rate limit")
    shown = screen(stream.getvalue())
    assert shown[0] == "WARNING procengine-test-worker: worker_3 reached the rate limit"
    assert shown[1].startswith("n: 3 / 10 (30%)") and len(shown) == 2
    fake_clock.advance(1)
    view.update(snap(4))
    log.error("second")
    fake_clock.advance(1)
    view.update(snap(5))
    shown = screen(stream.getvalue())
    assert shown[:2] == ["WARNING procengine-test-worker: worker_3 reached the rate limit",
                         "ERROR procengine-test-worker: second"]
    assert shown[2].startswith("n: 5 / 10 (50%)") and len(shown) == 3
    view.finish(BatchResult([], unprocessed=[]), None)
    assert handler.stream is stream  # given back at the end
    log.warning("after")
    assert screen(stream.getvalue())[-2] == "WARNING procengine-test-worker: after"


def test_records_from_other_threads_never_split_the_line(tty_logger, no_thread_leak):
    log, _handler, stream = tty_logger
    view = ConsoleProgress(name="n", stream=stream, tty=True, min_interval=0)

    def chatter(k):
        for i in range(200):
            log.warning("thread %d record %d", k, i)

    view.update(snap(1))
    threads = [threading.Thread(target=chatter, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for done in range(2, 10):
        view.update(snap(done))
    for t in threads:
        t.join()
    view.finish(BatchResult([], unprocessed=[]), None)
    shown = [line for line in screen(stream.getvalue()) if line]
    records = [line for line in shown if line.startswith("WARNING")]
    assert len(records) == 600
    assert all(line.startswith(("WARNING procengine-test-worker: thread ", "n: ", "  ")) for line in shown), shown
    assert all(line.split(": ", 1)[1].startswith("thread ") and line.count("record") == 1 for line in records)


def test_handlers_of_other_streams_are_left_alone(fake_clock, tty_logger):
    _log, handler, stream = tty_logger
    other = FakeTty()
    view = ConsoleProgress(name="n", stream=other, tty=True, clock=fake_clock, ticker=False)
    view.update(snap(1))
    assert handler.stream is stream
    view.finish(None, None)


def test_no_redirect_when_asked_or_not_a_tty(fake_clock, tty_logger):
    _log, handler, stream = tty_logger
    for view in (ConsoleProgress(name="n", stream=stream, tty=True, clock=fake_clock, ticker=False,
                                 redirect_logging=False),
                 ConsoleProgress(name="n", stream=stream, tty=False, clock=fake_clock)):
        view.update(snap(1))
        assert handler.stream is stream
        view.finish(None, None)


def test_a_record_handled_by_logging_last_resort_gets_its_own_line(fake_clock, monkeypatch):
    """No handler configured: ``logging.lastResort`` writes warnings to ``sys.stderr`` — our terminal."""
    stream = FakeTty()
    monkeypatch.setattr("sys.stderr", stream)
    log = logging.getLogger("procengine-test-unconfigured")
    monkeypatch.setattr(log, "propagate", False)
    original = logging.lastResort
    view = ConsoleProgress(name="n", tty=True, clock=fake_clock, ticker=False)
    view.update(snap(2))
    log.warning("nobody configured logging")
    shown = screen(stream.getvalue())
    assert shown[0] == "nobody configured logging" and shown[1].startswith("n: 2 / 10 (20%)")
    view.finish(None, None)
    assert logging.lastResort is original
