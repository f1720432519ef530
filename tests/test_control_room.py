"""The control room's engine side: jobs(), pause / unpause, stalls, follow-up jobs (retry / resume).

Deterministic: processors block on events, time is a fake clock where a duration is asserted; a short
sleep appears only to show that nothing happens while paused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import math
import pickle
import threading
import time
import weakref
from pathlib import Path

import pytest

import procengine_nb
from procengine_nb import JobHandle, ProcessingEngine, ResultStatus, jobs, run
from procengine_nb._registry import ENDED_KEPT, JobList
from procengine_nb.progress import ProgressTracker

WAIT = 30.0  # generous bound for "must finish" on a loaded machine


def until(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def accounted(result, symbols) -> bool:
    return sorted([r.symbol for r in result] + list(result.unprocessed)) == sorted(symbols)


def drained(handle: JobHandle) -> bool:
    """Paused, the pause published, and nothing running any more."""
    p = handle.progress
    return p.paused and handle._batch.tracker.idle


def _slow_double(n):  # module level: picklable for the processes backend
    time.sleep(0.02)
    return 2 * n


# -- jobs() ----------------------------------------------------------------------------------------
def test_jobs_lists_running_jobs_newest_first_and_exports():
    assert procengine_nb.jobs is jobs and "jobs" in procengine_nb.__all__
    gate = threading.Event()
    engine = ProcessingEngine(lambda s: gate.wait(WAIT), max_workers=1)
    handles = [engine.start([name]) for name in ("a", "b", "c")]
    try:
        listed = jobs()
        assert isinstance(listed, JobList) and isinstance(listed, list)
        mine = [h for h in listed if h in handles]
        assert mine == handles[::-1]
        assert all(h.state == "running" for h in mine)
        text = repr(listed)
        assert len(text.splitlines()) == len(listed) and "running" in text
    finally:
        gate.set()
        for h in handles:
            h.result(timeout=WAIT)
    assert [h.state for h in jobs() if h in handles] == ["done"] * 3


def test_jobs_keeps_the_last_20_ended():
    engine = ProcessingEngine(str, max_workers=1)
    mine = []
    for i in range(ENDED_KEPT + 5):
        handle = engine.start([i])
        handle.result(timeout=WAIT)
        mine.append(handle)
    listed = [h for h in jobs() if h in mine]
    assert listed == mine[::-1][:ENDED_KEPT]
    assert len(listed) == ENDED_KEPT


def test_jobs_is_thread_safe_under_many_concurrent_starts():
    gate = threading.Event()
    engine = ProcessingEngine(lambda s: gate.wait(WAIT), max_workers=1)
    started: list[JobHandle] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def starter():
        try:
            barrier.wait(WAIT)
            for i in range(5):
                handle = engine.start([i])
                with lock:
                    started.append(handle)
                jobs()  # reading while others start
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=starter) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors
    listed = jobs()
    assert set(started) <= set(listed)  # every running job is listed, however many
    assert len(listed) == len(set(listed))
    gate.set()
    for h in started:
        h.result(timeout=WAIT)
    ended = [h for h in jobs() if h in started]
    assert len(ended) == ENDED_KEPT and len(set(ended)) == ENDED_KEPT


def test_a_job_whose_thread_cannot_start_is_not_listed(monkeypatch):
    from procengine_nb import _registry

    def refuse(self):
        raise RuntimeError("can't start new thread")

    engine = ProcessingEngine(str, max_workers=1)
    before = len(_registry._running)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        engine.start(["a"])
    monkeypatch.undo()
    assert len(_registry._running) == before


def test_an_ended_job_keeps_its_result_not_its_engine():
    engine = ProcessingEngine(lambda s: s * 2, max_workers=1)
    handle = engine.start([1, 2])
    handle.result(timeout=WAIT)
    ref = weakref.ref(engine)
    backend_ref = weakref.ref(engine.backend)
    del engine
    gc.collect()
    assert handle in jobs()
    assert ref() is None and backend_ref() is None
    assert sorted(r.value for r in handle.result()) == [2, 4]


def test_an_ended_job_does_not_keep_its_progress_callback_alive():
    class Callback:
        def __call__(self, progress):
            pass

    callback = Callback()
    ref = weakref.ref(callback)
    handle = ProcessingEngine(str, max_workers=1).start(["a"], callback)
    del callback
    handle.result(timeout=WAIT)
    gc.collect()
    assert handle in jobs() and ref() is None


def test_an_ended_run_job_does_not_keep_its_engine():
    handle = run(str, ["a"], display=False, max_workers=1)
    handle.result(timeout=WAIT)
    gc.collect()
    assert handle._origin is not None and handle._origin.engine() is None
    assert [r.value for r in handle.retry(include_cancelled=True).result(timeout=WAIT)] == []


def test_show_outside_a_kernel_prints_the_line_once(capsys):
    from procengine_nb import ProcessingJob

    handle = ProcessingEngine(str.upper, max_workers=1).start(ProcessingJob(["a", "b"], name="letters"))
    handle.result(timeout=WAIT)
    handle.show()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("letters: ") and "2" in out[0]


def test_job_lines_are_plain_text():
    from procengine_nb import ProcessingJob

    handle = ProcessingEngine(_half_fails, max_workers=1).start(ProcessingJob([1, 2], name="a\x1b[31m\nb"))
    handle.result(timeout=WAIT)
    line = handle.line()
    assert line == "a [31m b  done  2/2  1 failed"
    assert repr(JobList()) == "no jobs"


# -- pause -----------------------------------------------------------------------------------------
def test_pause_stops_handing_out_then_unpause_finishes_on_threads():
    started: list[int] = []
    gate = threading.Event()

    def work(n):
        started.append(n)
        gate.wait(WAIT)
        return n

    handle = ProcessingEngine(work, max_workers=1, chunk_size=1).start(range(10))
    until(lambda: started)
    assert handle.pause() is True and handle.pause() is False and handle.paused
    until(lambda: handle.progress.paused)  # the pause is published as a snapshot
    gate.set()
    until(lambda: drained(handle))
    count = len(started)
    # only the running symbol finished: the one queued in the pool was taken back
    assert count == 1 and handle.progress.completed_symbols == 1
    time.sleep(0.2)  # nothing new starts while paused
    assert len(started) == count and handle.progress.completed_symbols == count
    assert handle.unpause() is True and handle.unpause() is False
    result = handle.result(timeout=WAIT)
    assert sorted(r.value for r in result) == list(range(10)) and not result.cancelled
    assert not handle.paused and not result.progress.paused


def test_pause_before_anything_ran_and_stop_while_paused_returns_promptly():
    gate = threading.Event()
    handle = ProcessingEngine(lambda s: gate.wait(WAIT), max_workers=2).start(range(50))
    handle.pause()
    gate.set()
    until(lambda: drained(handle))
    began = time.monotonic()
    handle.cancel()
    result = handle.result(timeout=WAIT)
    assert time.monotonic() - began < 5.0
    assert result.cancelled and accounted(result, range(50)) and len(result.unprocessed) > 0
    assert all(r.status is ResultStatus.SUCCESS for r in result)
    assert handle.state == "cancelled" and not handle.paused


def test_pause_takes_back_queued_tasks_of_a_lazy_input_and_stop_accounts_them():
    started: list[int] = []
    permits = threading.Semaphore(0)  # one per call allowed to finish

    def work(n):
        started.append(n)
        permits.acquire(timeout=WAIT)
        return n

    handle = ProcessingEngine(work, max_workers=2, chunk_size=1).start(iter(range(30)))
    until(lambda: len(started) == 2)
    handle.pause()
    until(lambda: handle.progress.paused)  # the loop took back what was queued
    permits.release(2)
    until(lambda: drained(handle))
    assert sorted(started) == [0, 1] and handle.progress.completed_symbols == 2
    handle.unpause()
    until(lambda: len(started) == 4)
    assert sorted(started) == [0, 1, 2, 3]  # the taken-back symbols go first
    handle.pause()
    until(lambda: handle.progress.paused)
    permits.release(2)
    until(lambda: drained(handle))
    handle.cancel()
    result = handle.result(timeout=WAIT)
    assert result.cancelled and not result.input_exhausted
    assert sorted(r.symbol for r in result) == [0, 1, 2, 3] == sorted(started)
    assert list(result.unprocessed)[:2] == [4, 5]  # taken back, never ran: unprocessed, in input order
    drawn = [r.symbol for r in result] + list(result.unprocessed)
    assert sorted(drawn) == list(range(len(drawn)))  # every drawn symbol once, none lost
    permits.release(100)
    rest = handle.resume().result(timeout=WAIT)
    assert sorted([r.symbol for r in result] + [r.symbol for r in rest]) == list(range(30))


def test_pause_and_unpause_with_an_executor_and_a_timeout():
    from concurrent.futures import ThreadPoolExecutor

    started: list[int] = []
    gate = threading.Event()

    def work(n):
        started.append(n)
        gate.wait(WAIT)
        return n

    with ThreadPoolExecutor(2) as pool:
        handle = ProcessingEngine(work, executor=pool, timeout=WAIT).start(range(8))
        until(lambda: len(started) == 2)
        handle.pause()
        until(lambda: handle.progress.paused)
        gate.set()
        until(lambda: drained(handle))
        assert handle.progress.completed_symbols == 2 == len(started)
        handle.unpause()
        result = handle.result(timeout=WAIT)
    assert sorted(r.value for r in result) == list(range(8))


def test_pause_and_unpause_on_asyncio():
    started: list[int] = []
    gate = threading.Event()

    async def work(n):
        started.append(n)
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return n

    handle = ProcessingEngine(work, max_workers=2, chunk_size=1).start(range(40))
    until(lambda: len(started) == 2)
    handle.pause()
    until(lambda: handle.progress.paused)  # the chunks waiting for a slot were taken back
    gate.set()
    until(lambda: drained(handle))
    time.sleep(0.1)
    assert sorted(started) == [0, 1] and handle.progress.completed_symbols == 2
    handle.unpause()
    result = handle.result(timeout=WAIT)
    assert sorted(r.value for r in result) == list(range(40)) and sorted(started) == list(range(40))


def test_stop_while_paused_on_asyncio_accounts_the_taken_back_chunks():
    gate = threading.Event()
    started: list[int] = []

    async def work(n):
        started.append(n)
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return n

    handle = ProcessingEngine(work, max_workers=3, chunk_size=2).start(range(30))
    until(lambda: len(started) == 3)  # three chunks of two have their slot; three more wait for one
    handle.pause()
    until(lambda: handle.progress.paused)
    gate.set()
    until(lambda: drained(handle))
    handle.cancel()
    result = handle.result(timeout=WAIT)
    assert result.cancelled and accounted(result, range(30))
    assert sorted(r.symbol for r in result) == sorted(started) == [0, 1, 2, 3, 4, 5]  # the running chunks end


def test_pause_and_unpause_on_processes():
    handle = ProcessingEngine(_slow_double, backend="processes", max_workers=2, chunk_size=1).start(range(12))
    handle.pause()
    until(lambda: drained(handle))
    count = handle.progress.completed_symbols
    time.sleep(0.2)
    assert handle.progress.completed_symbols == count < 12
    handle.unpause()
    result = handle.result(timeout=WAIT)
    assert sorted(r.value for r in result) == [2 * n for n in range(12)]
    stopped = ProcessingEngine(_slow_double, backend="processes", max_workers=2, chunk_size=1).start(range(12))
    stopped.pause()
    until(lambda: drained(stopped))
    began = time.monotonic()
    stopped.cancel()
    partial = stopped.result(timeout=WAIT)
    assert time.monotonic() - began < 5.0 and partial.cancelled and accounted(partial, range(12))


def _blocks_until(n, started_dir, gate_file):  # module level: picklable for the processes backend
    Path(started_dir, str(n)).touch()
    deadline = time.monotonic() + WAIT
    while not Path(gate_file).exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    return n


def test_pause_on_processes_takes_back_the_queued_tasks(tmp_path):
    """Two workers run a blocked symbol each, more tasks wait in loky's queues (pending and call queue):
    at the pause those are taken back (claimed), so once the running two are released nothing else
    starts until unpause; then the full result."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    started.mkdir()
    processor = functools.partial(_blocks_until, started_dir=str(started), gate_file=str(gate))
    engine = ProcessingEngine(processor, backend="processes", max_workers=2, chunk_size=1)
    try:
        handle = engine.start(range(12))
        until(lambda: len(list(started.iterdir())) == 2)
        until(lambda: len(handle._batch.window.inflight) == 4)  # the window: two running, two queued in loky
        handle.pause()
        until(lambda: handle.progress.paused)
        gate.touch()
        until(lambda: drained(handle))
        time.sleep(0.3)  # a worker that picks up a claimed task runs nothing
        ran = sorted(int(p.name) for p in started.iterdir())
        assert len(ran) == 2 and handle.progress.completed_symbols == 2
        handle.unpause()
        result = handle.result(timeout=WAIT)
        assert sorted(r.value for r in result) == list(range(12)) and not result.cancelled
        assert sorted(int(p.name) for p in started.iterdir()) == list(range(12))  # each once
        # a Stop while paused: the taken-back symbols are unprocessed, every symbol accounted for
        for p in started.iterdir():
            p.unlink()
        gate.unlink()
        stopped = engine.start(range(12))
        until(lambda: len(list(started.iterdir())) == 2)
        until(lambda: len(stopped._batch.window.inflight) == 4)
        stopped.pause()
        until(lambda: stopped.progress.paused)
        gate.touch()
        until(lambda: drained(stopped))
        stopped.cancel()
        partial = stopped.result(timeout=WAIT)
        assert partial.cancelled and accounted(partial, range(12))
        assert sorted(r.symbol for r in partial) == sorted(int(p.name) for p in started.iterdir())
        assert len(partial) == 2
    finally:
        gate.touch()
        engine.close()


def test_pause_a_done_job_is_a_no_op():
    handle = ProcessingEngine(str, max_workers=1).start([1])
    handle.result(timeout=WAIT)
    assert handle.pause() is False and handle.unpause() is False and handle.paused is False


def test_paused_time_is_not_in_the_rate_or_the_eta():
    now = [0.0]
    tracker = ProgressTracker(10, clock=lambda: now[0])
    now[0] = 2.0
    tracker.record("a")  # 2 s per symbol
    tracker.set_paused(True, drained=False)  # a symbol still runs: its time is work
    now[0] = 4.0
    tracker.record("b")
    assert tracker.snapshot.paused and tracker.snapshot.rate_per_second == pytest.approx(0.5)
    tracker.set_paused(True, drained=True)  # nothing runs: the pause leaves the rate
    now[0] = 104.0
    idle = tracker.refresh()
    assert idle.elapsed_time_ms == pytest.approx(104_000.0)
    assert idle.rate_per_second == pytest.approx(0.5)
    assert idle.estimated_remaining_ms == pytest.approx(16_000.0)
    tracker.set_paused(False)
    now[0] = 106.0
    after = tracker.record("c")
    assert not after.paused and after.elapsed_time_ms == pytest.approx(106_000.0)
    assert after.rate_per_second == pytest.approx(0.5)  # 3 symbols in 6 active seconds
    assert after.estimated_remaining_ms == pytest.approx(14_000.0)


def test_pause_publishes_snapshots_and_leaves_paused_time_out_of_the_eta_with_a_fake_clock():
    now = [0.0]
    permits = threading.Semaphore(0)
    began = threading.Semaphore(0)

    def work(n):
        began.release()
        permits.acquire(timeout=WAIT)
        now[0] += 1.0  # each symbol takes one (fake) second
        return n

    class View:
        def __init__(self):
            self.paused = []

        def update(self, progress):
            self.paused.append(progress.paused)

        def finish(self, result, error):
            pass

    view = View()
    handle = ProcessingEngine(work, max_workers=1, chunk_size=1, clock=lambda: now[0]).start(range(4),
                                                                                            views=[view])
    assert began.acquire(timeout=WAIT)
    handle.pause()
    until(lambda: True in view.paused)  # the pause reached the views as a snapshot
    permits.release()  # symbol 0 finishes during the pause: its second is work
    until(lambda: drained(handle))
    now[0] += 100.0  # a long idle pause
    handle.unpause()
    until(lambda: view.paused[-1] is False)
    permits.release()
    until(lambda: handle.progress.completed_symbols == 2)
    assert handle.progress.estimated_remaining_ms == pytest.approx(2_000.0)  # 2 left at 1 s each, not 51 s
    permits.release(2)
    result = handle.result(timeout=WAIT)
    assert result.progress.elapsed_time_ms == pytest.approx(104_000.0)  # the pause is in the elapsed time
    assert result.progress.rate_per_second == pytest.approx(1.0)  # ...not in the rate: 4 symbols in 4 s
    assert view.paused[-1] is False and not result.progress.paused


def test_paused_field_is_last_with_a_default_and_validated():
    from dataclasses import fields

    from procengine_nb import ProcessingProgress

    assert fields(ProcessingProgress)[-1].name == "paused"
    assert ProcessingProgress(total_symbols=1).paused is False
    assert "paused=True" in repr(ProcessingProgress(total_symbols=1, paused=True))
    assert pickle.loads(pickle.dumps(ProcessingProgress(total_symbols=1, paused=True))).paused is True
    with pytest.raises(TypeError, match="paused"):
        ProcessingProgress(total_symbols=1, paused=1)


# -- stalls ----------------------------------------------------------------------------------------
def test_stalled_names_the_symbol_blocked_on_an_event():
    now = [100.0]
    gate = threading.Event()

    def work(s):
        if s == "stuck":
            gate.wait(WAIT)
        return s

    engine = ProcessingEngine(work, max_workers=2, chunk_size=1, clock=lambda: now[0])
    handle = engine.start(["a", "stuck", "b", "c"])
    try:
        until(lambda: handle.progress.completed_symbols == 3)
        assert handle.stalled() == []  # threshold: at least 10 s
        now[0] += 9.0
        assert handle.stalled() == []
        now[0] += 2.0
        [(symbol, seconds)] = handle.stalled()
        assert symbol == "stuck" and seconds == pytest.approx(11.0)
    finally:
        gate.set()
    handle.result(timeout=WAIT)
    assert handle.stalled() == []


def test_stalled_with_stall_after_lists_longest_first():
    now = [0.0]
    gates = {s: threading.Event() for s in "xy"}
    engine = ProcessingEngine(lambda s: gates[s].wait(WAIT), max_workers=2, chunk_size=1, stall_after=1.5,
                              clock=lambda: now[0])
    handle = engine.start(["x"])
    try:
        until(lambda: handle._batch.window.inflight and all(task.started_at is not None
                                                      for task in handle._batch.window.inflight.values()))
        now[0] = 1.0
        second = engine.start(["y"])
        until(lambda: second._batch.window.inflight and all(task.started_at is not None
                                                      for task in second._batch.window.inflight.values()))
        now[0] = 2.0
        assert handle.stalled() == [("x", 2.0)] and second.stalled() == []
        now[0] = 3.0
        assert second.stalled() == [("y", 2.0)]
    finally:
        for gate in gates.values():
            gate.set()
    handle.result(timeout=WAIT)
    second.result(timeout=WAIT)


def test_stalled_on_asyncio_names_the_symbol_of_the_chunk_that_hangs():
    async def work(s):
        await asyncio.sleep(WAIT if s == "hung" else 0)
        return s

    handle = ProcessingEngine(work, max_workers=2, chunk_size=3, stall_after=0.05).start(["a", "hung", "b", "c"])
    until(lambda: handle.stalled())
    [(symbol, seconds)] = handle.stalled()
    assert symbol == "hung" and seconds > 0.05
    handle.cancel()
    result = handle.result(timeout=WAIT)
    assert accounted(result, ["a", "hung", "b", "c"]) and handle.stalled() == []


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (0, ValueError), ("x", TypeError), (math.nan, ValueError),
                                        (math.inf, ValueError), (True, TypeError)])
def test_stall_after_is_validated(bad, error):
    with pytest.raises(error, match="stall_after must be a finite number of seconds > 0, or None"):
        ProcessingEngine(str, stall_after=bad)


def _sleep_on_three(n):  # module level: picklable for the processes backend
    time.sleep(WAIT if n == 3 else 0.0)
    return n


def test_stalled_on_processes_with_a_timeout_names_the_running_chunk():
    handle = ProcessingEngine(_sleep_on_three, backend="processes", max_workers=1, chunk_size=1, timeout=WAIT,
                              stall_after=0.2).start(range(5))
    until(lambda: handle.stalled())
    [(symbol, seconds)] = handle.stalled()
    assert symbol == 3 and seconds > 0.2
    handle.cancel()
    result = handle.result(timeout=WAIT)
    assert accounted(result, range(5))


def _blocks_on_three(n, gate_file):  # module level: picklable for the processes backend
    deadline = time.monotonic() + WAIT
    while n == 3 and not Path(gate_file).exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    return n


def test_stalled_on_processes_without_a_timeout_names_the_symbol_that_hangs_in_its_chunk(tmp_path):
    """Symbols 0-7 in one chunk (chunk_size=8): 3 blocks, the others are quick. The worker writes each
    symbol's index and start in the chunk's started file: stalled() names 3 alone, with its own time."""
    gate = tmp_path / "gate"
    processor = functools.partial(_blocks_on_three, gate_file=str(gate))
    engine = ProcessingEngine(processor, backend="processes", max_workers=1, chunk_size=8, stall_after=0.2)
    try:
        handle = engine.start(range(8))
        until(lambda: handle.stalled())
        [(symbol, seconds)] = handle.stalled()
        assert symbol == 3 and 0.2 < seconds < WAIT
        gate.touch()
        result = handle.result(timeout=WAIT)
        assert sorted(r.value for r in result) == list(range(8)) and handle.stalled() == []
    finally:
        gate.touch()
        engine.close()


# -- follow-ups ------------------------------------------------------------------------------------
def _half_fails(n):
    if n % 2:
        raise ValueError(n)
    return n


def test_retry_starts_a_follow_up_job_listed_by_jobs():
    handle = ProcessingEngine(_half_fails, max_workers=2).start(range(6))
    handle.result(timeout=WAIT)
    assert handle.successor is None
    again = handle.retry()
    assert handle.successor is again and again in jobs() and jobs().index(again) < jobs().index(handle)
    result = again.result(timeout=WAIT)
    assert sorted(r.symbol for r in result) == [1, 3, 5]
    assert result.job.name.endswith("(retry)")


def test_retry_of_a_running_job_is_refused():
    gate = threading.Event()
    handle = ProcessingEngine(lambda s: gate.wait(WAIT), max_workers=1).start([1])
    try:
        with pytest.raises(RuntimeError, match="still running"):
            handle.retry()
    finally:
        gate.set()
    handle.result(timeout=WAIT)


def test_resume_after_a_stop_and_after_run_released_its_engine():
    gate, began = threading.Event(), threading.Event()

    def work(n):
        began.set()
        gate.wait(WAIT)
        return n

    handle = run(work, range(20), display=False, max_workers=1, chunk_size=1)
    assert began.wait(WAIT)
    handle.cancel()
    first = handle.result(timeout=WAIT)
    gate.set()
    assert first.cancelled and first.unprocessed
    follow = handle.resume()  # run() closed its engine: a new one with the same processor
    assert handle.successor is follow
    rest = follow.result(timeout=WAIT)
    assert sorted([r.symbol for r in first] + [r.symbol for r in rest]) == list(range(20))
    assert follow._origin is not None and follow._origin.reuse is False


def test_a_follow_up_reuses_the_open_engine_and_replaces_a_closed_one():
    engine = ProcessingEngine(_half_fails, max_workers=1)
    handle = engine.start([1, 2])
    handle.result(timeout=WAIT)
    reused = handle.retry()
    assert reused._origin.engine() is engine  # the same engine, still open
    reused.result(timeout=WAIT)
    engine.close()
    fresh = handle.retry()
    assert fresh._origin.engine() is not engine and fresh._origin.reuse is False
    assert [r.symbol for r in fresh.result(timeout=WAIT)] == [1]


def test_follow_up_without_the_executor_it_ran_on_says_so():
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    engine = ProcessingEngine(_half_fails, executor=pool)
    handle = engine.start([1])
    handle.result(timeout=WAIT)
    pool.shutdown()
    del engine, pool
    gc.collect()
    with pytest.raises(RuntimeError, match="executor= the first job ran on no longer exists"):
        handle.retry()


# -- display (the notebook side, with a stand-in kernel) -------------------------------------------
def test_show_under_a_kernel_displays_the_panel_run_made_or_a_new_one(monkeypatch):
    import sys

    from procengine_nb import ProgressPanel, one_liner

    shown = []
    monkeypatch.setitem(sys.modules, "procengine_nb.views.jobs", None)  # one_liner's own path
    monkeypatch.setattr(one_liner, "in_jupyter_kernel", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    handle = run(str, ["a"], display=False)
    handle.result(timeout=WAIT)
    handle.show()
    assert shown == [handle.panel]
    started = ProcessingEngine(str, max_workers=1).start(["b"])
    started.result(timeout=WAIT)
    started.show()  # no panel yet: one is made and attached, showing the final state
    assert isinstance(shown[-1], ProgressPanel) and started.panel is shown[-1]


def test_jobs_display_uses_the_views_jobs_factory_or_falls_back_to_text(monkeypatch, capsys):
    import sys
    import types

    from procengine_nb import one_liner

    shown, made = [], []
    monkeypatch.setattr(one_liner, "in_jupyter_kernel", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    factory = types.ModuleType("procengine_nb.views.jobs")
    factory.jobs_view = lambda handles: made.append(handles) or "the widget"
    monkeypatch.setitem(sys.modules, "procengine_nb.views.jobs", factory)
    handle = ProcessingEngine(str, max_workers=1).start(["a"])
    handle.result(timeout=WAIT)
    listed = jobs()
    listed._ipython_display_()
    assert shown == ["the widget"] and made == [list(listed)] and type(made[0]) is list
    monkeypatch.setitem(sys.modules, "procengine_nb.views.jobs", None)  # no jobs view: the text lines
    listed._ipython_display_()
    assert capsys.readouterr().out.splitlines() == repr(listed).splitlines()


# -- dask (one LocalCluster for the module, started only if this test runs) ------------------------
@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = distributed.Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=120)
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.dask
@pytest.mark.timeout(240)
def test_pause_and_unpause_on_dask(dask_client):
    engine = ProcessingEngine(_slow_double, backend="dask", client=dask_client, chunk_size=1)
    handle = engine.start(range(12))
    handle.pause()
    until(lambda: drained(handle), timeout=120)
    count = handle.progress.completed_symbols
    time.sleep(0.3)
    assert handle.progress.completed_symbols == count < 12
    handle.unpause()
    result = handle.result(timeout=120)
    assert sorted(r.value for r in result) == [2 * n for n in range(12)]
    stopped = engine.start(range(12))
    stopped.pause()
    until(lambda: drained(stopped), timeout=120)
    stopped.cancel()
    partial = stopped.result(timeout=120)
    assert partial.cancelled and accounted(partial, range(12))


# -- what is shown running is running ---------------------------------------------------------------
def _gate_on(n, gate_file, blocked=(3,)):  # module level: picklable for the processes backend
    deadline = time.monotonic() + WAIT
    while n in blocked and not Path(gate_file).exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    return n


@pytest.mark.parametrize("backend", ["threads", "executor", "asyncio", "processes"])
def test_running_symbols_are_the_symbols_running_never_queued_work(backend, tmp_path):
    """One worker, chunks of 4 symbols, the window holding a second chunk behind the first: symbol 2 of
    the first chunk blocks. handle.running_symbols() is [2] alone: not the chunk's other symbols (done,
    or not begun), nor the queued chunk (it used to list all 8 on threads and processes)."""
    gate = tmp_path / "gate"
    kwargs: dict = {"max_workers": 1, "chunk_size": 4}
    pool = None
    if backend == "processes":
        processor = functools.partial(_gate_on, gate_file=str(gate), blocked=(2,))
        kwargs["backend"] = "processes"
    elif backend == "asyncio":
        async def processor(n):
            while n == 2 and not gate.exists():
                await asyncio.sleep(0.002)
            return n
    else:
        processor = functools.partial(_gate_on, gate_file=str(gate), blocked=(2,))
        if backend == "executor":
            pool = kwargs["executor"] = concurrent.futures.ThreadPoolExecutor(1)
            del kwargs["max_workers"]
    engine = ProcessingEngine(processor, **kwargs)
    try:
        handle = engine.start(range(8))
        until(lambda: handle.running_symbols() == [2])
        threading.Event().wait(0.05)  # and it stays so (the queued chunk is not shown)
        assert handle.running_symbols() == [2]
        gate.touch()
        result = handle.result(timeout=WAIT)
        assert accounted(result, range(8)) and handle.running_symbols() == []
    finally:
        gate.touch()
        engine.close()
        if pool is not None:
            pool.shutdown()
