"""The progress panel as a user sees it: JupyterLab in Debian chromium, driven by Playwright.

Every test writes its own small notebook that uses only the public API (``procengine_nb.run``), opens it
in a fresh workspace, runs cells with Shift+Enter and waits on the panel's DOM (the panel's parts carry
stable ``procengine-*`` CSS classes). Screenshots of the running and the cancelled panel are saved in the
test's temp folder, and also in ``$PROCENGINE_SCREENSHOT_DIR`` when set (that is how ``docs/img/`` is made:
``PROCENGINE_SCREENSHOT_DIR=docs/img python -m pytest tests/e2e``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

try:
    from playwright.sync_api import expect
except ImportError:  # the chromium_path fixture fails (CI) or skips (locally) with the reason
    expect = None  # type: ignore[assignment]

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "01-quickstart.ipynb"
N = 200  # symbols in the slow batch: 200 x 0.15 s on 4 workers is about 7.5 s

SETUP = f"""\
import time
from procengine_nb import run

def slow(symbol):
    time.sleep(0.15)
    return symbol.lower()

symbols = [f"S{{i:03d}}" for i in range({N})]"""

CANCELLED = re.compile(r"^\s*Cancelled: (\d+) of (\d+) processed")


def _cancelled_counts(text: str) -> tuple[int, int]:
    match = CANCELLED.match(text)
    assert match, f"not a cancelled status: {text!r}"
    return int(match.group(1)), int(match.group(2))


def _assert_bar_still(lp, cell: int, seconds: float = 0.6) -> None:
    """The bar does not move any more (a negative check needs a short observation window)."""
    first = lp.bar_percent(cell)
    lp.page.wait_for_timeout(seconds * 1000)
    assert lp.bar_percent(cell) == first


def _click_stop_and_time_cancelled(lp, cell: int) -> tuple[float, str]:
    stop = lp.part(cell, "stop")
    status = lp.part(cell, "status")
    stop.click()
    clicked = time.monotonic()
    expect(status).to_have_text(re.compile(r"^\s*Cancelled"), timeout=10_000)
    return time.monotonic() - clicked, status.inner_text()


def test_bar_counts_and_eta_move_then_done(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("progress.ipynb", [
        SETUP.replace(f"range({N})", "range(100)"),
        'handle = run(slow, symbols, max_workers=4, name="prices")',
        "print(handle.result(timeout=60).summary())",
    ]))
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    expect(lp.panel(1)).to_be_visible(timeout=30_000)
    expect(lp.part(1, "title")).to_contain_text("prices")
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Running"), timeout=15_000)
    first = lp.wait_bar_above(1, 0.0)
    counts = lp.part(1, "counts")
    eta = lp.part(1, "eta")
    counts_before, eta_before = counts.inner_text(), eta.inner_text()
    expect(counts).not_to_have_text(counts_before, timeout=10_000)
    expect(eta).not_to_have_text(eta_before, timeout=10_000)
    assert lp.wait_bar_above(1, first) > first
    lp.screenshot(lp.cell(1), "panel-running.png")
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Done"), timeout=60_000)
    assert lp.bar_percent(1) == pytest.approx(100.0)
    expect(counts).to_contain_text("100")
    expect(lp.part(1, "stop")).to_be_disabled()
    lp.run_cell(2)
    expect(lp.output(2)).to_have_text("100 of 100 processed: 100 ok, 0 failed", timeout=15_000)


def test_stop_cancels_within_a_second_and_frees_the_kernel(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("stop.ipynb", [
        SETUP,
        'handle = run(slow, symbols, max_workers=4, name="prices")',
        "print(handle.result(timeout=30).summary())",
        "print('kernel is free:', 6 * 7)",
    ]))
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    lp.wait_bar_above(1, 5.0)
    took, text = _click_stop_and_time_cancelled(lp, 1)
    processed, total = _cancelled_counts(text)
    assert total == N and processed < N, text
    print(f"cancelled state shown {took:.3f}s after the Stop click")
    assert took < 1.0, f"cancelled state shown {took:.2f}s after the click"
    expect(lp.part(1, "stop")).to_be_disabled()
    _assert_bar_still(lp, 1)
    assert lp.bar_percent(1) < 100.0
    lp.screenshot(lp.cell(1), "panel-cancelled.png")
    lp.run_cell(2)
    expect(lp.output(2)).to_contain_text("(cancelled)", timeout=15_000)
    expect(lp.output(2)).to_contain_text(f"{processed} of {N} processed")
    lp.run_cell(3)
    expect(lp.output(3)).to_have_text("kernel is free: 42", timeout=15_000)


HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def test_failures_show_count_and_escaped_error_table(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("errors.ipynb", [
        f"""\
from procengine_nb import run

HOSTILE = {HOSTILE!r}

symbols = [f"<b>S{{i:02d}}</b>" if i == 10 else f"S{{i:02d}}" for i in range(20)]
BAD = {{symbols[0], symbols[5], symbols[10], symbols[15]}}

def flaky(symbol):
    if symbol in BAD:
        raise ValueError(HOSTILE + " for " + symbol)
    return symbol

handle = run(flaky, symbols, max_workers=2)""",
        "print(handle.result(timeout=30).summary())",
    ]))
    lp.run_cell(0, until_done=True)
    status = lp.part(0, "status")
    expect(status).to_have_text(re.compile(r"^\s*Done with errors"), timeout=30_000)
    expect(lp.part(0, "errors")).to_contain_text("4")  # S00, S05, <b>S10</b>, S15
    table = lp.part(0, "error-table")
    expect(table).to_be_visible()
    table.locator("summary").click()  # the table is a collapsed <details>: open it as a user would
    expect(table.locator("table")).to_be_visible()
    expect(table).to_contain_text("<script>window.__pwned = 1</script>")
    expect(table).to_contain_text('<img src=x onerror="window.__pwned = 2">')
    expect(table).to_contain_text("<b>S10</b>")
    panel = lp.panel(0)
    assert panel.locator("script").count() == 0
    assert panel.locator("img").count() == 0
    assert panel.locator("b", has_text="S10").count() == 0  # the panel's own <b> title is fine
    assert lp.page.evaluate("() => window.__pwned") is None
    lp.screenshot(lp.cell(0).locator(".jp-OutputArea"), "panel-errors.png")
    lp.run_cell(1)
    expect(lp.output(1)).to_have_text("20 of 20 processed: 16 ok, 4 failed", timeout=15_000)


def test_stop_reaches_an_async_cell_awaiting_the_handle(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("await.ipynb", [
        SETUP,
        "handle = run(slow, symbols, max_workers=4)\nresult = await handle\nprint(result.summary())",
        "print('after await:', handle.done(), result.cancelled)",
    ]))
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    lp.wait_bar_above(1, 5.0)
    took, text = _click_stop_and_time_cancelled(lp, 1)  # the cell is still busy awaiting
    processed, total = _cancelled_counts(text)
    assert total == N and processed < N, text
    print(f"cancelled state shown {took:.3f}s after the Stop click")
    assert took < 1.0, f"cancelled state shown {took:.2f}s after the click"
    expect(lp.output(1).last).to_contain_text("(cancelled)", timeout=15_000)
    lp.wait_cell_done(1)
    lp.run_cell(2)
    expect(lp.output(2)).to_have_text("after await: True True", timeout=15_000)


def test_kernel_interrupt_during_result_cancels_the_job(lab_page, make_notebook):
    lp = lab_page
    lp.open(make_notebook("interrupt.ipynb", [
        SETUP,
        "handle = run(slow, symbols, max_workers=4)\nhandle.result()",
        "print(handle.done(), handle.result().cancelled, handle.cancel_reason)",
    ]))
    lp.run_cell(0, until_done=True)
    lp.run_cell(1)
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Running"), timeout=30_000)
    lp.wait_bar_above(1, 5.0)
    lp.interrupt_kernel()
    traceback = lp.cell(1).locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    expect(traceback).to_contain_text("KeyboardInterrupt", timeout=10_000)
    expect(lp.part(1, "status")).to_have_text(re.compile(r"^\s*Cancelled"), timeout=5_000)
    processed, total = _cancelled_counts(lp.part(1, "status").inner_text())
    assert total == N and processed < N
    _assert_bar_still(lp, 1)
    lp.run_cell(2)
    expect(lp.output(2)).to_have_text("True True interrupted while waiting for the result", timeout=15_000)


def test_quickstart_notebook_runs_top_to_bottom_in_the_lab(lab_page, notebook_dir):
    """The shipped quickstart, stripped of its stored outputs, run as a user would: Run All Cells."""
    nb = nbformat.read(QUICKSTART, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, notebook_dir / "quickstart.ipynb")
    lp = lab_page
    lp.open("quickstart.ipynb")
    lp.run_all()
    code_cells = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    panel_cell = next(i for i, cell in enumerate(nb.cells) if "run(" in cell.source and cell.cell_type == "code")
    lp.wait_cell_done(code_cells[-1])
    expect(lp.part(panel_cell, "status")).to_have_text("Done: 24 processed")
    assert lp.bar_percent(panel_cell) == pytest.approx(100.0)
    page_text = lp.page.locator(".jp-Notebook").inner_text()
    assert "24 of 24 processed: 24 ok, 0 failed" in page_text
    assert "prices: Done: 24 processed" in page_text
    stderr = ".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    assert lp.page.locator(stderr).count() == 0  # no traceback, no warning
