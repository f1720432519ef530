"""Real-browser fixtures: a JupyterLab server on loopback and Debian chromium driven by Playwright.

- ``lab``: one JupyterLab per test module, on a free 127.0.0.1 port, with a token, serving a temp folder
  (config, runtime and workspace dirs are temp dirs too). Stopped by its own process handle as soon as
  the module is done, so no server or browser idles through the rest of the suite.
- ``notebook_dir``: that folder; ``make_notebook(name, cells)`` writes a notebook into it.
- ``lab_page``: a fresh browser page (own context) wrapped in :class:`LabPage`; the kernels the test
  started are shut down afterwards, so the next test has both cores.

A missing browser is a failure under ``CI=true`` and a skip with a reason elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
TOKEN = uuid.uuid4().hex
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
IDLE = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'


def _find_chromium() -> str | None:
    explicit = os.environ.get("PROCENGINE_CHROMIUM")
    candidates = [explicit] if explicit else [shutil.which("chromium"), "/usr/bin/chromium"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _missing(reason: str) -> None:
    """Fail under CI (a browser test that silently skips proves nothing); skip locally."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = _find_chromium()
    if path is None:
        _missing("chromium not found (apt-get install -y chromium, or set PROCENGINE_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    return path  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab: its base URL, token, folder and a tiny REST client."""

    def __init__(self, base: str, root: Path, log: Path) -> None:
        self.base = base
        self.root = root
        self.log = log

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab-root")


@pytest.fixture(scope="module")
def lab(chromium_path: str, notebook_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    home = tmp_path_factory.mktemp("jupyter-home")
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "cfg"), JUPYTER_RUNTIME_DIR=str(home / "rt"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"), JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(home / "ipython"),
        # the kernel imports the package under test from this checkout
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
    )
    env.pop("COV_CORE_SOURCE", None)  # no coverage plumbing inside the lab's kernels
    settings = home / "cfg" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={notebook_dir}",
        "--allow-root", "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log_path = home / "lab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=notebook_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield Lab(base, notebook_dir, log_path)
    finally:
        proc.terminate()  # only the server this fixture started, by its handle
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def browser(chromium_path: str, lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def write_notebook(folder: Path, name: str, cells: list[str]) -> str:
    """Write a notebook of code ``cells`` (Python 3 kernel) to ``folder/name``; return ``name``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, folder / name)
    return name


@pytest.fixture
def make_notebook(notebook_dir: Path):
    """``make_notebook(name, cells)``: write a notebook of code cells into the lab's folder; return its name."""
    return lambda name, cells: write_notebook(notebook_dir, name, cells)


class LabPage:
    """One notebook open in JupyterLab, with helpers that wait on DOM state (never on fixed sleeps)."""

    def __init__(self, page: Any, lab: Lab, artifacts: Path) -> None:
        self.page = page
        self.lab = lab
        self.artifacts = artifacts

    # -- opening and running ---------------------------------------------------------------
    def open(self, name: str) -> None:
        """Open ``name`` in a unique workspace (no tabs restored from earlier runs); wait for an idle kernel."""
        workspace = f"t{uuid.uuid4().hex[:10]}"
        self.page.goto(f"{self.lab.base}/lab/workspaces/{workspace}/tree/{name}?reset&token={TOKEN}")
        self.page.wait_for_selector(f".jp-Dialog, {IDLE}", timeout=90_000)
        if self.page.locator(".jp-Dialog").count():  # 'Select Kernel': accept the default
            self.page.locator(".jp-Dialog .jp-mod-accept").click()
        self.page.wait_for_selector(IDLE, timeout=90_000)

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea-output")

    def run_cell(self, index: int, *, until_done: bool = False, tries: int = 5) -> None:
        """Select cell ``index`` in command mode and press Shift+Enter, retrying while the keystroke
        was swallowed (JupyterLab is still settling right after the page opens: the prompt stays
        ``[ ]:``, or shows ``[*]:`` and falls back). With ``until_done`` the cell must also finish
        (``[n]:``) before this returns: use it for the first, quick cell of a notebook."""
        from playwright.sync_api import expect

        prompt = self.cell(index).locator(".jp-InputPrompt")
        before = prompt.inner_text().strip()
        wanted = re.compile(r"\[\d+\]") if until_done else re.compile(r"\[(\*|\d+)\]")
        for _ in range(tries):
            prompt.click()
            self.page.keyboard.press("Escape")  # command mode: Shift+Enter runs, never types
            self.page.keyboard.press("Shift+Enter")
            try:
                expect(prompt).not_to_have_text(before, timeout=4000)
                expect(prompt).to_have_text(wanted, timeout=15_000 if until_done else 4000)
                return
            except AssertionError:
                continue
        raise AssertionError(f"cell {index} never ran (prompt: {prompt.inner_text()!r})")

    def run_all(self, tries: int = 3) -> None:
        """Run ▸ Run All Cells from the menu bar; retried while the first code cell does not start."""
        from playwright.sync_api import expect

        prompt = self.page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").first
        for _ in range(tries):
            self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            try:
                expect(prompt).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=5000)
                return
            except AssertionError:
                self.page.keyboard.press("Escape")  # close a menu left open
        raise AssertionError("Run All Cells never started the notebook")

    def wait_cell_done(self, index: int, timeout: float = 60_000) -> None:
        """Wait until cell ``index`` shows an execution count (``[n]:``), i.e. it finished."""
        from playwright.sync_api import expect

        expect(self.cell(index).locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=timeout)

    def interrupt_kernel(self) -> None:
        """The notebook toolbar's ■ button (Interrupt the kernel)."""
        self.page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]').click()

    # -- the panel --------------------------------------------------------------------------
    def panel(self, cell: int) -> Any:
        return self.output(cell).locator(".procengine-panel")

    def part(self, cell: int, name: str) -> Any:
        return self.panel(cell).locator(f".procengine-{name}")

    def bar_percent(self, cell: int) -> float:
        """The bar's width in percent (ipywidgets puts the value only in the inline style)."""
        bar = self.part(cell, "bar").locator(".progress-bar")
        return float(bar.evaluate("e => parseFloat(e.style.width) || 0"))

    def wait_bar_above(self, cell: int, percent: float, timeout: float = 30_000) -> float:
        handle = self.part(cell, "bar").locator(".progress-bar").element_handle(timeout=timeout)
        self.page.wait_for_function("([e, p]) => (parseFloat(e.style.width) || 0) > p", arg=[handle, percent],
                                    timeout=timeout)
        return self.bar_percent(cell)

    def screenshot(self, locator: Any, name: str) -> Path:
        """Screenshot ``locator`` into the artifacts folder (and into $PROCENGINE_SCREENSHOT_DIR when set)."""
        path = self.artifacts / name
        self.page.mouse.move(0, 0)  # no hover toolbars in the picture
        locator.screenshot(path=str(path))
        extra = os.environ.get("PROCENGINE_SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / name)
        return path


@pytest.fixture
def lab_page(browser: Any, lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(30_000)
    wrapper = LabPage(page, lab, tmp_path)
    try:
        yield wrapper
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            try:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print(f"failure screenshot: {tmp_path / 'failure.png'}")
            except Exception as exc:  # the page may be gone; the test's own error matters more
                print(f"no failure screenshot: {exc}")
        context.close()
        lab.shutdown_kernels()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
