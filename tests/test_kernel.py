"""A real ipykernel (via jupyter_client): the background thread updates the panel after the cell returns,
worker prints land in the cell that started the job, a kernel interrupt during ``handle.result()`` or
``await handle`` cancels the job and leaves no thread, a Stop click reaches the kernel while an async
cell awaits the handle, and an async processor runs through ``run()`` on its own loop while the kernel's
loop runs."""

from __future__ import annotations

import queue
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent

SETUP = """
import threading, time
from procengine_nb import run

def job_threads():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("procengine"))
        if not names:
            break
        time.sleep(0.05)
    return names

def stubborn(symbol):  # ignores the token: cancel must not wait for it
    time.sleep(0.2)
    return symbol
"""


class Kernel:
    """A started kernel and a client that keeps every IOPub message it has seen."""

    def __init__(self) -> None:
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(ROOT), extra_arguments=["--HistoryManager.enabled=False"])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def pump(self, until, timeout: float = 60.0) -> None:
        """Read IOPub until ``until()`` is true (checked after every message)."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for the kernel")
            try:
                self.messages.append(self.kc.get_iopub_msg(timeout=min(left, 0.5)))
            except queue.Empty:
                continue

    def idle(self, msg_id: str) -> bool:
        return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                   and m["parent_header"].get("msg_id") == msg_id for m in self.messages)

    def execute(self, code: str, timeout: float = 60.0, wait: bool = True) -> str:
        # stop_on_error=False: a cell that fails (an interrupted one) must not make the kernel abort the
        # next request ("aborted" reply, no output), which it does when that request arrives while the
        # kernel is still discarding its queue after the error
        msg_id = self.kc.execute(textwrap.dedent(code), stop_on_error=False)
        if wait:
            self.pump(lambda: self.idle(msg_id), timeout)
        return msg_id

    def reply(self, msg_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    def stdout(self, msg_id: str) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id)

    def errors(self, msg_id: str) -> list[str]:
        return [f"{m['content']['ename']}: {m['content']['evalue']}" for m in self.messages
                if m["msg_type"] == "error" and m["parent_header"].get("msg_id") == msg_id]

    def comm_ids(self, css_class: str, after: int = 0) -> list[str]:
        """Comm ids of the widgets opened with ``css_class`` (from message index ``after`` on)."""
        return [m["content"]["comm_id"] for m in self.messages[after:] if m["msg_type"] == "comm_open"
                and css_class in m["content"]["data"]["state"].get("_dom_classes", [])]

    def updates(self, comm_id: str, key: str) -> list[tuple[int, Any]]:
        """(message index, value) of every update of ``key`` sent for ``comm_id``."""
        return [(i, m["content"]["data"]["state"][key]) for i, m in enumerate(self.messages)
                if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
                and key in m["content"]["data"].get("state", {})]

    def bar_values(self, comm_id: str) -> list[tuple[int, int]]:
        """(message index, completed count) of every update of the panel's bar: the live text (comm
        ``comm_id``, class ``procengine-text``) draws it, its ``aria-valuenow`` is the count."""
        found = []
        for index, value in self.updates(comm_id, "value"):
            match = re.search(r'aria-valuenow="(\d+)"', value)
            if match:
                found.append((index, int(match.group(1))))
        return found

    def click(self, comm_id: str) -> None:
        """What the browser sends when the button is clicked."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id,
                                               "data": {"method": "custom", "content": {"event": "click"}}})
        self.kc.shell_channel.send(msg)


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    try:
        k.execute(SETUP)
        yield k
    finally:
        k.close()


def test_background_thread_updates_the_panel_and_worker_prints_stay_in_their_cell(kernel):
    start = len(kernel.messages)
    cell = kernel.execute("""
        gate = threading.Event()
        def work(symbol):
            gate.wait(10)
            print(f"worker-print {symbol}")
            return symbol
        handle = run(work, range(20), max_workers=2, name="kernel-test")
    """)
    ended_at = len(kernel.messages)  # the cell has returned: the job is still waiting on the gate
    assert not kernel.stdout(cell)
    (bar,) = kernel.comm_ids("procengine-text", start)
    other = kernel.execute("gate.set(); time.sleep(1.0); print('other cell')")
    kernel.execute("final = handle.result(timeout=30)")
    values = kernel.bar_values(bar)
    assert values and values[-1][1] == 20
    assert any(index > ended_at for index, _ in values)  # sent from the job thread after the cell ended
    # worker output goes to the cell that called run(), even though another cell was running
    assert kernel.stdout(other) == "other cell\n"
    assert kernel.stdout(cell).count("worker-print") == 20
    check = kernel.execute("print(final.summary(), handle.panel.status.value, repr(handle.panel))")
    assert kernel.stdout(check) == "20 of 20 processed: 20 ok, 0 failed Done: 20 processed " \
                                   "ProgressPanel(name='kernel-test')\n"


def test_interrupt_during_result_cancels_the_job_and_leaves_no_thread(kernel):
    start = len(kernel.messages)
    cell = kernel.execute("handle = run(stubborn, range(1000), max_workers=2, name='interrupted')\n"
                          "handle.result()", wait=False)
    kernel.pump(lambda: any(v > 0 for _, v in kernel.bar_values(kernel.comm_ids("procengine-text", start)[0]))
                if kernel.comm_ids("procengine-text", start) else False)
    kernel.km.interrupt_kernel()
    reply = kernel.reply(cell)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    check = kernel.execute("""
        assert handle.done()
        r = handle.result()
        print(r.cancelled, len(r) + len(r.unprocessed), job_threads(), handle.panel.status.value.split(':')[0])
    """)
    assert kernel.stdout(check) == "True 1000 [] Cancelled\n", kernel.errors(check)


def test_stop_click_is_delivered_while_an_async_cell_awaits_the_handle(kernel):
    start = len(kernel.messages)
    cell = kernel.execute("handle = run(stubborn, range(1000), max_workers=2, name='awaited')\n"
                          "r = await handle\n"
                          "print(r.cancelled, handle.token.reason, job_threads())", wait=False)
    kernel.pump(lambda: bool(kernel.comm_ids("procengine-stop", start)))
    (stop,) = kernel.comm_ids("procengine-stop", start)
    time.sleep(0.5)
    kernel.click(stop)
    kernel.pump(lambda: kernel.idle(cell), timeout=60)
    assert kernel.reply(cell)["status"] == "ok"
    assert kernel.stdout(cell) == "True stopped from the panel []\n"
    assert [v for _, v in kernel.updates(stop, "description")][:1] == ["Stopping…"]


def test_interrupt_during_await_cancels_the_job(kernel):
    start = len(kernel.messages)
    cell = kernel.execute("handle = run(stubborn, range(1000), max_workers=2, name='await-interrupted')\n"
                          "await handle", wait=False)
    kernel.pump(lambda: bool(kernel.comm_ids("procengine-text", start)))
    time.sleep(0.5)
    kernel.km.interrupt_kernel()
    reply = kernel.reply(cell)
    assert reply["status"] == "error", reply
    check = kernel.execute("print(handle.done(), handle.result().cancelled, job_threads())")
    assert kernel.stdout(check) == "True True []\n", (reply["ename"], kernel.stdout(check))


def test_async_processor_via_run_shows_the_panel_prints_in_its_cell_and_is_awaited(kernel):
    # The kernel's own loop is running (and busy with the cells); the batch awaits the coroutines on its
    # own loop. Coroutine prints land in the cell that called run(), even while another cell runs.
    start = len(kernel.messages)
    cell = kernel.execute("""
        import asyncio
        async_gate = threading.Event()
        async def fetch(symbol):
            while not async_gate.is_set():
                await asyncio.sleep(0.01)
            print(f"async-print {symbol}")
            return symbol * 2
        handle = run(fetch, range(30), max_workers=5, name="async-kernel")
        print(handle.job.name, type(handle.panel).__name__)
    """)
    assert kernel.stdout(cell) == "async-kernel ProgressPanel\n", kernel.errors(cell)
    (bar,) = kernel.comm_ids("procengine-text", start)
    other = kernel.execute("async_gate.set(); time.sleep(0.5); print('other cell')")
    waited = kernel.execute("""
        r = await handle
        print(r.summary(), sorted(x.value for x in r) == [2 * s for s in range(30)],
              handle.panel.status.value, job_threads())
    """)
    assert kernel.stdout(waited) == "30 of 30 processed: 30 ok, 0 failed True Done: 30 processed []\n", \
        kernel.errors(waited)
    assert kernel.stdout(other) == "other cell\n"
    assert kernel.stdout(cell).count("async-print") == 30
    assert kernel.bar_values(bar)[-1][1] == 30


def test_stop_click_cancels_running_coroutines_while_a_cell_awaits_the_handle(kernel):
    start = len(kernel.messages)
    cell = kernel.execute("""
        import asyncio
        async def forever(symbol):
            await asyncio.Event().wait()
        handle = run(forever, range(100), max_workers=3, name="async-stop")
        r = await handle
        print(r.cancelled, sorted(x.status.name for x in r), len(r.unprocessed), job_threads())
    """, wait=False)
    kernel.pump(lambda: bool(kernel.comm_ids("procengine-stop", start)))
    (stop,) = kernel.comm_ids("procengine-stop", start)
    time.sleep(0.5)
    kernel.click(stop)
    kernel.pump(lambda: kernel.idle(cell), timeout=60)
    assert kernel.reply(cell)["status"] == "ok", kernel.errors(cell)
    assert kernel.stdout(cell) == "True ['CANCELLED', 'CANCELLED', 'CANCELLED'] 97 []\n", kernel.errors(cell)


def test_interrupt_during_result_cancels_running_coroutines_and_leaves_no_thread(kernel):
    start = len(kernel.messages)
    cell = kernel.execute("""
        import asyncio
        async def slow(symbol):
            await asyncio.sleep(0.05 if symbol < 6 else 3600)
            return symbol
        handle = run(slow, range(50), max_workers=3, name='async-interrupted')
        handle.result()
    """, wait=False)
    kernel.pump(lambda: any(v >= 6 for _, v in kernel.bar_values(kernel.comm_ids("procengine-text", start)[0]))
                if kernel.comm_ids("procengine-text", start) else False)
    kernel.km.interrupt_kernel()
    reply = kernel.reply(cell)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    check = kernel.execute("""
        r = handle.result()
        print(r.cancelled, len(r) + len(r.unprocessed), sorted({x.status.name for x in r}), job_threads())
    """)
    assert kernel.stdout(check) == "True 50 ['CANCELLED', 'SUCCESS'] []\n", kernel.errors(check)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


def test_lone_surrogates_in_symbols_names_and_messages_show_as_replacement_characters(kernel):
    """A lone surrogate ('\\ud800') cannot be encoded into a Jupyter message: as a symbol, a job name, an
    exception message and a callback's error it must show as U+FFFD, and the job must run."""
    start = len(kernel.messages)
    cell = kernel.execute(r"""
        def surrogate_work(symbol):
            if symbol.startswith("bad"):
                raise ValueError("broken \ud800 message")
            return symbol

        def surrogate_callback(progress):
            raise RuntimeError("callback \udfff failed")

        handle = run(surrogate_work, ["bad\ud800", "ok\ud801", "fine"], name="job \ud800 name",
                     progress_callback=surrogate_callback, max_workers=2)
        surrogate_result = handle.result(timeout=30)
        print(surrogate_result.summary(), "|", handle.panel.status.value, "|", ascii(repr(handle)))
        handle
    """)
    reply_errors = kernel.errors(cell)
    assert not reply_errors, reply_errors
    out = kernel.stdout(cell)
    assert "3 of 3 processed: 2 ok, 1 failed | Done with errors: 1 of 3 failed | " in out
    assert "\\ufffd" in out  # the handle's repr shows the job name with a replacement character
    # the panel's widget state and the cell's outputs carry replacement characters, never a surrogate
    texts = [str(m["content"]) for m in kernel.messages[start:]]
    assert any("\ufffd" in t and "job" in t for t in texts)
    assert any("broken \ufffd message" in t for t in texts), "the failure is shown with U+FFFD"
    assert "callback \ufffd failed" in out  # the callback's error was logged, encodable


def test_jobs_gives_back_a_running_job_whose_variable_is_gone_with_its_live_panel_and_stop(kernel):
    """What a page reload with the handle lost comes to on the kernel's side: ``jobs()`` displays one widget
    holding the same live panel (the same models, so the same Stop), and a click on it stops the job."""
    start = len(kernel.messages)
    kernel.execute("handle = run(stubborn, range(1000), max_workers=2, name='lost')\ndel handle")
    (panel_box,) = kernel.comm_ids("procengine-panel", start)
    (stop,) = kernel.comm_ids("procengine-stop", start)
    shown = kernel.execute("from procengine_nb import jobs\njobs()")
    views = [m["content"]["data"] for m in kernel.messages
             if m["msg_type"] in ("display_data", "execute_result") and m["parent_header"].get("msg_id") == shown]
    (view,) = views
    # the ended jobs of the earlier tests are listed too
    assert re.match(r"jobs: 1 running, \d+ ended\n  lost: ", view["text/plain"]), view["text/plain"]
    (container,) = kernel.comm_ids("procengine-jobs", start)
    assert view["application/vnd.jupyter.widget-view+json"]["model_id"] == container
    state = next(m["content"]["data"]["state"] for m in kernel.messages
                 if m["msg_type"] == "comm_open" and m["content"]["comm_id"] == container)
    assert state["children"][0] == f"IPY_MODEL_{panel_box}"  # the panel run() displayed, not a copy
    kernel.click(stop)
    check = kernel.execute("""
        r = jobs()[0].result(timeout=30)
        print(r.cancelled, jobs()[0].token.reason, job_threads())
    """)
    assert kernel.stdout(check) == "True stopped from the panel []\n", kernel.errors(check)
