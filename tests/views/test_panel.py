"""ProgressPanel without a browser: snapshots, a real job, Stop clicks, escaping, throttling, messages."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import ClassVar

import comm
import pytest
from comm.base_comm import BaseComm

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingProgress
from procengine_nb.models import BatchResult, ResultStatus, SymbolResult
from procengine_nb.views._format import JobState
from procengine_nb.views.panel import STOP_REASON, ProgressPanel

CSS = [
    "procengine-title", "procengine-bar", "procengine-counts", "procengine-errors", "procengine-elapsed",
    "procengine-eta", "procengine-rate", "procengine-running", "procengine-status", "procengine-stop",
    "procengine-error-table",
]


def snap(total=100, done=0, errors=0, elapsed=0, eta=None, running=0, rate=0.0, cancelled=False,
         finished=False):
    return ProcessingProgress(total_symbols=total, completed_symbols=done, errors_count=errors,
                              elapsed_time_ms=elapsed, estimated_remaining_ms=eta, running_symbols=running,
                              rate_per_second=rate, cancelled=cancelled, finished=finished)


def result_of(total, ok=0, failed=(), cancelled=False, running=0):
    results = [SymbolResult(f"S{i}", ResultStatus.SUCCESS, value=i) for i in range(ok)]
    results += [SymbolResult(sym, ResultStatus.ERROR, error=err) for sym, err in failed]
    done = len(results)
    unprocessed = [f"U{i}" for i in range(total - done)]
    progress = snap(total, done, errors=len(failed), eta=0, running=running, cancelled=cancelled, finished=True)
    return BatchResult(results, unprocessed=unprocessed, progress=progress, cancelled=cancelled)


@pytest.fixture
def panel(fake_clock):
    p = ProgressPanel(CancellationToken(), name="prices", clock=fake_clock, ticker=False)
    yield p
    p.close()


def test_parts_carry_stable_css_classes(panel):
    assert panel.progress_bar.value == 0 and panel.progress_bar.description == "prices"
    assert not panel.widgets_built  # nothing is built before the panel is shown or a widget is read
    assert "procengine-panel" in panel.widget._dom_classes
    assert "procengine-stop" in panel.stop_button._dom_classes
    assert "procengine-pause" in panel.pause_button._dom_classes
    assert "procengine-retry" in panel.retry_button._dom_classes
    assert panel.stop_button.description == "Stop"
    text = panel._widgets.live.value
    for css in CSS:
        if css not in ("procengine-stop", "procengine-running", "procengine-error-table"):
            assert f'class="{css}' in text, css


def test_repr_is_stable_and_the_mimebundle_carries_text_fallbacks(panel, fake_clock):
    before = repr(panel)
    panel.update(snap(done=42, elapsed=1234, rate=3.0))
    assert repr(panel) == before == "ProgressPanel(name='prices')"
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == "ProgressPanel(name='prices'): Running | 42 / 100 (42%) | errors 0"
    assert "42 / 100 (42%)" in bundle["text/html"] and "Running" in bundle["text/html"]
    assert "<style" not in bundle["text/html"] and "<script" not in bundle["text/html"]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    assert bundle["application/vnd.jupyter.widget-view+json"]["version_major"] == 2


def test_running_snapshot_shows_every_figure(panel):
    panel.update(snap(total=100, done=37, errors=0, elapsed=65_000, eta=12_000, rate=2.5, running=3))
    assert panel.counts.value == "37 / 100 (37%)"
    assert panel.progress_bar.value == 37 and panel.progress_bar.max == 100
    assert panel.errors.value == "errors: 0"
    assert panel.elapsed.value == "elapsed 1m 05s"
    assert panel.eta.value == "ETA 12s"
    assert panel.rate.value == "2.5/s"
    assert panel.status.value == "Running"
    assert panel.progress_bar.bar_style == "info"
    assert panel.state is JobState.RUNNING


def test_unknown_eta_and_highlighted_errors(panel):
    panel.update(snap(done=3, errors=2, eta=None))
    assert panel.eta.value == "ETA —"
    assert panel.errors.value == "errors: 2"
    assert 'class="procengine-errors procengine-err"' in panel.widget.children[0].value  # marked


def test_updates_are_throttled_and_the_pending_one_is_rendered_by_tick(panel, fake_clock):
    panel.update(snap(done=1))
    assert panel.render_count == 1
    for done in range(2, 50):
        fake_clock.advance(0.001)
        panel.update(snap(done=done))
    assert panel.render_count == 1 and panel.counts.value.startswith("1 /")
    panel.tick()  # not yet min_interval since the last render
    assert panel.render_count == 1
    fake_clock.advance(0.1)
    panel.tick()
    assert panel.render_count == 2 and panel.counts.value.startswith("49 /")


def test_tick_moves_elapsed_and_eta_while_nothing_completes(panel, fake_clock):
    panel.update(snap(done=10, elapsed=2000, eta=8000))
    assert panel.elapsed.value == "elapsed 2.0s"
    fake_clock.advance(0.3)
    panel.tick()  # nothing pending and refresh_interval (0.5 s) not reached
    assert panel.elapsed.value == "elapsed 2.0s"
    fake_clock.advance(0.3)
    panel.tick()
    assert panel.elapsed.value == "elapsed 2.6s" and panel.eta.value == "ETA 7.4s"


def test_stop_click_cancels_the_token_and_a_second_click_is_harmless(fake_clock):
    token = CancellationToken()
    panel = ProgressPanel(token, clock=fake_clock, ticker=False)
    panel.update(snap(done=5, running=3))
    panel.stop_button.click()
    assert token.is_cancelled and token.reason == STOP_REASON
    assert panel.stop_button.disabled and panel.stop_button.description == "Stopping…"
    assert panel.status.value == "Stopping… 3 still running"
    assert panel.progress_bar.bar_style == "warning"
    panel.stop_button.click()
    assert token.reason == STOP_REASON and panel.stop_button.description == "Stopping…"
    panel.close()


def test_finished_panel_disables_stop_and_says_stopped_after_a_cancel():
    engine = ProcessingEngine(str, max_workers=1)
    token = CancellationToken()
    token.cancel()
    cancelled = engine.start(["a", "b"], cancellation_token=token)
    panel = ProgressPanel.for_handle(cancelled, ticker=False)
    cancelled.result(10)
    assert panel.stop_button.disabled and panel.stop_button.description == "Stopped"
    done = engine.start(["a", "b"])
    panel = ProgressPanel.for_handle(done, ticker=False)
    done.result(10)
    assert panel.stop_button.disabled and panel.stop_button.description == "Stop"


def test_a_cancel_from_elsewhere_shows_stopping(panel, fake_clock):
    panel._token.cancel("deadline")
    fake_clock.advance(1)
    panel.update(snap(done=5, running=2))
    assert panel.status.value.startswith("Stopping… 2 still running")
    assert panel.stop_button.disabled


@pytest.mark.parametrize(
    ("result", "status", "style"),
    [
        (result_of(10, ok=10), "Done: 10 processed", "success"),
        (result_of(10, ok=8, failed=[("A", ValueError("x")), ("B", KeyError("y"))]),
         "Done with errors: 2 of 10 failed", "warning"),
        (result_of(100, ok=37, cancelled=True), "Cancelled: 37 of 100 processed, 63 not processed", "warning"),
    ],
)
def test_final_states(panel, fake_clock, result, status, style):
    panel.update(snap(total=len(result) + len(result.unprocessed), done=1))
    fake_clock.advance(0.01)
    panel.finish(result, None)  # always rendered, though inside the throttle interval
    assert panel.status.value == status
    assert panel.progress_bar.bar_style == style
    assert panel.progress_bar.value == len(result)
    assert panel.stop_button.disabled
    assert panel.running.value == ""


def test_failed_engine_shows_the_exception_escaped(panel):
    panel.update(snap(done=1))
    panel.finish(None, RuntimeError("<b>engine</b> broke"))
    assert panel.state is JobState.FAILED
    assert panel.status.value == "Failed: RuntimeError: &lt;b&gt;engine&lt;/b&gt; broke"
    assert panel.progress_bar.bar_style == "danger"


def test_error_table_escapes_symbols_and_messages_and_truncates_rows(fake_clock):
    panel = ProgressPanel(CancellationToken(), name="<i>n</i>", clock=fake_clock, ticker=False, max_error_rows=3)
    failed = [("<script>alert(1)</script>", ValueError("<script>x</script>"))]
    failed += [(f"F{i}", KeyError(i)) for i in range(6)]
    panel.finish(result_of(10, ok=3, failed=failed), None)
    table = panel.error_table.value
    assert "<script>" not in table and "&lt;script&gt;alert(1)&lt;/script&gt;" in table
    assert "&lt;script&gt;x&lt;/script&gt;" in table
    assert table.count("<tr>") == 1 + 3  # header + 3 rows
    assert "+4 more" in table and "<details>" in table and "7 failed symbols" in table
    assert "<i>" not in panel.title.value and "&lt;i&gt;n&lt;/i&gt;" in panel.title.value
    assert panel.progress_bar.description == "<i>n</i>"  # plain text in the widget: shown, not parsed
    summary = panel.summary()
    assert repr(summary) == "<i>n</i>: Done with errors: 7 of 10 failed"
    assert "<script>" not in summary._repr_html_() and "+4 more" in summary._repr_html_()
    panel.close()


def test_update_after_finish_is_ignored(panel):
    panel.finish(result_of(4, ok=4), None)
    panel.update(snap(total=4, done=1))
    panel.finish(result_of(4, ok=1, cancelled=True), None)
    assert panel.status.value == "Done: 4 processed"


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="token"):
        ProgressPanel("not a token")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        ProgressPanel(CancellationToken(), name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_error_rows"):
        ProgressPanel(CancellationToken(), max_error_rows=-1)
    with pytest.raises(ValueError, match="min_interval"):
        ProgressPanel(CancellationToken(), min_interval=-0.1)
    with pytest.raises(TypeError, match="clock"):
        ProgressPanel(CancellationToken(), clock=1)  # type: ignore[arg-type]


# -- with a real job ------------------------------------------------------------------------------
def test_real_job_stop_click_keeps_partial_results_and_leaves_no_thread(no_thread_leak):
    release = threading.Event()
    started = threading.Semaphore(0)

    def slow(symbol, cancellation_token):
        if symbol >= 4:
            started.release()
            cancellation_token.wait(10)
            cancellation_token.throw_if_cancelled()
        return symbol

    handle = ProcessingEngine(slow, max_workers=2).start(range(100))
    panel = ProgressPanel.for_handle(handle, min_interval=0.0)
    assert handle.panel is panel and panel.title.value == f"<b>{handle.job.display_name}</b>"
    assert started.acquire(timeout=10)
    panel.tick()
    assert panel.running.value.startswith("running: ")
    panel.stop_button.click()
    panel.stop_button.click()
    result = handle.result(timeout=10)
    release.set()
    assert result.cancelled and handle.token.reason == STOP_REASON
    done = len(result)
    assert done >= 4 and done + len(result.unprocessed) == 100
    assert panel.status.value.startswith(f"Cancelled: {done} of 100 processed, {100 - done} not processed")
    assert panel.state is JobState.CANCELLED


def test_ticker_refreshes_while_a_symbol_runs_and_stops_with_the_job(no_thread_leak):
    gate = threading.Event()
    handle = ProcessingEngine(lambda s: gate.wait(10), max_workers=1).start(["slow"])
    panel = ProgressPanel.for_handle(handle, min_interval=0.01, refresh_interval=0.01)
    deadline = time.monotonic() + 10
    while panel.render_count < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert panel.render_count >= 3  # refreshed by the ticker: no symbol completed meanwhile
    assert panel.running.value == "running: slow"
    assert any(t.name == "procengine-panel-ticker" for t in threading.enumerate())
    gate.set()
    handle.result(timeout=10)
    # finish() joined the ticker before result() returned
    assert not any(t.name == "procengine-panel-ticker" for t in threading.enumerate())


def test_attach_after_the_end_shows_the_final_state():
    handle = ProcessingEngine(str.upper).start(["a", "<b>"])
    handle.result(timeout=10)
    panel = ProgressPanel.for_handle(handle)
    assert panel.status.value == "Done: 2 processed" and panel.progress_bar.value == 2
    assert not panel._throttle.ticker_alive and panel.render_count == 1


class CountingComm(BaseComm):
    """A comm that counts the widget messages the front-end would receive."""

    sent: ClassVar[list[str]] = []

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        CountingComm.sent.append(msg_type)


def test_message_budget_of_a_fast_10000_symbol_batch(monkeypatch, no_thread_leak):
    CountingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: CountingComm(*a, **k))
    # ~0.2 ms a symbol: thousands of snapshots a second for about a second, on any machine
    handle = ProcessingEngine(lambda s: time.sleep(0.0002), max_workers=2).start(range(10_000))
    started = time.monotonic()
    panel = ProgressPanel.for_handle(handle)
    opened = CountingComm.sent.count("comm_open")
    before = CountingComm.sent.count("comm_msg")
    result = handle.result(timeout=60)
    seconds = time.monotonic() - started
    updates = CountingComm.sent.count("comm_msg") - before
    assert len(result) == 10_000 and panel.progress_bar.value == 10_000
    assert panel.status.value == "Done: 10000 processed"
    # ~10 renders a second plus the first and the final one, whatever the symbol rate ...
    assert panel.render_count <= 10 * seconds + 3, (panel.render_count, seconds)
    # ... and each render sends at most one message per part (only changed values are sent).
    assert updates <= panel.render_count * opened, (updates, panel.render_count, opened)
    print(f"\n10,000 symbols in {seconds:.2f}s: {panel.render_count} renders, {updates} comm messages")


def test_importing_the_package_does_not_import_widgets():
    code = (
        "import sys, procengine_nb\n"
        "procengine_nb.ProcessingEngine(len).process_batch([[1]])\n"
        "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'\n"
        "assert 'IPython' not in sys.modules, 'IPython imported'\n"
        "assert procengine_nb.ProgressPanel.__name__ == 'ProgressPanel'\n"
        "assert 'ipywidgets' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
