"""Real-browser fixtures: Jupyter servers on loopback and Debian chromium driven by Playwright.

- ``lab``: one JupyterLab per test module, on a free 127.0.0.1 port, with a token, serving a temp folder
  (config, runtime and workspace dirs are temp dirs too). Stopped by its own process handle as soon as
  the module is done, so no server or browser idles through the rest of the suite.
- ``server``: the same for each front-end in turn (JupyterLab, Notebook 7, Voilà); ``make_page(server)``
  opens a page on it (any viewport), ``server.set_theme(dark)`` switches the JupyterLab theme setting.
- ``notebook_dir``: that folder; ``make_notebook(name, cells)`` writes a notebook into it.
- ``lab_page``: a fresh browser page (own context) wrapped in :class:`LabPage`; the kernels the test
  started are shut down afterwards, so the next test has both cores.

A missing browser is a failure under ``CI=true`` and a skip with a reason elsewhere.
"""

from __future__ import annotations

import contextlib
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


class Server:
    """A running Jupyter server (JupyterLab, Notebook 7 or Voilà): its base URL, folders and a tiny REST client."""

    def __init__(self, kind: str, base: str, root: Path, home: Path, log: Path) -> None:
        self.kind = kind
        self.base = base
        self.root = root
        self.home = home
        self.log = log

    def url(self, name: str) -> str:
        """Where the notebook ``name`` opens in this front-end."""
        if self.kind == "lab":  # a unique workspace: no tabs restored from earlier runs
            return f"{self.base}/lab/workspaces/t{uuid.uuid4().hex[:10]}/tree/{name}?reset&token={TOKEN}"
        if self.kind == "notebook":
            return f"{self.base}/notebooks/{name}?token={TOKEN}"
        return f"{self.base}/voila/render/{name}?token={TOKEN}"

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        if self.kind == "voila":  # Voilà ends a page's kernel when the page goes away
            return
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def set_theme(self, dark: bool) -> None:
        """JupyterLab / Notebook 7 user setting read when a page opens (Voilà: ``?theme=dark`` instead)."""
        path = self.home / "cfg" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        (path / "themes.jupyterlab-settings").write_text(
            json.dumps({"theme": "JupyterLab Dark" if dark else "JupyterLab Light"}))


Lab = Server  # the name the JupyterLab tests use


@contextlib.contextmanager
def start_server(kind: str, root: Path, home: Path) -> Iterator[Server]:
    """Start ``kind`` (lab, notebook or voila) on a free loopback port with a token, serving ``root``; stop
    it (by its own process handle) on exit."""
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "cfg"), JUPYTER_RUNTIME_DIR=str(home / "rt"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"), JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(home / "ipython"),
        # the kernel imports the package under test from this checkout
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
    )
    env.pop("COV_CORE_SOURCE", None)  # no coverage plumbing inside the server's kernels
    settings = home / "cfg" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    if kind == "voila":
        cmd = [
            sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--Voila.port_retries=0", f"--token={TOKEN}", f"--Voila.root_dir={root}",
            "--VoilaConfiguration.allow_theme_override=YES", "--show_tracebacks=True",
        ]
        ready = f"/?token={TOKEN}"
    else:
        cmd = [
            sys.executable, "-m", "jupyterlab" if kind == "lab" else "notebook", "--no-browser", f"--port={port}",
            "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}", "--allow-root",
        ]
        if kind == "lab":
            cmd += ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        ready = f"/api/status?token={TOKEN}"
    log_path = home / f"{kind}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}{ready}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield Server(kind, base, root, home, log_path)
    finally:
        proc.terminate()  # only the server this fixture started, by its handle
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab-root")


@pytest.fixture(scope="module")
def lab(chromium_path: str, notebook_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server("lab", notebook_dir, tmp_path_factory.mktemp("jupyter-home")) as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
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
    def open(self, name: str, query: str = "") -> None:
        """Open ``name`` (JupyterLab: in a unique workspace, no tabs restored from earlier runs); wait for an
        idle kernel (Voilà: for the rendered page, which Voilà shows once every cell ran)."""
        self.page.goto(self.lab.url(name) + query)
        if self.lab.kind == "voila":
            self.page.wait_for_selector(".jp-OutputArea-output, .voila-error, .jp-RenderedText", timeout=90_000)
            return
        self.page.wait_for_selector(f".jp-Dialog, {IDLE}", state="attached", timeout=90_000)
        if self.page.locator(".jp-Dialog").count():  # 'Select Kernel': accept the default
            self.page.locator(".jp-Dialog .jp-mod-accept").click()
        self.page.wait_for_selector(IDLE, state="attached", timeout=90_000)  # hidden in a narrow window

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
        """A part of the panel by its stable class (``title``: the job name beside the bar)."""
        return self.panel(cell).locator(f".procengine-{name}")

    def contrast(self, locator: Any) -> list[dict[str, Any]]:
        """Every visible text under ``locator``: its WCAG contrast ratio against what is drawn behind it."""
        return locator.evaluate(CONTRAST_JS)

    def assert_contrast(self, locator: Any, where: str, minimum: float = 4.5) -> float:
        texts = self.contrast(locator)
        assert texts, f"{where}: no text found"
        low = [t for t in texts if t["ratio"] < minimum]
        assert not low, f"{where}: text under {minimum}:1: {low}"
        return min(t["ratio"] for t in texts)

    def layout_problems(self, locator: Any) -> list[str]:
        """Texts of the panel that are cut (ellipsis / clipped) or whose items wrap inside themselves."""
        return locator.evaluate(LAYOUT_JS)

    def bar_percent(self, cell: int) -> float:
        """The bar's completed share in percent (done + failed), from its ``aria-valuenow``/``aria-valuemax``."""
        return bar_percent(self.panel(cell))

    def wait_bar_above(self, cell: int, percent: float, timeout: float = 30_000) -> float:
        return wait_bar_above(self.page, self.panel(cell), percent, timeout)

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


# The panel's bar is HTML re-rendered with the live text: read it through the panel (a stable element).
BAR_JS = """(root) => {
  const bar = root.querySelector(".procengine-bar");
  if (!bar) return -1;
  return 100 * Number(bar.getAttribute("aria-valuenow")) / Math.max(1, Number(bar.getAttribute("aria-valuemax")));
}"""


def bar_percent(panel: Any) -> float:
    """The completed share the bar of ``panel`` (a locator) draws, in percent (-1: no bar yet)."""
    return float(panel.first.evaluate(BAR_JS))


def wait_bar_above(page: Any, panel: Any, percent: float, timeout: float = 30_000) -> float:
    """Wait until the bar of ``panel`` draws more than ``percent``; return what it draws then."""
    root = panel.first.element_handle(timeout=timeout)
    page.wait_for_function(f"([root, p]) => ({BAR_JS})(root) > p", arg=[root, percent], timeout=timeout)
    return bar_percent(panel)


@contextlib.contextmanager
def open_page(browser: Any, server: Server, tmp_path: Path, request: pytest.FixtureRequest, *,
              width: int = 1280, height: int = 900) -> Iterator[LabPage]:
    """A fresh browser page (own context) on ``server``; on failure a full-page screenshot; the kernels
    started meanwhile are shut down afterwards, so the next test has both cores."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(30_000)
    wrapper = LabPage(page, server, tmp_path)
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
        server.shutdown_kernels()


@pytest.fixture
def make_page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``make_page(server, width=..., height=...)``: a fresh page on ``server`` (see :func:`open_page`)."""
    with contextlib.ExitStack() as stack:
        yield lambda server, **size: stack.enter_context(open_page(browser, server, tmp_path, request, **size))


@pytest.fixture(scope="module", params=["lab", "notebook", "voila"])
def server(request: pytest.FixtureRequest, chromium_path: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each front-end in turn (module scope: one server per front-end for the whole module)."""
    root = tmp_path_factory.mktemp(f"{request.param}-root")
    with start_server(request.param, root, tmp_path_factory.mktemp(f"{request.param}-home")) as running:
        yield running


@pytest.fixture
def write_nb() -> Any:
    """``write_nb(folder, name, cells)``: see :func:`write_notebook`."""
    return write_notebook


@pytest.fixture
def lab_page(browser: Any, lab: Server, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabPage]:
    with open_page(browser, lab, tmp_path, request) as page:
        yield page


# The WCAG 2 contrast ratio of every visible text node under an element: its colour composited over the
# backgrounds painted behind it (all ancestors'), with the opacity of translucent ancestors applied to both.
CONTRAST_JS = """
(root) => {
  const parse = (c) => {
    const m = c && c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom, alpha) => [0, 1, 2].map(i => top[i] * alpha + bottom[i] * (1 - alpha));
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const drawn = (el) => {  // [background behind el's text, background behind el's translucent group, opacity]
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    let bg = [255, 255, 255], outer = null, opacity = 1;
    for (const e of chain) {
      const cs = getComputedStyle(e);
      const o = parseFloat(cs.opacity);
      if (o < 1 && outer === null) outer = bg.slice();
      opacity *= o;
      const c = parse(cs.backgroundColor);
      if (c && c[3] > 0) bg = over(c, bg, c[3]);
    }
    return [bg, outer, opacity];
  };
  const out = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || el.closest("style, script")) continue;
    const cs = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    if (cs.visibility === "hidden" || cs.display === "none" || box.width === 0 || box.height === 0) continue;
    let [bg, outer, opacity] = drawn(el);
    const c = parse(cs.color);
    let fg = over(c, bg, c[3]);
    if (outer !== null) { fg = over(fg, outer, opacity); bg = over(bg, outer, opacity); }
    const [a, b] = [lum(fg), lum(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    out.push({text: text.slice(0, 40), ratio: Math.round(ratio * 100) / 100,
              color: fg.map(Math.round).join(","), background: bg.map(Math.round).join(",")});
  }
  return out;
}
"""

# Layout problems of the panel in a narrow output: a label cut short (text wider than its box: an
# ellipsis or clipping), a stat item broken over two lines ("errors:" above "0"), the status line
# spread over several lines although it would fit on one.
LAYOUT_JS = """
(root) => {
  const problems = [];
  const cut = (el, what) => {
    if (el && el.scrollWidth > el.clientWidth + 1) problems.push(`${what} cut: ${el.textContent.trim()}`);
  };
  root.querySelectorAll(".procengine-panel > .jupyter-button:not(.procengine-hidden), .procengine-title")
    .forEach(e => cut(e, "label"));
  const lines = (el) => {
    const r = document.createRange(); r.selectNodeContents(el);
    return new Set(Array.from(r.getClientRects()).map(x => Math.round(x.top))).size;
  };
  root.querySelectorAll(".procengine-line > span").forEach(e => {
    if (lines(e) > 1) problems.push(`item wraps inside itself: ${e.textContent.trim()}`);
  });
  const right = root.getBoundingClientRect().right;
  root.querySelectorAll(".procengine-text *, .procengine-failures-text *, .procengine-panel > .jupyter-button")
    .forEach(e => {
    if (e.tagName !== "STYLE" && e.getBoundingClientRect().right > right + 1)
      problems.push(`overflows the panel: ${e.textContent.trim().slice(0, 60)}`);
  });
  const status = root.querySelector(".procengine-status");
  if (status) {
    const probe = status.cloneNode(true);
    probe.style.cssText = "position:absolute;visibility:hidden;white-space:nowrap";
    document.body.appendChild(probe);
    const needed = probe.getBoundingClientRect().width;
    probe.remove();
    if (needed <= root.getBoundingClientRect().width && lines(status) > 1)
      problems.push(`status on ${lines(status)} lines though it fits on one: ${status.textContent.trim()}`);
  }
  return problems;
}
"""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
