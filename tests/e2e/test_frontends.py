"""The panel in every front-end a user may open: JupyterLab, Notebook 7 and Voilà, light and dark, wide
and narrow — driven in Debian chromium by Playwright.

The same checks everywhere: the bar moves and failures show as they happen, Stop shows the cancelled
state (its latency is printed), the next cell (Voilà: a button, since Voilà runs every cell on page load)
sees the partial result, every text of the panel has a contrast of at least 4.5:1 running and stopped,
and no label is cut nor any item wrapped inside itself. Screenshots go to the test's temp folder and to
``$PROCENGINE_SCREENSHOT_DIR`` when set (``PROCENGINE_SCREENSHOT_DIR=docs/img python -m pytest tests/e2e``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import bar_percent, wait_bar_above

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

try:
    from playwright.sync_api import expect
except ImportError:  # the chromium_path fixture fails (CI) or skips (locally) with the reason
    expect = None  # type: ignore[assignment]

N = 200  # 200 x 0.25 s on 4 workers: about 12.5 s, Stop comes long before (even after a slow Voilà page load)
SETUP = f"""\
import time
from procengine_nb import run

def slow(symbol):
    time.sleep(0.25)
    if symbol.endswith("7"):
        raise ConnectionError("429 <b>Too Many Requests</b>")
    return symbol.lower()

symbols = [f"S{{i:03d}}" for i in range({N})]"""
START = 'handle = run(slow, symbols, max_workers=4, name="prices")'
NEXT_CELL = "print(handle.result(timeout=30).summary())"
CHECK_BUTTON = """\
import ipywidgets as widgets

check = widgets.Button(description="Check result")
seen = widgets.HTML("not checked")
check.add_class("check-result")
seen.add_class("check-output")

def on_check(_):
    seen.value = handle.result(timeout=30).summary()

check.on_click(on_check)
display(widgets.HBox([check, seen]))"""
CANCELLED = re.compile(r"^\s*Cancelled: (\d+) of (\d+) processed")
SHOTS = {"lab": "jupyterlab", "notebook": "notebook7", "voila": "voila"}


@pytest.fixture(params=["light", "dark"])
def theme(request: pytest.FixtureRequest, server: Any) -> Iterator[str]:
    if server.kind != "voila":
        server.set_theme(request.param == "dark")
    yield request.param
    if server.kind != "voila":
        server.set_theme(False)


def _panel(lp: Any) -> Any:
    return lp.page.locator(".procengine-panel").first


def _bar_percent(lp: Any) -> float:
    return bar_percent(_panel(lp))


def _wait_bar_above(lp: Any, percent: float) -> float:
    return wait_bar_above(lp.page, _panel(lp), percent)


def _start(lp: Any, server: Any, theme: str, name: str, write_nb: Any) -> Any:
    """Open a notebook that starts the slow batch; return the locator of the output holding the panel."""
    if server.kind == "voila":
        write_nb(server.root, name, [SETUP, START, CHECK_BUTTON])
        lp.open(name, "&theme=dark" if theme == "dark" else "")
        output = lp.page.locator(".jp-OutputArea-output", has=lp.page.locator(".procengine-panel")).first
    else:
        write_nb(server.root, name, [SETUP, START, NEXT_CELL])
        lp.open(name)
        lp.run_cell(0, until_done=True)
        lp.run_cell(1)
        output = lp.cell(1).locator(".jp-OutputArea")
    if theme == "dark":
        expect(lp.page.locator("body")).to_have_attribute("data-jp-theme-light", "false", timeout=30_000)
    return output


def _stop_and_see_partial(lp: Any, server: Any) -> tuple[float, int]:
    """Click Stop; return the seconds until the cancelled state showed and the processed count, after
    checking that the next cell (Voilà: the check button) sees the same partial result."""
    panel = _panel(lp)
    status = panel.locator(".procengine-status")
    panel.locator(".procengine-stop").click()
    clicked = time.monotonic()
    expect(status).to_have_text(CANCELLED, timeout=10_000)
    took = time.monotonic() - clicked
    match = CANCELLED.match(status.inner_text())
    processed, total = int(match.group(1)), int(match.group(2))
    assert total == N and processed < N
    stop = panel.locator(".procengine-stop")
    expect(stop).to_be_disabled()
    expect(stop).to_have_text(re.compile(r"Stopped"))
    first = _bar_percent(lp)
    lp.page.wait_for_timeout(500)
    assert _bar_percent(lp) == first < 100.0  # the bar stays where the job stopped
    if server.kind == "voila":
        lp.page.locator(".check-result").click()
        seen = lp.page.locator(".check-output")
    else:
        lp.run_cell(2)
        seen = lp.output(2)
    expect(seen).to_contain_text("(cancelled)", timeout=15_000)
    expect(seen).to_contain_text(f"{processed} of {N} processed")
    return took, processed


def test_bar_errors_stop_and_partial_result_in_every_front_end(make_page, server, theme, write_nb):
    lp = make_page(server)
    output = _start(lp, server, theme, f"frontend-{theme}.ipynb", write_nb)
    panel = _panel(lp)
    expect(panel).to_be_visible(timeout=30_000)
    expect(panel.locator(".procengine-title")).to_have_text("prices")
    expect(panel.locator(".procengine-status")).to_have_text(re.compile(r"^\s*Running"), timeout=15_000)
    first = _wait_bar_above(lp, 2.0)
    assert _wait_bar_above(lp, first) > first  # the bar moves
    failures = panel.locator(".procengine-failures")
    expect(failures).to_contain_text(re.compile(r"\d+ x ConnectionError: 429 <b>Too Many Requests</b>"),
                                     timeout=15_000)
    assert panel.locator("b", has_text="Too Many").count() == 0  # shown, never parsed
    running = lp.assert_contrast(panel, f"{server.kind}/{theme} running")
    assert lp.layout_problems(panel) == []
    suffix = "" if theme == "light" else "-dark"
    lp.screenshot(output, f"panel-{SHOTS[server.kind]}{suffix}.png")
    took, processed = _stop_and_see_partial(lp, server)
    stopped = lp.assert_contrast(panel, f"{server.kind}/{theme} stopped")
    assert lp.layout_problems(panel) == []
    lp.screenshot(output, f"panel-{SHOTS[server.kind]}{suffix}-cancelled.png")
    print(f"\n{server.kind} {theme}: cancelled state shown {took:.3f}s after the Stop click "
          f"({processed} of {N} processed); lowest contrast running {running}:1, stopped {stopped}:1")
    assert took < 1.0, f"cancelled state shown {took:.2f}s after the click"


@pytest.mark.parametrize("server", ["lab"], indirect=True)
def test_narrow_output_keeps_items_and_labels_whole(make_page, server, write_nb):
    """A 400 px wide window (JupyterLab's output is then about 300 px): items wrap whole, labels stay whole."""
    lp = make_page(server, width=400, height=900)
    write_nb(server.root, "narrow.ipynb", [SETUP, START, NEXT_CELL])
    lp.open("narrow.ipynb")
    sidebar = lp.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if sidebar.count():  # the file browser takes 250 px of the 400: fold it, as a user would
        sidebar.first.click()
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    output = lp.cell(1).locator(".jp-OutputArea")
    panel = _panel(lp)
    expect(panel.locator(".procengine-status")).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    _wait_bar_above(lp, 2.0)
    expect(panel.locator(".procengine-failures")).to_contain_text("x ConnectionError", timeout=15_000)
    box = panel.bounding_box()
    print(f"\npanel width in a 400 px window: {box['width']:.0f} px")
    assert 200 <= box["width"] <= 340
    assert lp.layout_problems(panel) == []
    lp.screenshot(output, "panel-narrow.png")
    _stop_and_see_partial(lp, server)
    assert lp.layout_problems(panel) == []
    lp.assert_contrast(panel, "narrow stopped")
    lp.screenshot(output, "panel-narrow-cancelled.png")


CONTROL = """\
import time
from procengine_nb import run

attempts = {}

def flaky(symbol):
    attempts[symbol] = attempts.get(symbol, 0) + 1
    time.sleep(0.1)
    if symbol.endswith("7") and attempts[symbol] == 1:
        raise ConnectionError("429")
    return symbol

handle = run(flaky, [f"S{i:03d}" for i in range(400)], max_workers=4, name="prices")"""


def test_pause_continue_and_retry_from_the_panel_in_every_front_end(make_page, server, write_nb):
    """Pause, Continue, then at the end Retry from the panel's button: the follow-up job's panel shows in
    the same output, in JupyterLab, Notebook 7 and Voilà (where the notebook ran on page load)."""
    lp = make_page(server)
    write_nb(server.root, "control.ipynb", [CONTROL])
    lp.open("control.ipynb")
    if server.kind != "voila":
        lp.run_cell(0, until_done=True)
    panel = _panel(lp)
    status = panel.locator(".procengine-status")
    expect(status).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    pause = panel.locator(".procengine-pause")
    pause.click()
    expect(status).to_have_text(re.compile(r"^\s*Paused"), timeout=5_000)
    expect(pause).to_have_text(re.compile(r"Continue"))
    held = _bar_percent(lp)
    lp.page.wait_for_timeout(600)
    assert _bar_percent(lp) <= held + 2.5 and held < 100  # at most the 4 running symbols finish
    pause.click()
    expect(pause).to_have_text(re.compile(r"Pause"), timeout=5_000)
    expect(status).to_have_text("Done with errors: 40 of 400 failed", timeout=60_000)
    retry = panel.locator(".procengine-retry")
    expect(retry).to_have_text(re.compile(r"Retry 40 failed"))
    retry.click()
    follow = lp.page.locator(".procengine-host .procengine-panel")
    expect(follow.locator(".procengine-title")).to_have_text("prices (retry)", timeout=15_000)
    expect(follow.locator(".procengine-status")).to_have_text("Done: 40 processed", timeout=30_000)
    lp.assert_contrast(follow, f"{server.kind}: the follow-up's panel")


@pytest.mark.parametrize("server", ["notebook"], indirect=True)
def test_notebook7_reload_with_the_handle_lost_then_jobs_gives_back_the_live_panel(make_page, server, write_nb):
    """Notebook 7 (JupyterLab: tests/e2e/test_lab_control.py): the page reloaded, the notebook never saved
    and the variable deleted; ``jobs()`` shows the running job's live panel, and its Stop stops it."""
    lp = make_page(server)
    write_nb(server.root, "reload.ipynb", [SETUP, START, "del handle", "from procengine_nb import jobs\njobs()",
                                           "print(jobs()[0].result(timeout=30).summary())"])
    lp.open("reload.ipynb")
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    expect(_panel(lp).locator(".procengine-status")).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    lp.run_cell(2, until_done=True)
    lp.page.reload()
    lp.page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', state="attached",
                              timeout=90_000)
    assert lp.page.locator(".procengine-panel").count() == 0  # nothing of the old output is left
    lp.run_cell(3)
    panel = lp.output(3).locator(".procengine-jobs .procengine-panel").first
    expect(panel.locator(".procengine-title")).to_have_text("prices", timeout=30_000)
    status = panel.locator(".procengine-status")
    expect(status).to_have_text(re.compile(r"^\s*Running"), timeout=15_000)
    first = wait_bar_above(lp.page, panel, 0.0)
    assert wait_bar_above(lp.page, panel, first) > first  # live
    panel.locator(".procengine-stop").click()
    expect(status).to_have_text(CANCELLED, timeout=10_000)
    lp.run_cell(4)
    expect(lp.output(4)).to_contain_text("(cancelled)", timeout=15_000)
