"""Security of every display path: user data (symbols, job names, error messages, exception type
names, tracebacks) is escaped for HTML and stripped of control sequences for the terminal, and stays
bounded in size.

Payloads: ``<script>``, ``<img onerror>``, attribute break-outs, ANSI colour/cursor/OSC sequences
(titles, hyperlinks), C1 controls, ``\\r`` overwrites, newlines, NUL/BEL, objects whose ``__str__``
raises, and 100,000-character strings. Paths: the ``ProgressPanel`` widgets (title, running symbols,
status, error table, the exported summary and its text), the terminal ``ConsoleProgress`` (progress
lines, final line, error lines), ``run()``, and the ``formatting`` helpers they share.

HTML is checked structurally: every value is parsed and may only contain the panel's own tags, with no
event-handler attributes and no ``javascript:`` URL.
"""

from __future__ import annotations

import io
import re
import threading
from html.parser import HTMLParser

import pytest

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingJob, ProcessingProgress
from procengine_nb.one_liner import run
from procengine_nb.views._format import clean_text, html_text
from procengine_nb.views.console import ConsoleProgress, progress_line
from procengine_nb.views.panel import ProgressPanel

WAIT = 30

PAYLOADS = {
    "script": "<script>alert('x')</script>",
    "img-onerror": '<img src=x onerror="alert(1)">',
    "attribute-break": '"><svg onload=alert(1)>',
    "javascript-url": '<a href="javascript:alert(1)">x</a>',
    "html-comment": "<!-- --><iframe src=//evil>",
    "ansi-colour": "\x1b[31mRED\x1b[0m",
    "ansi-cursor": "\x1b[2J\x1b[H\x1b[1A\x1b[K",
    "osc-title": "\x1b]0;pwned\x07",
    "osc8-link": "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "c1-csi": "\x9b31mC1",
    "cr-overwrite": "ok\rFAKE OK",
    "newlines": "line1\nline2\r\nline3",
    "nul-bel-backspace": "a\x00b\x07c\x08d",
    "long": "<b>" + "A" * 100_000 + "</b>",
}
ALLOWED_TAGS = {"b", "i", "div", "span", "details", "summary", "table", "thead", "tbody", "tr", "th", "td", "br"}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # everything but \t and \n
MAX_VALUE = 20_000  # a widget value never carries a 100 KB user string


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_comment(self, data):
        self.comments.append(data)


def assert_safe_html(value: str, where: str) -> None:
    parser = _Tags()
    parser.feed(value)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, f"{where}: unexpected <{tag}> in {value[:300]!r}"
        for name, attr_value in attrs:
            assert name in ("class", "style"), f"{where}: attribute {name!r} on <{tag}>"
            assert "javascript:" not in (attr_value or "").lower(), where
    assert not parser.comments, f"{where}: an HTML comment leaked: {parser.comments}"
    assert not CONTROL.search(value), f"{where}: control characters in {value[:300]!r}"
    assert "\x1b" not in value and "\x9b" not in value, where
    assert len(value) <= MAX_VALUE, f"{where}: {len(value)} characters"


def assert_safe_terminal(text: str, where: str, *, tty: bool = False) -> None:
    allowed = text.replace("\r", "") if tty else text  # a TTY view redraws with \r itself
    bad = CONTROL.search(allowed)
    assert bad is None, f"{where}: control character {bad.group()!r} in {text[:300]!r}"
    for line in text.split("\n"):
        assert len(line) <= 2_000, f"{where}: a {len(line)}-character line"


def _html_values(panel: ProgressPanel) -> dict[str, str]:
    parts = ("title", "counts", "errors", "elapsed", "eta", "rate", "running", "status", "error_table")
    values = {name: getattr(panel, name).value for name in parts}
    values["stop_button.description"] = panel.stop_button.description
    values["stop_button.tooltip"] = panel.stop_button.tooltip
    summary = panel.summary()
    values["summary.html"] = summary.html
    values["summary_html()"] = panel.summary_html()
    return values


class Hostile:
    """A symbol whose ``str()`` is the payload."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("<script>no str</script>")

    def __repr__(self) -> str:
        raise RuntimeError("\x1b[31mno repr")


def _error_class(payload: str) -> type[Exception]:
    """An exception class whose *name* is the payload (the type name is shown too). Python refuses NUL in
    a type name, so NUL becomes another C0 control there (the message keeps the NUL)."""
    return type(payload.replace("\x00", "\x01"), (Exception,), {})


def _finished_job(payload: str):
    """A finished batch in which the payload is a symbol, a job name, an error message and an
    exception type name, with a traceback-like multi-line message."""
    symbols = [payload, Hostile(payload), Unprintable(), "plain"]

    def processor(symbol):
        if symbol == "plain":
            return 1
        if isinstance(symbol, Unprintable):
            raise _error_class(payload)(Unprintable())
        raise ValueError(f"{payload}\nTraceback (most recent call last):\n  File \"<x>\", line 1\n{payload}")

    job = ProcessingJob(symbols, name=payload)
    return ProcessingEngine(processor, max_workers=2).start(job)


# -- the panel ------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_panel_escapes_user_data_in_every_part_after_the_end(payload):
    handle = _finished_job(payload)
    panel = ProgressPanel.for_handle(handle, ticker=False)
    result = handle.result(timeout=WAIT)
    assert len(result.errors) == 3
    for where, value in _html_values(panel).items():
        assert_safe_html(value, where)
    assert not CONTROL.search(repr(panel)), "repr"  # the widget's text/plain output (length: see below)
    panel.close()


def test_panel_repr_is_bounded():
    panel = ProgressPanel(CancellationToken(), name=PAYLOADS["long"], ticker=False)
    try:
        assert len(repr(panel)) <= 2_000
    finally:
        panel.close()


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_panel_summary_text_is_clean(payload):
    """``summary()`` is displayed as a ``text/plain`` output too, and Jupyter renders ANSI codes there."""
    handle = _finished_job(payload)
    panel = ProgressPanel.for_handle(handle, ticker=False)
    handle.result(timeout=WAIT)
    assert_safe_terminal(panel.summary().text, "summary.text")
    assert len(panel.summary().text) <= 2_000
    panel.close()


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_panel_escapes_running_symbols_while_the_job_runs(payload):
    release = threading.Event()
    started = threading.Semaphore(0)

    def processor(symbol):
        started.release()
        release.wait(WAIT)
        return 1

    handle = ProcessingEngine(processor, max_workers=2).start([payload, Hostile(payload), Unprintable()])
    panel = ProgressPanel(handle.token, handle=handle, name=payload, ticker=False)
    try:
        assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
        panel.update(handle.progress)
        assert panel.running.value, "the running symbols are shown"
        for where, value in _html_values(panel).items():
            assert_safe_html(value, where)
        handle.cancel()
        panel.update(handle.progress)
        assert_safe_html(panel.status.value, "status (stopping)")
    finally:
        release.set()
    handle.result(timeout=WAIT)
    panel.close()


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_panel_escapes_an_engine_crash(payload):
    """The FAILED state shows the exception that crashed the job: type name and message are user data."""
    panel = ProgressPanel(CancellationToken(), name=payload, ticker=False)
    panel.update(ProcessingProgress(total_symbols=3, completed_symbols=1, current_symbol=payload))
    panel.finish(None, _error_class(payload)(payload))
    for where, value in _html_values(panel).items():
        assert_safe_html(value, where)
    panel.close()


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_run_escapes_the_job_name_and_errors(payload):
    handle = run(lambda s: 1 / 0, [payload, "b"], name=payload, display=False, max_workers=2)
    handle.result(timeout=WAIT)
    assert handle.panel is not None
    for where, value in _html_values(handle.panel).items():
        assert_safe_html(value, where)
    handle.panel.close()


# -- the terminal view ----------------------------------------------------------------------------
@pytest.mark.parametrize("tty", [False, True], ids=["log", "tty"])
@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_console_strips_control_sequences_from_user_data(payload, tty):
    out = io.StringIO()
    handle = _finished_job(payload)
    handle.attach(ConsoleProgress(handle.token, name=payload, stream=out, tty=tty, min_interval=0, ticker=False))
    handle.result(timeout=WAIT)
    text = out.getvalue()
    assert "ValueError" in text  # the error lines are there, cleaned
    assert_safe_terminal(text, "console", tty=tty)


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_console_strips_control_sequences_from_an_engine_crash(payload):
    out = io.StringIO()
    view = ConsoleProgress(name=payload, stream=out, tty=False, min_interval=0, ticker=False)
    view.update(ProcessingProgress(total_symbols=3, completed_symbols=1, current_symbol=payload))
    view.finish(None, _error_class(payload)(payload))
    text = out.getvalue()
    assert "Failed" in text
    assert_safe_terminal(text, "console final line")


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_progress_line_is_one_clean_line(payload):
    line = progress_line(payload, ProcessingProgress(total_symbols=2, completed_symbols=1), status="Running")
    assert "\n" not in line
    assert_safe_terminal(line, "progress_line")


# -- the shared helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [*PAYLOADS.values(), Hostile("<x>\x1b[1m"), Unprintable(), None, 3.5],
                         ids=[*PAYLOADS, "hostile-str", "unprintable", "none", "float"])
def test_clean_text_and_html_text_are_safe_for_any_value(payload):
    cleaned = clean_text(payload)
    assert not CONTROL.search(cleaned) and "\n" not in cleaned and "\x1b" not in cleaned
    assert len(cleaned) <= 200
    escaped = html_text(payload)
    assert_safe_html(escaped, "html_text")
    assert "<" not in escaped and ">" not in escaped and '"' not in escaped


BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
BIDI_PAYLOADS = {
    "rlo-override": "invoice\u202etxt.exe",  # shows as "invoiceexe.txt"
    "isolates": "\u2067admin\u2069\u2066 ok\u2069",
    "marks": "a\u200fb\u200ec\u061cd",
}


@pytest.mark.parametrize("payload", list(BIDI_PAYLOADS.values()), ids=list(BIDI_PAYLOADS))
def test_bidi_controls_are_removed_from_every_display_path(payload):
    """Bidirectional overrides ("Trojan Source") make a symbol or name display as another one: every view
    removes them, in the text and the HTML, for a finished batch and for a crash."""
    assert not BIDI.search(clean_text(payload)) and not BIDI.search(html_text(payload))
    assert clean_text("line\u2028sep\u2029par") == "line sep par"  # Unicode line breaks keep one line
    handle = _finished_job(payload)
    panel = ProgressPanel.for_handle(handle, ticker=False)
    out = io.StringIO()
    handle.attach(ConsoleProgress(handle.token, name=payload, stream=out, tty=False, min_interval=0, ticker=False))
    handle.result(timeout=WAIT)
    crashed = ProgressPanel(CancellationToken(), name=payload, ticker=False)
    crashed.finish(None, _error_class(payload)(payload))
    crash_out = io.StringIO()
    view = ConsoleProgress(name=payload, stream=crash_out, tty=False, min_interval=0, ticker=False)
    view.finish(None, _error_class(payload)(payload))
    try:
        shown = {**_html_values(panel), **{f"crash {k}": v for k, v in _html_values(crashed).items()},
                 "summary.text": panel.summary().text, "crash summary.text": crashed.summary().text,
                 "repr": repr(panel), "console": out.getvalue(), "crash console": crash_out.getvalue()}
        assert "ValueError" in shown["console"] and "Failed" in shown["crash console"]
        for where, value in shown.items():
            assert not BIDI.search(value), f"{where}: bidi control in {value[:300]!r}"
    finally:
        panel.close()
        crashed.close()


def test_the_checks_themselves_catch_unsafe_output():
    """The structural checks can fail: raw payloads are refused."""
    for payload in ("<script>alert(1)</script>", '<img src=x onerror="alert(1)">', "\x1b[31mx", "A" * 30_000):
        with pytest.raises(AssertionError):
            assert_safe_html(payload, "raw")
    with pytest.raises(AssertionError):
        assert_safe_terminal("\x1b]0;title\x07", "raw")
