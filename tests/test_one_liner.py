"""run(): engine + background job + panel, shown in a kernel or as a terminal line; the demo CLI."""

from __future__ import annotations

import contextvars
import signal
import subprocess
import sys
import time

import pytest

import procengine_nb
from procengine_nb import CancellationToken, ProcessingJob, ProgressPanel, run
from procengine_nb import one_liner as runner_module
from procengine_nb.__main__ import demo_processor, main


def test_run_outside_jupyter_builds_a_panel_and_writes_a_terminal_line(capsys, no_thread_leak):
    seen = []
    handle = run(lambda s: s * 2, range(20), name="double", progress_callback=seen.append, max_workers=3)
    result = handle.result(timeout=30)
    assert sorted(r.value for r in result) == [2 * i for i in range(20)]
    assert isinstance(handle.panel, ProgressPanel) and repr(handle.panel) == "ProgressPanel(name='double')"
    assert handle.panel.status.value == "Done: 20 processed"
    assert len(seen) == 21 and seen[-1].finished  # the user's callback: every symbol plus the end
    assert capsys.readouterr().err.splitlines()[-1] == "double: Done: 20 processed"
    assert procengine_nb.run is run


def test_display_false_shows_nothing_and_takes_a_job_and_a_token(capsys):
    token = CancellationToken()
    token.cancel()
    handle = run(str, ProcessingJob(["a", "b"], name="j"), cancellation_token=token, display=False)
    result = handle.result(timeout=30)
    assert result.cancelled and list(result.unprocessed) == ["a", "b"]
    assert handle.panel.status.value.startswith("Cancelled: 0 of 2 processed, 2 not processed")
    assert capsys.readouterr().err == ""


def test_under_a_kernel_the_panel_is_displayed_and_workers_see_the_callers_context(monkeypatch, capsys):
    shown = []
    monkeypatch.setattr(runner_module, "in_jupyter_kernel", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    parent = contextvars.ContextVar("parent_header")  # what ipykernel routes output with
    parent.set("cell-7")
    seen = set()

    def processor(symbol, cancellation_token):  # the token parameter survives the wrapper
        seen.add((parent.get("<none>"), cancellation_token.is_cancelled))
        return symbol

    handle = run(processor, range(30), max_workers=4)
    handle.result(timeout=30)
    assert shown == [handle.panel] and capsys.readouterr().err == ""
    assert seen == {("cell-7", False)}


def test_a_process_backend_processor_is_not_wrapped(monkeypatch):
    monkeypatch.setattr(runner_module, "in_jupyter_kernel", lambda: True)
    assert runner_module._runs_in_threads({})
    assert not runner_module._runs_in_threads({"backend": "processes"})
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert runner_module._runs_in_threads({"executor": pool})
    assert not runner_module._runs_in_threads({"executor": ProcessPoolExecutor.__new__(ProcessPoolExecutor)})


def test_in_jupyter_kernel_detection(monkeypatch):
    assert not runner_module.in_jupyter_kernel()  # plain pytest

    class Shell:
        kernel = object()

    class FakeIPython:
        @staticmethod
        def get_ipython():
            return Shell()

    monkeypatch.setitem(sys.modules, "IPython", FakeIPython)
    assert runner_module.in_jupyter_kernel()
    Shell.kernel = None
    assert not runner_module.in_jupyter_kernel()


def test_bad_arguments():
    with pytest.raises(TypeError, match="processor"):
        run(3, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="symbols"):
        run(str, "AAPL")
    with pytest.raises(TypeError, match="name"):
        run(str, [1], name=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="display"):
        run(str, [1], display="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        run(str, ProcessingJob([1], name="a"), name="b")
    with pytest.raises(ValueError, match="max_workers"):
        run(str, [1], max_workers=0)


# -- the demo command line -------------------------------------------------------------------
def test_demo_processor_is_deterministic_with_a_seed():
    token = CancellationToken()
    outcomes = []
    for _ in range(2):
        process = demo_processor(0.3, 0.0, seed=5)
        run_ = []
        for i in range(40):
            try:
                run_.append(process(f"S{i}", cancellation_token=token))
            except ValueError:
                run_.append("failed")
        outcomes.append(run_)
    assert outcomes[0] == outcomes[1] and 0 < outcomes[0].count("failed") < 40


def test_main_runs_a_demo_batch(capsys, no_thread_leak):
    assert main(["demo", "--symbols", "30", "--delay-ms", "0", "--workers", "2", "--seed", "1",
                 "--fail-rate", "0.5"]) == 0
    first, err = capsys.readouterr()
    assert main(["demo", "--symbols", "30", "--delay-ms", "0", "--workers", "2", "--seed", "1",
                 "--fail-rate", "0.5"]) == 0
    assert capsys.readouterr().out == first and first.startswith("30 of 30 processed: ")
    assert "demo: Done with errors: " in err


def test_no_command_runs_the_demo_and_options_alone_go_to_it(capsys, no_thread_leak, monkeypatch):
    """``procengine-demo`` with no argument runs the demo (it used to exit 2 asking for a command)."""
    assert main(["--symbols", "5", "--delay-ms", "0", "--seed", "1", "--fail-rate", "0"]) == 0
    assert capsys.readouterr().out.startswith("5 of 5 processed: 5 ok")
    monkeypatch.setattr(sys, "argv", ["procengine-demo"])
    monkeypatch.setattr("procengine_nb.__main__.demo_processor", lambda *a: str.upper)
    assert main() == 0
    assert capsys.readouterr().out.startswith("200 of 200 processed: 200 ok")


@pytest.mark.parametrize("bad", [["demo", "--fail-rate", "2"], ["demo", "--workers", "0"], ["nothing"]])
def test_main_refuses_bad_arguments(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(bad)
    assert exit_info.value.code == 2


def test_ctrl_c_in_the_demo_exits_130_with_the_partial_summary(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "procengine_nb", "demo", "--symbols", "100000", "--delay-ms", "50",
         "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stderr.readline()  # the first progress line: the batch is running
        assert first.startswith("demo: ")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "demo: Cancelled: " in err and "not processed (cancelled)" in err  # the partial summary
    assert out == "" or "not processed (cancelled)" in out

