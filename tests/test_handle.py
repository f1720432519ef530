"""JobHandle: background start, result, await, views, interrupts, no leftover threads."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time

import pytest

from procengine_nb import BatchResult, CancellationToken, JobHandle, ProcessingEngine


class RecordingView:
    def __init__(self) -> None:
        self.updates = []
        self.finished = []

    def update(self, progress) -> None:
        self.updates.append(progress)

    def finish(self, result, error) -> None:
        self.finished.append((result, error))


def test_start_returns_at_once_and_result_waits(no_thread_leak):
    release = threading.Event()

    def processor(n: int) -> int:
        release.wait(10)
        return n

    handle = ProcessingEngine(processor, max_workers=2).start(range(4))
    assert isinstance(handle, JobHandle)
    assert not handle.done()
    assert "running" in repr(handle)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.01)
    assert handle.wait(0.01) is False
    release.set()
    result = handle.result(timeout=10)
    assert handle.done() and handle.wait() is True
    assert sorted(r.value for r in result) == [0, 1, 2, 3]
    assert handle.progress.finished and handle.progress.completed_symbols == 4
    assert "done" in repr(handle)


def test_handle_cancel_returns_partial_result(no_thread_leak):
    started = threading.Event()
    release = threading.Event()

    def processor(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    handle = ProcessingEngine(processor, max_workers=1, chunk_size=1).start(range(10))
    started.wait(10)
    deadline = time.monotonic() + 10
    inflight = handle._batch.window.inflight
    while len(inflight) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # the loop records a task just after submitting it
    # the window holds two tasks, one running and one queued: only the running one is shown as running
    assert sorted(task.start for task in inflight.copy().values()) == [0, 1]
    assert handle.running_symbols() == [0]
    assert handle.running_symbols(limit=0) == []
    assert handle.cancel() is True
    assert handle.cancel() is False
    result = handle.result(timeout=10)
    assert result.cancelled and result.cancel_reason == "cancelled by the user"
    assert handle.token.is_cancelled and handle.cancel_reason == "cancelled by the user"
    assert len(result) + len(result.unprocessed) == 10
    release.set()


def test_stopping_flag_while_cancel_is_in_progress():
    handle = ProcessingEngine(lambda n: n).start([])
    handle.result(10)
    assert handle.stopping is False


def test_user_token_and_callback_are_used():
    token = CancellationToken()
    seen = []
    handle = ProcessingEngine(str.upper).start(["a", "b"], progress_callback=seen.append, cancellation_token=token)
    handle.result(10)
    assert handle.token is token
    assert [p.completed_symbols for p in seen] == [1, 2, 2]


def test_views_get_every_snapshot_and_the_end_before_result_returns():
    view = RecordingView()
    release = threading.Event()

    def processor(n: int) -> int:
        release.wait(10)
        return n

    handle = ProcessingEngine(processor, max_workers=2).start(range(5))
    handle.attach(view)
    release.set()
    result = handle.result(10)
    assert view.finished == [(result, None)]  # applied before result() returned
    assert view.updates[-1].finished and view.updates[-1].completed_symbols == 5


def test_view_attached_after_the_end_gets_the_end_at_once():
    handle = ProcessingEngine(str).start(["x"])
    result = handle.result(10)
    late = RecordingView()
    handle.attach(late)
    assert late.finished == [(result, None)] and late.updates == []


def test_broken_view_and_callback_never_stop_the_job():
    class BrokenView:
        def update(self, progress):
            raise RuntimeError("update broke")

        def finish(self, result, error):
            raise RuntimeError("finish broke")

    handle = ProcessingEngine(str).start(["x", "y"], progress_callback=lambda p: 1 / 0)
    handle.attach(BrokenView())
    assert len(handle.result(10)) == 2


def test_engine_crash_is_reported_not_swallowed(monkeypatch):
    from procengine_nb import _batch

    def crash(self):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(_batch.BatchRun, "run", crash)
    handle = ProcessingEngine(str).start(["x"])
    view = RecordingView()
    with pytest.raises(RuntimeError, match="engine bug"):
        handle.result(10)
    handle.attach(view)
    assert view.finished[0][0] is None and str(view.finished[0][1]) == "engine bug"
    assert handle.wait(1) is True


def test_add_done_callback():
    done = []
    handle = ProcessingEngine(str).start(["x"])
    handle.result(10)
    handle.add_done_callback(done.append)
    assert done == [handle]


def test_await_handle():
    async def main() -> BatchResult:
        return await ProcessingEngine(str.lower, max_workers=2).start(["A", "B"])

    result = asyncio.run(main())
    assert sorted(r.value for r in result) == ["a", "b"]


def test_cancelling_the_awaiting_task_cancels_the_job(no_thread_leak):
    release = threading.Event()
    started = threading.Event()

    def processor(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    engine = ProcessingEngine(processor, max_workers=1, chunk_size=1)
    holder = {}

    async def main() -> None:
        holder["handle"] = handle = engine.start(range(10))
        task = asyncio.ensure_future(handle._await())
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    handle = holder["handle"]
    assert handle.done() and handle.token.is_cancelled
    assert handle.result().cancelled
    release.set()


def test_keyboard_interrupt_during_result_cancels_the_job(no_thread_leak):
    """A kernel interrupt while a cell waits in result(): the job is cancelled and settled, then the
    interrupt propagates; the partial result stays available."""
    release = threading.Event()
    started = threading.Event()

    def processor(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    handle = ProcessingEngine(processor, max_workers=1, chunk_size=1).start(range(10))
    started.wait(10)
    interrupter = threading.Timer(0.05, _thread.interrupt_main)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        handle.result()
    interrupter.join()
    assert handle.done()
    result = handle.result()
    assert result.cancelled and result.cancel_reason == "interrupted while waiting for the result"
    release.set()


def test_several_jobs_on_one_engine_at_once(no_thread_leak):
    release = threading.Event()

    def processor(n: int) -> int:
        release.wait(10)
        return n

    engine = ProcessingEngine(processor, max_workers=2)
    first, second = engine.start(range(5)), engine.start(range(5, 9))
    assert not first.done() and not second.done()  # both running concurrently
    release.set()
    assert sorted(r.value for r in first.result(10)) == list(range(5))
    assert sorted(r.value for r in second.result(10)) == list(range(5, 9))


def test_repr_shortens_and_cleans_the_job_name():
    from procengine_nb import ProcessingJob

    handle = ProcessingEngine(str).start(ProcessingJob(["x"], name="\x1b[31m" + "n" * 10_000))
    handle.result(10)
    text = repr(handle)
    assert "\x1b" not in text and len(text) < 200 and text.endswith("done 1/1>")
