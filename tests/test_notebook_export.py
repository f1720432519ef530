"""The quickstart notebook exports to a static HTML page that still tells the outcome of the batch.

``jupyter nbconvert --execute --to html`` runs the notebook in a fresh kernel; the widgets only render
where their JavaScript can be loaded, so the final summary printed from the main thread is what every
reader (GitHub, an offline HTML file) is guaranteed to see.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "notebooks" / "01-quickstart.ipynb"
SUMMARY = "24 of 24 processed: 24 ok, 0 failed"


def _stream_text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )


def test_stored_quickstart_ends_with_the_summary() -> None:
    nb = nbformat.read(QUICKSTART, as_version=4)
    assert SUMMARY in _stream_text(nb), "the stored quickstart no longer prints the expected summary"


def test_executed_html_export_contains_the_final_summary(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("COV_CORE_SOURCE", None)
    cmd = [
        sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
        "--ExecutePreprocessor.timeout=120", "--ExecutePreprocessor.kernel_name=python3",
        "--output-dir", str(tmp_path), "--output", "quickstart", str(QUICKSTART),
    ]
    done = subprocess.run(cmd, cwd=REPO / "notebooks", env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, f"nbconvert failed:\n{done.stderr[-3000:]}"
    page = (tmp_path / "quickstart.html").read_text(encoding="utf-8")
    assert SUMMARY in page
    # the widget state is embedded too, so a page that can load the widget renderer shows the panel
    assert "application/vnd.jupyter.widget-state+json" in page
    assert "procengine-panel" in page
