"""Saved notebooks tell the truth: what a headless run stores is the panel's final state.

A notebook executed headless (nbclient, ``jupyter nbconvert --execute``, papermill) in which a later cell
waits for the job (``handle.result()``, ``await handle``) must store the panel's final widget state
(counts == total or the cancelled counts, a finished status, Stop disabled) and final text fallbacks;
so must the stored tutorials. These tests read what the saved notebook *says*: the widget-state
metadata (``application/vnd.jupyter.widget-state+json``) and the outputs' ``text/plain``/``text/html``.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "01-quickstart.ipynb"
TUTORIALS = sorted(NOTEBOOKS.glob("*.ipynb"))
SUMMARY = "24 of 24 processed: 24 ok, 0 failed"
STATE_KEY = "application/vnd.jupyter.widget-state+json"
FINAL = re.compile(r"^(Done: |Done with errors: |Cancelled: |Failed: )")

SETUP = """\
import time
from procengine_nb import run

def slow(symbol):
    time.sleep(0.1)
    return symbol

symbols = [f"S{i:02d}" for i in range(20)]"""


def kernel_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("COV_CORE_SOURCE", None)
    return env


def panels(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Every ProgressPanel in the notebook's saved widget state: what a reader of the file sees."""
    state = nb.metadata.get("widgets", {}).get(STATE_KEY, {}).get("state", {})
    found = []
    for model in state.values():
        s = model["state"]
        if "procengine-panel" not in s.get("_dom_classes", []):
            continue
        parts = {}
        for ref in s["children"]:
            child = state[ref.removeprefix("IPY_MODEL_")]["state"]
            parts[child["_dom_classes"][0]] = child
        stop, text = parts["procengine-stop"], parts["procengine-text"]
        # the bar is drawn in the live text: its figures are the progressbar's aria values
        bar = {
            "description": html.unescape(re.search(r'class="procengine-title"><b>([^<]*)<', text["value"]).group(1)),
            "value": int(re.search(r'aria-valuenow="(\d+)"', text["value"]).group(1)),
            "max": int(re.search(r'aria-valuemax="(\d+)"', text["value"]).group(1)),
        }
        status = html.unescape(re.search(r'class="procengine-status">([^<]*)<', text["value"]).group(1))
        # "12 / 20 (60%)", or for a lazy input without total=: "12 done (total unknown)"
        counts = re.search(r'class="procengine-counts">(\d+)(?: / (\d+)| done \(total unknown\))', text["value"])
        total = None if counts.group(2) is None else int(counts.group(2))
        found.append({
            "name": bar["description"], "value": bar["value"], "max": bar["max"], "status": status,
            "counts": (int(counts.group(1)), total), "stop_disabled": stop["disabled"],
            "stop": stop["description"],
        })
    return found


def text_fallbacks(nb: nbformat.NotebookNode) -> list[str]:
    """The text/plain outputs the panels left (what a viewer without the widget renderer shows)."""
    return [
        "".join(out["data"]["text/plain"])
        for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {})
        and "ProgressPanel(" in "".join(out["data"].get("text/plain", ""))
    ]


def assert_final(panel: dict[str, Any], where: str) -> None:
    assert FINAL.match(panel["status"]), f"{where}: stored status {panel['status']!r} is not final ({panel})"
    assert panel["stop_disabled"], f"{where}: Stop is still enabled in the stored state ({panel})"
    done, total = panel["counts"]
    if total is None:  # total unknown (a lazy input stopped early): the bar draws no share, the counts speak
        assert (panel["value"], panel["max"]) == (0, 1), f"{where}: a bar drawn without a total ({panel})"
        assert not panel["status"].startswith("Done"), f"{where}: done, but the total is still unknown ({panel})"
    else:
        assert (panel["value"], panel["max"]) == (done, max(total, 1)), f"{where}: bar and counts disagree ({panel})"
    if panel["status"].startswith("Done"):
        assert done == total, f"{where}: done but {done} of {total}"
    if panel["status"].startswith("Cancelled"):
        processed = f"{done} of " if total is None else f"{done} of {total} processed"
        assert panel["stop"] == "Stopped" and processed in panel["status"]


def notebook(cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    return nb


WAITS = {
    "result": [SETUP, 'handle = run(slow, symbols, max_workers=2, name="later wait")',
               "print(handle.result().summary())"],
    "await": [SETUP, 'handle = run(slow, symbols, max_workers=2, name="later wait")',
              "result = await handle\nprint(result.summary())"],
    "cancel": [SETUP, 'handle = run(slow, symbols, max_workers=2, name="later wait")',
               "time.sleep(0.35)\nhandle.cancel()\nprint(handle.result().cancelled)"],
}


def check_saved(nb: nbformat.NotebookNode, how: str) -> None:
    (panel,) = panels(nb)
    assert panel["name"] == "later wait"
    assert_final(panel, how)
    if how == "cancel":
        assert panel["status"].startswith("Cancelled") and panel["counts"][0] < 20
    else:
        assert panel["status"] == "Done: 20 processed" and panel["counts"] == (20, 20)
    (text,) = text_fallbacks(nb)
    assert text.startswith(f"ProgressPanel(name='later wait'): {panel['status']}"), text
    html_out = next(out["data"]["text/html"] for out in nb.cells[1].outputs if "text/html" in out.get("data", {}))
    assert html.escape(panel["status"]) in html_out


@pytest.mark.parametrize("how", list(WAITS))
def test_nbclient_saves_the_final_state_when_a_later_cell_waits(how, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = notebook(WAITS[how])
    monkeypatch.setenv("PYTHONPATH", kernel_env()["PYTHONPATH"])  # the kernel imports this checkout
    monkeypatch.delenv("COV_CORE_SOURCE", raising=False)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    check_saved(nb, how)


def test_papermill_saves_the_final_state_when_a_later_cell_waits(tmp_path):
    source, output = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(notebook(WAITS["result"]), source)
    code = (
        "import papermill, sys\n"
        "papermill.execute_notebook(sys.argv[1], sys.argv[2], kernel_name='python3', progress_bar=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(source), str(output)], env=kernel_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    check_saved(nbformat.read(output, as_version=4), "papermill")


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_stored_tutorials_show_final_states(path):
    nb = nbformat.read(path, as_version=4)
    shown = sum(1 for _ in text_fallbacks(nb))
    stored = panels(nb)
    assert len(stored) == shown, f"{path.name}: {shown} panels shown, {len(stored)} in the saved widget state"
    for panel in stored:
        assert_final(panel, f"{path.name} / {panel['name']}")
    for text in text_fallbacks(nb):
        status = text.split("): ", 1)[1]
        assert FINAL.match(status), f"{path.name}: stored text fallback is not final: {text!r}"


def test_stored_quickstart_ends_with_the_summary() -> None:
    nb = nbformat.read(QUICKSTART, as_version=4)
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert SUMMARY in text, "the stored quickstart no longer prints the expected summary"


def test_executed_html_export_embeds_the_final_state(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
        "--ExecutePreprocessor.timeout=120", "--ExecutePreprocessor.kernel_name=python3",
        "--output-dir", str(tmp_path), "--output", "quickstart", str(QUICKSTART),
    ]
    done = subprocess.run(cmd, cwd=NOTEBOOKS, env=kernel_env(), capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, f"nbconvert failed:\n{done.stderr[-3000:]}"
    page = (tmp_path / "quickstart.html").read_text(encoding="utf-8")
    assert SUMMARY in page
    match = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">\s*(.*?)\s*</script>', page, re.S)
    assert match, "no widget state embedded in the page"
    state = json.loads(match.group(1))
    (panel,) = panels(nbformat.from_dict({"metadata": {"widgets": {STATE_KEY: state}}, "cells": []}))
    assert_final(panel, "exported page")
    assert panel["status"] == "Done: 24 processed"
