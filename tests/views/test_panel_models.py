"""The panel's widget models: none until it is shown, at most 9 once shown, all released by close();
failures shown as they happen; the final state re-sent from the waiting thread; text fallbacks."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import comm
import pytest
from comm.base_comm import BaseComm
from ipywidgets.widgets.widget import _instances

from procengine_nb import CancellationToken, ProcessingEngine, ProcessingProgress, run
from procengine_nb.models import BatchResult, ResultStatus, SymbolResult
from procengine_nb.views.panel import ProgressPanel

# tqdm's notebook bar uses 11. 9: the 8 of the panel before Pause/Retry, plus a second text for the failures,
# so that a failure group opened to its traceback stays open while the figures move (README, "Models")
MAX_MODELS = 9


class RecordingComm(BaseComm):
    """A comm that records what the front-end would receive: (msg_type, comm_id, data)."""

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


def snap(total=10, done=0, errors=0):
    return ProcessingProgress(total_symbols=total, completed_symbols=done, errors_count=errors)


def failure(symbol, error):
    return SymbolResult(symbol, ResultStatus.ERROR, error=error)


def test_a_panel_never_shown_opens_no_comm(comms, fake_clock):
    panel = ProgressPanel(CancellationToken(), name="quiet", clock=fake_clock, ticker=False)
    for done in range(1, 11):
        fake_clock.advance(1)
        panel.update(snap(done=done, errors=1))
    panel.failed(failure("S1", ValueError("x")))
    panel.finish(BatchResult([], unprocessed=[]), None)
    panel.waited()
    panel.close()
    assert comms == [] and not panel.widgets_built
    assert panel.status.value.startswith("Done") and panel.failures.value


def test_200_runs_without_display_open_no_comm(comms, no_thread_leak):
    before = set(_instances)
    for i in range(200):
        handle = run(lambda s: s, [i, i + 1], display=False, max_workers=1)
        handle.result(timeout=10)
        assert handle.panel.status.value == "Done: 2 processed"
    assert opened(comms) == set()
    assert not set(_instances) - before  # (widgets of earlier tests may be collected meanwhile)


def test_a_shown_panel_uses_at_most_9_models_and_close_releases_them(comms, fake_clock):
    before = set(_instances)
    panel = ProgressPanel(CancellationToken(), name="shown", clock=fake_clock, ticker=False)
    bundle = panel._repr_mimebundle_()  # what display(panel) sends
    models = opened(comms)
    print(f"\nwidget models of a displayed panel: {len(models)}")
    assert 0 < len(models) <= MAX_MODELS
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] in models
    assert set(_instances) - before == models
    for done in range(1, 30):  # updates reuse the models
        fake_clock.advance(0.2)
        panel.update(snap(total=30, done=done))
    panel._repr_mimebundle_()
    assert opened(comms) == models
    panel.close()
    assert closed(comms) == models
    assert not set(_instances) & models
    panel.update(snap(total=30, done=30))  # harmless after close
    panel.waited()
    assert closed(comms) == models and len(opened(comms)) == len(models)


def test_reading_a_widget_attribute_builds_the_widgets_once(comms):
    panel = ProgressPanel(CancellationToken(), ticker=False)
    stop = panel.stop_button
    assert panel.widgets_built and stop is panel.widget.children[2] and panel.pause_button is panel.widget.children[1]
    assert panel.stop_button is stop and len(opened(comms)) <= MAX_MODELS
    panel.close()


def test_widgets_built_mid_job_show_the_latest_state(comms, fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    panel.update(snap(total=40, done=17, errors=2))
    assert panel.progress_bar.value == 17 and panel.progress_bar.max == 40
    assert "17 / 40 (42%)" in panel.widget.children[0].value
    panel.close()


def test_failures_are_grouped_counted_and_listed_as_they_happen(fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False, latest_errors=3)
    panel.update(snap(total=100, done=0))
    for i in range(37):
        panel.failed(failure(f"S{i:02d}", ConnectionError("429")))
    panel.failed(failure("<b>bad</b>", ValueError("<script>alert(1)</script>")))
    panel.failed(failure("K1", KeyError("k")))
    fake_clock.advance(0.1)
    panel.tick()
    text = panel.failures.value
    assert "37 x ConnectionError: 429" in text
    assert "1 x ValueError: &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>" not in text and "<b>bad</b>" not in text and "&lt;b&gt;bad&lt;/b&gt;" in text
    latest = text.split("latest:")[1]
    assert latest.index("K1") < latest.index("&lt;b&gt;bad") < latest.index("S36")  # newest first
    assert "S35" not in latest  # only the latest 3
    assert 'class="procengine-failures"' in panel.widget.children[4].value
    assert 'class="procengine-failures"' not in panel._widgets.live.value  # the failures have their own text


def test_failures_are_throttled_like_the_rest(fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    panel.update(snap())
    assert panel.render_count == 1
    for i in range(500):
        panel.failed(failure(f"S{i}", ValueError("x")))
    assert panel.render_count == 1 and panel.failures.value == ""
    fake_clock.advance(0.1)
    panel.tick()
    assert panel.render_count == 2 and "500 x ValueError: x" in panel.failures.value


def test_many_distinct_messages_stay_bounded(fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    for i in range(5000):
        panel.failed(failure(f"S{i}", ValueError(f"row {i} is bad")))
    fake_clock.advance(1)
    panel.tick()
    assert len(panel._failures.groups()) <= 51
    assert "ValueError (various messages)" in panel.failures.value
    assert len(panel.failures.value) < 3000


def test_waited_resends_the_final_state_of_a_shown_panel(comms):
    handle = ProcessingEngine(str.upper, max_workers=2).start(["a", "b", "c"])
    panel = ProgressPanel.for_handle(handle, ticker=False)
    panel._repr_mimebundle_()
    handle.result(timeout=10)
    before = len(comms)
    panel.waited()  # what the handle calls on the waiting thread
    resent = [(cid, data) for kind, cid, data in comms[before:] if kind == "comm_msg"]
    states = {cid: data["state"] for cid, data in resent if data.get("method") == "update"}
    button, text = panel.stop_button, panel._widgets.live
    assert 'aria-valuenow="3"' in states[text.model_id]["value"]
    assert 'aria-valuemax="3"' in states[text.model_id]["value"]
    assert states[button.model_id]["disabled"] is True
    assert "Done: 3 processed" in states[text.model_id]["value"]
    panel.close()


def test_text_fallbacks_follow_the_state_to_the_end(comms):
    gate = threading.Event()
    handle = ProcessingEngine(lambda s: gate.wait(10), max_workers=1).start(["x", "y"])
    panel = ProgressPanel.for_handle(handle, ticker=False)
    first = panel._repr_mimebundle_()
    assert "Running" in first["text/plain"] and "Running" in first["text/html"]
    gate.set()
    handle.result(timeout=10)
    last = panel._repr_mimebundle_()
    name = handle.job.display_name
    assert last["text/plain"] == f"ProgressPanel(name='{name}'): Done: 2 processed | 2 / 2 (100%) | errors 0"
    assert "Done: 2 processed" in last["text/html"]
    panel.close()


def test_a_real_job_feeds_failures_to_the_panel_as_they_happen(no_thread_leak):
    gate = threading.Event()

    def flaky(symbol):
        if symbol == "first":
            gate.wait(30)  # holds one worker until the end of the test; the other runs the failures
            return symbol
        raise ConnectionError("429")

    # one symbol a task: a chunk holding "first" would hold back the failures chunked with it; the panel
    # listens from the start (attached later, it would not see the failures that happened before)
    token = CancellationToken()
    panel = ProgressPanel(token, min_interval=0.0)
    handle = ProcessingEngine(flaky, max_workers=2, chunk_size=1).start(
        ["first"] + [f"S{i}" for i in range(37)], cancellation_token=token, views=[panel])
    try:
        seen = threading.Event()
        for _ in range(2000):  # bounded (20 s): the 37 failures arrive while "first" still runs
            if "37 x ConnectionError: 429" in panel.failures.value:
                break
            seen.wait(0.01)
        assert "37 x ConnectionError: 429" in panel.failures.value, panel.failures.value
        assert not handle.done()
    finally:
        gate.set()
    handle.result(timeout=10)
    assert "37 x ConnectionError: 429" in panel.failures.value and "latest:" not in panel.failures.value
    assert "37 failed symbols" in panel.error_table.value


def test_failures_before_the_panel_was_attached_are_counted_at_the_end():
    engine = ProcessingEngine(lambda s: 1 / 0 if s % 2 else s, max_workers=2)
    handle = engine.start(range(40))
    handle.result(timeout=10)
    panel = ProgressPanel.for_handle(handle, ticker=False)  # attached after every failure happened
    assert "20 x ZeroDivisionError: division by zero" in panel.failures.value


def test_closing_the_handle_releases_the_panels_models(comms):
    handle = ProcessingEngine(str.upper, max_workers=1).start(["a", "b"])
    panel = ProgressPanel.for_handle(handle, ticker=False)
    panel._repr_mimebundle_()
    handle.result(timeout=10)
    models = opened(comms)
    assert 0 < len(models) <= MAX_MODELS
    handle.close()
    assert closed(comms) == models and not set(_instances) & models
    handle.close()  # twice: nothing more to release
    assert closed(comms) == models


def test_concurrent_updates_failures_clicks_and_displays_end_in_one_consistent_final_state(comms, no_thread_leak):
    token = CancellationToken()
    panel = ProgressPanel(token, name="race", min_interval=0.0, refresh_interval=0.001)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def guarded(fn):
        def run_it():
            try:
                start.wait(10)
                fn()
            except BaseException as exc:  # collected: the assertion below names it
                errors.append(exc)
        return threading.Thread(target=run_it)

    def updates():
        for done in range(1, 2001):
            panel.update(snap(total=2000, done=done, errors=done // 2))

    def failures():
        for i in range(1000):
            panel.failed(failure(f"S{i}", ValueError("boom")))

    def displays():
        for _ in range(50):
            panel._repr_mimebundle_()
            panel.tick()

    threads = [guarded(updates), guarded(failures), guarded(displays), guarded(panel._on_stop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    result = BatchResult([failure(f"S{i}", ValueError("boom")) for i in range(1000)],
                         unprocessed=[f"U{i}" for i in range(1000)], cancelled=True)
    panel.finish(result, None)
    panel.waited()
    assert panel.status.value == "Cancelled: 1000 of 2000 processed, 1000 not processed"
    assert panel.stop_button.disabled and panel.stop_button.description == "Stopped"
    assert panel.progress_bar.value == 1000 and panel.progress_bar.max == 2000
    assert "1000 x ValueError: boom" in panel.failures.value
    assert len(opened(comms)) <= MAX_MODELS
    panel.close()


def test_a_closed_panel_still_displays_its_text(comms):
    panel = ProgressPanel(CancellationToken(), name="gone", ticker=False)
    panel._repr_mimebundle_()
    panel.close()
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert bundle["text/plain"].startswith("ProgressPanel(name='gone'): Running")
    assert len(opened(comms)) <= MAX_MODELS


def test_a_panel_attached_after_the_end_is_still_waited_for_and_closed(comms):
    handle = ProcessingEngine(str.upper, max_workers=1).start(["a", "b"])
    assert handle.wait(10)
    panel = ProgressPanel.for_handle(handle, ticker=False)  # attached after the end: finished at once
    panel._repr_mimebundle_()
    before = len(comms)
    handle.result(timeout=10)  # the waiter re-sends the final state of every view, late ones too
    assert any(kind == "comm_msg" for kind, _, _ in comms[before:])
    handle.close()
    assert closed(comms) == opened(comms)


def test_the_panel_holds_an_ipywidgets_container_whose_comm_opens_with_its_first_use(comms):
    """The panel holds its widgets: ``panel.widget`` is an ipywidgets container, built (with its parts) only
    when the panel is first shown or the container is asked for, each model opened with its full state."""
    import ipywidgets

    panel = ProgressPanel(CancellationToken(), name="boxed", ticker=False)
    assert panel.progress_bar.max == 1 and panel.status.value == "Running" and comms == []
    outer = ipywidgets.VBox([panel.widget])
    box = panel.widget
    models = opened(comms)
    assert isinstance(box, ipywidgets.Box) and box.model_id in models
    assert len(models) <= MAX_MODELS + 2  # + the VBox and its layout
    state = next(data["state"] for kind, cid, data in comms if cid == box.model_id and kind == "comm_open")
    assert len(state["children"]) == 5 and "procengine-panel" in state["_dom_classes"]
    assert not any(kind == "comm_msg" for kind, cid, _ in comms if cid == box.model_id)  # no update before
    panel.stop_button.click()
    assert panel.stop_button.disabled and panel._token.is_cancelled
    outer_ids = {outer.layout.model_id, outer.model_id}
    outer.close()
    panel.close()
    assert opened(comms) - outer_ids <= closed(comms)


def test_an_unknown_total_draws_no_share_of_the_bar_and_no_eta(comms, fake_clock):
    panel = ProgressPanel(CancellationToken(), name="endless", clock=fake_clock, ticker=False)
    panel.update(ProcessingProgress(total_symbols=40, completed_symbols=37, total_known=False))
    assert panel.progress_bar.value == 0 and "%" not in panel.counts.value
    assert panel.eta.value == "ETA —"
    panel.update(ProcessingProgress(total_symbols=40, completed_symbols=37, total_known=True))
    fake_clock.advance(1)
    panel.tick()
    assert panel.progress_bar.value == 37 and panel.progress_bar.max == 40


def test_a_failure_arriving_after_the_end_is_not_counted_again(fake_clock):
    panel = ProgressPanel(CancellationToken(), clock=fake_clock, ticker=False)
    errors = [failure(f"S{i}", PermissionError("no")) for i in range(30)]
    for result in errors[:10]:
        panel.failed(result)
    panel.finish(BatchResult(errors, unprocessed=[]), None)  # attached late: rebuilt from the result
    for result in errors[10:]:  # the rest of a replay still running on the attaching thread
        panel.failed(result)
    assert panel._failures.total == 30 and "30 x PermissionError: no" in panel.failures.value


def test_a_panel_attached_while_a_fast_failing_job_runs_counts_each_failure_once(no_thread_leak):
    """Issue 19: attached mid-run (as run() does while ipywidgets imports), the panel said
    "114,896 x PermissionError" for 60,000 failures: the end rebuilt its log while the replay of the
    earlier failures still wrote into it (about 1 run in 8 here; the two tests above pin both halves of
    the fix deterministically)."""
    total = 20_000

    def deny(symbol):
        raise PermissionError("no")

    handle = ProcessingEngine(deny, max_workers=2).start(range(total))
    while handle.progress.errors_count < total * 0.6 and not handle.done():
        pass  # attach while thousands of failures wait to be replayed and the rest still arrive
    panel = ProgressPanel.for_handle(handle, ticker=False)
    handle.result(timeout=60)
    assert panel._failures.total == total, panel._failures.total
    assert f"{total} x PermissionError: no" in panel.failures.value
