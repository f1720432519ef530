"""The control room in the panel: Pause / Continue, stalled symbols, the failed share of the bar, failure
groups that open to their traceback, Retry / Resume after the end, the jobs() widget and handle.show().

The handle is a small fake with the engine's control-room names (``pause()``, ``unpause()``, ``paused``,
``stalled()``, ``retry()``, ``resume()``), so these tests pin the panel alone; the real engine is used by
the tests at the end of the file."""

from __future__ import annotations

import html
import io
import re
from types import SimpleNamespace
from typing import Any, ClassVar

import comm
import pytest
from comm.base_comm import BaseComm
from ipywidgets.widgets.widget import _instances

from procengine_nb import CancellationToken, ProcessingProgress
from procengine_nb.models import BatchResult, ResultStatus, SymbolResult
from procengine_nb.views._format import JobState
from procengine_nb.views.console import ConsoleProgress
from procengine_nb.views.jobs import jobs_view
from procengine_nb.views.panel import HIDDEN, ProgressPanel

MAX_MODELS = 9


class RecordingComm(BaseComm):
    log: ClassVar[list[tuple[str, str, Any]]] = []

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        RecordingComm.log.append((msg_type, self.comm_id, data))


@pytest.fixture
def comms(monkeypatch):
    RecordingComm.log = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    return RecordingComm.log


def opened(log) -> set[str]:
    return {cid for kind, cid, _ in log if kind == "comm_open"}


def closed(log) -> set[str]:
    return {cid for kind, cid, _ in log if kind == "comm_close"}


def snap(total=10, done=0, errors=0, running=0, eta=None, elapsed=0.0, cancelled=False):
    return ProcessingProgress(total_symbols=total, completed_symbols=done, errors_count=errors,
                              running_symbols=running, estimated_remaining_ms=eta, elapsed_time_ms=elapsed,
                              cancelled=cancelled)


def failure(symbol, error, traceback=None):
    return SymbolResult(symbol, ResultStatus.ERROR, error=error, traceback=traceback)


class FakeHandle:
    """What the panel reads of a JobHandle, with the control-room names."""

    def __init__(self, name="job", progress=None, follow_up=None):
        self.job = SimpleNamespace(display_name=name)
        self.token = CancellationToken()
        self.progress = progress or snap()
        self.paused = False
        self.stalls: list[tuple[Any, float]] = []
        self.calls: list[str] = []
        self.panel = None
        self.views: list[Any] = []
        self.follow_up = follow_up  # what retry()/resume() return (or raise)
        self.successor = None

    def running_symbols(self, limit=8):
        return ["A", "B"][:limit]

    def stalled(self):
        return list(self.stalls)

    def pause(self):
        self.calls.append("pause")
        self.paused = True

    def unpause(self):
        self.calls.append("unpause")
        self.paused = False

    def _follow(self, kind):
        self.calls.append(kind)
        if isinstance(self.follow_up, BaseException):
            raise self.follow_up
        self.successor = self.follow_up
        return self.follow_up

    def retry(self):
        return self._follow("retry")

    def resume(self):
        return self._follow("resume")

    def attach(self, view):
        self.views.append(view)


def result_of(ok=0, failed=(), unprocessed=(), cancelled=False):
    results = [SymbolResult(f"S{i}", ResultStatus.SUCCESS, value=i) for i in range(ok)]
    results += [failure(sym, err) for sym, err in failed]
    total = len(results) + len(unprocessed)
    progress = ProcessingProgress(total_symbols=total, completed_symbols=len(results), errors_count=len(failed),
                                  cancelled=cancelled, finished=True)
    return BatchResult(results, unprocessed=list(unprocessed), progress=progress, cancelled=cancelled)


def panel_for(handle, fake_clock, **options):
    return ProgressPanel(handle.token, handle=handle, clock=fake_clock, ticker=False, **options)


# -- Pause / Continue ------------------------------------------------------------------------------------
def test_pause_then_continue_from_the_button(comms, fake_clock):
    handle = FakeHandle()
    panel = panel_for(handle, fake_clock)
    panel.update(snap(done=3, running=2, eta=7000, elapsed=3000))
    pause = panel.pause_button
    assert pause.description == "Pause" and HIDDEN not in pause._dom_classes and not pause.disabled
    pause.click()
    assert handle.calls == ["pause"] and pause.description == "Continue"
    assert panel.state is JobState.PAUSED and panel.status.value == "Paused: 2 still running"
    assert "Paused" in panel.as_text()
    assert 'class="procengine-status">Paused: 2 still running<' in panel.widget.children[0].value
    fake_clock.advance(2)
    panel.tick()  # paused time moves the elapsed time, not the time remaining
    assert panel.elapsed.value == "elapsed 5.0s" and panel.eta.value == "ETA 7.0s"
    pause.click()
    assert handle.calls == ["pause", "unpause"] and pause.description == "Pause"
    assert panel.status.value == "Running"
    panel.close()


def test_stop_while_paused_is_a_stop(comms, fake_clock):
    handle = FakeHandle()
    panel = panel_for(handle, fake_clock)
    panel.update(snap(done=3, running=1))
    panel.pause_button.click()
    panel.stop_button.click()
    assert handle.token.is_cancelled
    assert panel.state is JobState.STOPPING and panel.status.value.startswith("Stopping")
    assert panel.pause_button.disabled and panel.stop_button.disabled
    panel.pause_button.click()  # does nothing once stopping
    assert handle.calls == ["pause"]
    panel.finish(result_of(ok=3, unprocessed=["U1"], cancelled=True), None)
    assert panel.status.value.startswith("Cancelled: 3 of 4") and panel.stop_button.description == "Stopped"
    panel.close()


def test_a_panel_without_a_handle_offers_no_pause(comms, fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    assert HIDDEN in panel.pause_button._dom_classes and HIDDEN in panel.retry_button._dom_classes
    panel.pause_button.click()  # harmless
    assert panel.state is JobState.RUNNING
    panel.close()


# -- stalls ----------------------------------------------------------------------------------------------
def test_stalled_symbols_are_listed_escaped_in_the_error_colour(comms, fake_clock):
    handle = FakeHandle()
    handle.stalls = [("<b>slow</b>", 65.0), ("\x1b[31mS2", 12.5)]
    panel = panel_for(handle, fake_clock)
    panel.update(snap(done=3, running=2))
    assert panel.stalled.value == "stalled: &lt;b&gt;slow&lt;/b&gt; (running 1m 05s), S2 (running 12s)"
    live = panel.widget.children[0].value
    assert '<div class="procengine-stalled">stalled: &lt;b&gt;slow' in live and "<b>slow" not in live
    assert ".procengine-stalled{font-weight:bold;color:var(--jp-error-color0" in live
    assert "stalled: <b>slow</b> (running 1m 05s)" in panel.as_text()
    handle.stalls = []
    fake_clock.advance(1)
    panel.tick()
    assert panel.stalled.value == "" and "procengine-stalled\">" not in panel.widget.children[0].value
    panel.close()


def test_the_terminal_line_names_stalls_and_says_paused(fake_clock):
    handle = FakeHandle(name="prices")
    handle.stalls = [("S9", 30.0)]
    out = io.StringIO()
    view = ConsoleProgress(handle.token, name="prices", stream=out, tty=False, min_interval=0, clock=fake_clock,
                           handle=handle)
    view.update(snap(done=2, running=1))
    handle.paused = True
    view.update(snap(done=3, running=0))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("| Running | stalled: S9 (running 30s)")
    assert lines[1].endswith("| Paused | stalled: S9 (running 30s)")


# -- the bar and the failures ----------------------------------------------------------------------------
def test_the_bar_shows_the_failed_share_beside_the_done_share(fake_clock):
    panel = ProgressPanel(CancellationToken(), name="p", clock=fake_clock, ticker=False)
    panel.update(snap(total=8, done=4, errors=1))
    bar = panel.progress_bar
    assert (bar.value, bar.max, bar.failed, bar.bar_style) == (4, 8, 1, "info")
    live = panel.widget.children[0].value
    assert 'role="progressbar"' in live and 'aria-valuenow="4"' in live and 'aria-valuemax="8"' in live
    done, failed = 'procengine-bar-done" style="width:37.500%"', 'procengine-bar-failed" style="width:12.500%"'
    assert done in live and failed in live and live.index(done) < live.index(failed)
    assert ".procengine-bar-failed{background:var(--jp-error-color1" in live
    panel.finish(result_of(ok=6, failed=[("X", ValueError("x")), ("Y", ValueError("y"))]), None)
    assert (panel.progress_bar.value, panel.progress_bar.failed, panel.progress_bar.bar_style) == (8, 2, "warning")
    panel.close()


def test_each_failure_group_opens_to_its_latest_traceback_escaped_and_bounded(fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    panel.failed(failure("S1", ValueError("bad"), traceback="Traceback (first)\nValueError: bad"))
    long = "Traceback (most recent call last):\n" + "  <frame> & 'x'\n" * 20_000 + "ValueError: bad <script>"
    panel.failed(failure("S2", ValueError("bad"), traceback=long))
    panel.failed(failure("S3", KeyError("k")))  # no traceback: a plain line
    fake_clock.advance(1)
    panel.tick()
    text = panel.failures.value
    group = re.search(r'<details class="procengine-group"><summary>2 x ValueError: bad</summary>'
                      r'<pre class="procengine-traceback">(.*?)</pre></details>', text, re.S)
    assert group, text[:500]
    trace = group.group(1)
    assert "(first)" not in trace and trace.endswith("ValueError: bad &lt;script&gt;")  # the latest one
    assert "<script>" not in text and "<frame>" not in text and "&lt;frame&gt; &amp; &#x27;x&#x27;" in trace
    assert len(html.unescape(trace)) <= 4000  # bounded
    assert '<div class="procengine-group">1 x KeyError' in text
    assert "<details" in panel.as_html()  # the text/html fallback opens too
    panel.close()


def test_an_opened_traceback_stays_open_while_the_figures_move(comms, fake_clock):
    """The failures have their own text: it gets no message while only the figures change."""
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    panel.failed(failure("S1", ValueError("bad"), traceback="Traceback\nValueError: bad"))
    failures_text = panel.widget.children[4]
    before = len(comms)
    for done in range(1, 20):
        fake_clock.advance(0.5)
        panel.update(snap(total=100, done=done, errors=1))
    sent = {cid for kind, cid, data in comms[before:] if kind == "comm_msg"}
    assert panel.widget.children[0].model_id in sent and failures_text.model_id not in sent
    panel.close()


# -- Retry / Resume after the end ------------------------------------------------------------------------
def test_retry_after_failures_starts_the_follow_up_in_the_same_box(comms, fake_clock):
    successor = FakeHandle(name="job (retry)", progress=snap(total=2))
    handle = FakeHandle(follow_up=successor)
    panel = panel_for(handle, fake_clock)
    box = panel.widget
    assert HIDDEN in panel.retry_button._dom_classes  # not while running
    panel.finish(result_of(ok=8, failed=[("X", ValueError("x")), ("Y", KeyError("y"))]), None)
    retry, resume = panel.retry_button, panel.resume_button
    assert retry.description == "Retry 2 failed" and HIDDEN not in retry._dom_classes and not retry.disabled
    assert HIDDEN in resume._dom_classes  # nothing was left unprocessed
    assert panel.stop_button.disabled and panel.stop_button.description == "Stop"
    models = opened(comms)
    assert len(models) <= MAX_MODELS
    retry.click()
    retry.click()  # a second click starts nothing more
    assert handle.calls == ["retry"]
    new = panel.successor_panel
    assert new is not None and successor.panel is new and successor.views == [new]
    assert box.children == (new.widget,) and box._dom_classes == ("procengine-host",)
    assert "procengine-panel" in new.widget._dom_classes and new.status.value == "Running"
    assert len(closed(comms)) == len(models) - 2  # the old parts are released; its box and layout hold the new
    panel.close()
    assert opened(comms) <= closed(comms)


def test_resume_after_a_stop_and_retry_after_failures_are_both_offered(comms, fake_clock):
    successor = FakeHandle(name="job (resume)")
    handle = FakeHandle(follow_up=successor)
    panel = panel_for(handle, fake_clock)
    panel.stop_button.click()
    panel.finish(result_of(ok=2, failed=[("X", ValueError("x"))], unprocessed=["U1", "U2"], cancelled=True), None)
    assert panel.stop_button.description == "Stopped"
    resume, retry = panel.resume_button, panel.retry_button
    assert resume.description == "Resume" and HIDDEN not in resume._dom_classes and not resume.disabled
    assert retry.description == "Retry 1 failed" and HIDDEN not in retry._dom_classes
    resume.click()
    assert handle.calls == ["resume"] and panel.successor_panel.widget in panel.widget.children
    panel.close()


def test_a_follow_up_that_cannot_start_says_why_and_stays_offered(comms, fake_clock):
    handle = FakeHandle(follow_up=RuntimeError("<engine> closed"))
    panel = panel_for(handle, fake_clock)
    panel.finish(result_of(ok=1, failed=[("X", ValueError("x"))]), None)
    panel.retry_button.click()
    live = panel.widget.children[0].value
    assert "Could not retry: RuntimeError: &lt;engine&gt; closed" in live and "<engine>" not in live
    assert panel.successor_panel is None and not panel.retry_button.disabled
    assert panel.retry_button.description == "Retry 1 failed"
    panel.close()


def test_a_clean_end_offers_no_follow_up(comms, fake_clock):
    handle = FakeHandle(follow_up=FakeHandle())
    panel = panel_for(handle, fake_clock)
    panel.finish(result_of(ok=4), None)
    assert HIDDEN in panel.retry_button._dom_classes and HIDDEN in panel.resume_button._dom_classes
    panel.resume_button.click()
    panel.retry_button.click()
    assert handle.calls == [] and panel.successor_panel is None
    panel.close()


# -- jobs() and show() -----------------------------------------------------------------------------------
def test_the_jobs_widget_holds_a_live_panel_per_running_job_and_a_line_per_ended_one(comms):
    from procengine_nb import ProcessingEngine, ProcessingJob

    engine = ProcessingEngine(lambda s: 1 / 0 if s == "bad" else s, max_workers=1)
    ended = engine.start(ProcessingJob(["a", "bad"], name="<i>old</i>"))
    ended.result(timeout=10)
    running = FakeHandle(name="live", progress=snap(total=5, done=2))
    running.done = lambda: False
    view = jobs_view([running, ended])
    assert view.running == [running] and view.ended == [ended] and comms == []  # nothing built yet
    text = view.as_text()
    assert text.splitlines()[0] == "jobs: 1 running, 1 ended"
    assert text.splitlines()[1].startswith("  live: 2 / 5 (40%) | errors 0")
    assert text.splitlines()[2] == "  <i>old</i>: Done with errors: 1 of 2 failed"
    box = view.widget
    (panel,) = view.panels
    assert running.panel is panel and box.children[0] is panel.widget
    assert "procengine-jobs" in box._dom_classes
    lines = box.children[-1].value
    assert "&lt;i&gt;old&lt;/i&gt;</b>: Done with errors: 1 of 2 failed" in lines and "<i>" not in lines
    bundle = view._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == box.model_id
    assert "<i>old" not in bundle["text/html"]
    assert len(opened(comms)) <= MAX_MODELS + 4  # one panel; the VBox, its lines, their layout and style
    view.close()
    panel.close()
    assert opened(comms) == closed(comms)  # the view's own models and the panel's, all released


def test_jobs_reuses_the_panel_already_showing_a_job(comms, fake_clock):
    handle = FakeHandle()
    handle.done = lambda: False
    panel = ProgressPanel.for_handle(handle, clock=fake_clock, ticker=False)
    assert jobs_view([handle]).widget.children[0] is panel.widget
    panel.close()
    fresh = jobs_view([handle]).widget  # a closed panel is not reused: a new one is attached
    assert handle.panel is not panel and fresh.children[0] is handle.panel.widget
    handle.panel.close()


def test_an_empty_jobs_list_says_so(comms):
    view = jobs_view([])
    assert view.as_text() == "jobs: 0 running, 0 ended"
    assert "No jobs in this process yet." in view.widget.children[-1].value
    view.close()


def test_a_panel_with_every_button_stays_within_the_model_budget(comms, fake_clock):
    before = set(_instances)
    handle = FakeHandle()
    panel = panel_for(handle, fake_clock)
    panel._repr_mimebundle_()
    panel.finish(result_of(ok=1, failed=[("X", ValueError("x"))], unprocessed=["U"], cancelled=True), None)
    models = opened(comms)
    print(f"\nwidget models of a displayed panel with Pause, Stop and Retry: {len(models)}")
    assert len(models) == MAX_MODELS and set(_instances) - before == models
    panel.close()
    assert closed(comms) == models and not set(_instances) & models


# -- with the real engine ---------------------------------------------------------------------------------
def test_the_panel_pauses_continues_and_stops_a_real_job(comms, no_thread_leak):
    import threading

    from procengine_nb import ProcessingEngine

    gate = threading.Event()
    started: list[str] = []

    def work(symbol):
        started.append(symbol)
        gate.wait(10)
        return symbol

    handle = ProcessingEngine(work, max_workers=2, chunk_size=1).start([f"S{i}" for i in range(20)])
    panel = ProgressPanel.for_handle(handle, ticker=False)
    panel.pause_button.click()
    assert handle.paused and panel.pause_button.description == "Continue"
    assert panel.status.value.startswith("Paused")
    gate.set()  # the running symbols finish; nothing new starts while paused
    for _ in range(1000):  # bounded (10 s): the running ones reported, the pause in the snapshot
        p = handle.progress
        if p.paused and p.running_symbols == 0 and p.completed_symbols == len(started):
            break
        threading.Event().wait(0.01)
    done = handle.progress.completed_symbols
    assert done < 20 and handle.progress.paused
    panel.tick()
    panel.stop_button.click()  # Stop while paused: an ordinary Stop
    result = handle.result(timeout=10)
    assert result.cancelled and len(result) + len(result.unprocessed) == 20
    assert panel.status.value.startswith("Cancelled") and panel.stop_button.description == "Stopped"
    assert panel.resume_button.description == "Resume" and HIDDEN not in panel.resume_button._dom_classes
    panel.resume_button.click()
    follow = panel.successor_panel
    assert follow is not None and handle.successor is not None and follow._handle is handle.successor
    rest = handle.successor.result(timeout=10)
    assert sorted(r.symbol for r in [*result, *rest]) == sorted(f"S{i}" for i in range(20))  # each once
    assert follow.status.value == f"Done: {len(rest)} processed"
    panel.close()


def test_a_snapshot_that_says_paused_shows_paused_without_a_handle(fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    panel.update(ProcessingProgress(total_symbols=4, completed_symbols=1, paused=True))
    assert panel.status.value == "Paused" and panel.state is JobState.PAUSED


def test_jobs_lists_real_jobs_with_their_panels(comms):
    import threading

    from procengine_nb import ProcessingEngine, ProcessingJob, jobs

    gate = threading.Event()
    engine = ProcessingEngine(lambda s: gate.wait(10) and s, max_workers=1)
    running = engine.start(ProcessingJob(["x", "y"], name="live one"))
    try:
        assert jobs()[0] is running
        view = jobs_view([running])
        (panel,) = view.panels if view.widget else ()
        assert panel._handle is running and running.panel is panel
        assert view.as_text().splitlines()[1].startswith("  live one: ")
    finally:
        gate.set()
    running.result(timeout=10)
    assert panel.status.value == "Done: 2 processed"
    view.close()
    panel.close()


def test_a_symbol_with_nothing_printable_still_shows_as_running_and_stalled(fake_clock):
    handle = FakeHandle()
    handle.running_symbols = lambda limit=8: ["\x1b[2J"]
    handle.stalls = [("\u202e", 12.0)]
    panel = panel_for(handle, fake_clock)
    panel.update(snap(done=1, running=1))
    assert panel.running.value == "running: &#x27;&#x27;"
    assert panel.stalled.value == "stalled: &#x27;&#x27; (running 12s)"
