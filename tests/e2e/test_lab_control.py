"""The control room in a real browser (JupyterLab, Debian chromium, Playwright): a job got back through
``jobs()`` after a page reload with its variable gone, Pause then Continue, stalled symbols, and Retry
after failures from the panel's own button.

Screenshots go to the test's temp folder and to ``$PROCENGINE_SCREENSHOT_DIR`` when set (``docs/img``).
"""

from __future__ import annotations

import re

import pytest
from conftest import bar_percent, wait_bar_above

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

try:
    from playwright.sync_api import expect
except ImportError:  # the chromium_path fixture fails (CI) or skips (locally) with the reason
    expect = None  # type: ignore[assignment]

N = 200
SETUP = f"""\
import threading
import time
from procengine_nb import jobs, run

def slow(symbol):
    time.sleep(0.15)
    return symbol.lower()

symbols = [f"S{{i:03d}}" for i in range({N})]"""


def _jobs_panel(lp, cell: int):
    return lp.output(cell).locator(".procengine-jobs .procengine-panel").first


def test_reload_with_the_handle_lost_then_jobs_gives_back_a_live_panel_with_a_working_stop(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("reload.ipynb", [
        SETUP,
        'handle = run(slow, symbols, max_workers=4, name="prices")',
        "del handle  # the variable is gone",
        "jobs()",
        "r = jobs()[0].result()\nprint(r.summary())",
    ]))
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    lp.wait_bar_above(1, 2.0)
    lp.run_cell(2, until_done=True)
    lp.page.reload()  # the notebook was never saved: after the reload no output, no panel is left
    lp.page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', state="attached",
                              timeout=90_000)
    assert lp.page.locator(".procengine-panel").count() == 0
    lp.run_cell(3)
    panel = _jobs_panel(lp, 3)
    expect(panel).to_be_visible(timeout=30_000)
    expect(panel.locator(".procengine-title")).to_have_text("prices")
    status = panel.locator(".procengine-status")
    expect(status).to_have_text(re.compile(r"^\s*Running"), timeout=15_000)
    first = wait_bar_above(lp.page, panel, 2.0)
    assert wait_bar_above(lp.page, panel, first) > first  # live: it moves
    lp.assert_contrast(panel, "jobs() panel")
    lp.screenshot(lp.output(3).first, "jobs-after-reload.png")
    panel.locator(".procengine-stop").click()
    expect(status).to_have_text(re.compile(r"^\s*Cancelled: \d+ of 200 processed"), timeout=10_000)
    stopped = bar_percent(panel)
    assert 0 < stopped < 100
    lp.run_cell(4)
    expect(lp.output(4)).to_contain_text("(cancelled)", timeout=15_000)


def test_pause_then_continue_then_the_full_result(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("pause.ipynb", [
        SETUP,
        'handle = run(slow, symbols[:80], max_workers=4, name="prices")',
        "print(handle.result(timeout=60).summary())",
    ]))
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    panel = lp.panel(1)
    status = lp.part(1, "status")
    expect(status).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    lp.wait_bar_above(1, 5.0)
    pause = lp.part(1, "pause")
    expect(pause).to_have_text(re.compile(r"Pause"))
    pause.click()
    expect(status).to_have_text(re.compile(r"^\s*Paused"), timeout=5_000)
    expect(pause).to_have_text(re.compile(r"Continue"))
    expect(status).to_have_text(re.compile(r"^\s*Paused$"), timeout=5_000)  # the running ones finished
    still = lp.bar_percent(1)
    lp.page.wait_for_timeout(800)
    assert lp.bar_percent(1) == still < 100.0  # nothing new starts
    lp.assert_contrast(panel, "paused")
    lp.screenshot(lp.cell(1).locator(".jp-OutputArea"), "panel-paused.png")
    pause.click()
    expect(pause).to_have_text(re.compile(r"Pause"), timeout=5_000)
    assert lp.wait_bar_above(1, still) > still
    expect(status).to_have_text("Done: 80 processed", timeout=60_000)
    lp.run_cell(2)
    expect(lp.output(2)).to_have_text("80 of 80 processed: 80 ok, 0 failed", timeout=15_000)


FLAKY = """\
import time
from procengine_nb import run

attempts = {}

def flaky(symbol):
    attempts[symbol] = attempts.get(symbol, 0) + 1
    if symbol.endswith("7") and attempts[symbol] == 1:
        raise ConnectionError(f"429 <b>Too Many Requests</b> for {symbol}")
    time.sleep(0.05)
    return symbol

handle = run(flaky, [f"S{i:02d}" for i in range(40)], max_workers=4, name="prices")"""


def test_retry_after_failures_from_the_panel_button(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("retry.ipynb", [
        FLAKY,
        "print(handle.successor.result(timeout=30).summary(), handle.successor.job.display_name)",
    ]))
    lp.run_cell(0, until_done=True)
    status = lp.part(0, "status")
    expect(status).to_have_text("Done with errors: 4 of 40 failed", timeout=30_000)
    panel = lp.panel(0)
    group = panel.locator(".procengine-group").first
    group.locator("summary").click()  # a failure group opens to its latest traceback
    trace = group.locator(".procengine-traceback")
    expect(trace).to_be_visible()
    expect(trace).to_contain_text("ConnectionError: 429 <b>Too Many Requests</b>")
    assert panel.locator("b", has_text="Too Many").count() == 0  # shown, never parsed
    failed = panel.locator(".procengine-bar-failed")
    assert float(failed.evaluate("e => parseFloat(e.style.width)")) == pytest.approx(10.0)
    retry = lp.part(0, "retry")
    expect(retry).to_be_visible()
    expect(retry).to_have_text(re.compile(r"Retry 4 failed"))
    assert not lp.part(0, "pause").is_visible()  # nothing was left unprocessed: no Resume
    lp.assert_contrast(panel, "ended with failures")
    lp.screenshot(lp.cell(0).locator(".jp-OutputArea"), "panel-retry.png")
    retry.click()
    follow = lp.output(0).locator(".procengine-host .procengine-panel")  # the follow-up, in the same place
    expect(follow.locator(".procengine-title")).to_have_text("prices (retry)", timeout=15_000)
    expect(follow.locator(".procengine-status")).to_have_text("Done: 4 processed", timeout=30_000)
    assert lp.output(0).locator(".procengine-panel").count() == 1  # the old panel's parts are gone
    lp.screenshot(lp.cell(0).locator(".jp-OutputArea"), "panel-retried.png")
    lp.run_cell(1)
    expect(lp.output(1)).to_have_text("4 of 4 processed: 4 ok, 0 failed prices (retry)", timeout=15_000)


STALL = """\
import threading
import time
from procengine_nb import run

release = threading.Event()

def fetch(symbol):
    if symbol == "<i>SLOW</i>":
        release.wait(60)
    time.sleep(0.05)
    return symbol

handle = run(fetch, [f"S{i:02d}" for i in range(30)] + ["<i>SLOW</i>"], max_workers=4, chunk_size=1,
             stall_after=0.5, name="prices")"""


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_a_stalled_symbol_is_named_in_the_error_colour(lab_page, make_notebook, lab, theme):
    lab.set_theme(theme == "dark")
    try:
        lp = lab_page
        lp.open(make_notebook(f"stall-{theme}.ipynb", [STALL, "release.set()\nprint(handle.result().summary())"]))
        if theme == "dark":
            expect(lp.page.locator("body")).to_have_attribute("data-jp-theme-light", "false", timeout=30_000)
        lp.run_cell(0, until_done=True)
        stalled = lp.part(0, "stalled")
        expect(stalled).to_have_text(re.compile(r"^\s*stalled: <i>SLOW</i> \(running \d"), timeout=30_000)
        assert lp.panel(0).locator("i", has_text="SLOW").count() == 0
        ratio = lp.assert_contrast(stalled, f"stalled ({theme})")
        colour = stalled.evaluate("e => getComputedStyle(e).color")
        red, green, blue = (int(x) for x in re.findall(r"\d+", colour)[:3])
        assert red > green + 60 and red > blue + 60, colour  # the error colour
        print(f"\nstalled text {colour} on {theme}: contrast {ratio}:1")
        suffix = "" if theme == "light" else "-dark"
        lp.screenshot(lp.cell(0).locator(".jp-OutputArea"), f"panel-stalled{suffix}.png")
        lp.run_cell(1)
        expect(lp.output(1)).to_have_text("31 of 31 processed: 31 ok, 0 failed", timeout=15_000)
    finally:
        lab.set_theme(False)
