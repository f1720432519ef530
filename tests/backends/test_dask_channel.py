"""The Dask channel's pieces without a cluster: a fake worker (its loop, its scheduler RPC, its log)."""

from __future__ import annotations

import asyncio
import pickle

import pytest

pytest.importorskip("distributed")

from distributed.core import Status

from procengine_nb.backends import _dask_channel as channel


class FakeLoop:
    """Records what would run on the worker's event loop; ``run_all()`` runs it (timers included)."""

    def __init__(self) -> None:
        self.callbacks: list = []
        self.timers: list = []

    def add_callback(self, fn, *args):
        self.callbacks.append((fn, args))

    def call_later(self, delay, fn, *args):
        self.timers.append((delay, fn, args))

    def run_all(self) -> None:
        while self.callbacks or self.timers:
            while self.callbacks:
                fn, args = self.callbacks.pop(0)
                result = fn(*args)
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            while self.timers:
                _, fn, args = self.timers.pop(0)
                fn(*args)


class FakeScheduler:
    def __init__(self, answers) -> None:
        self.answers = list(answers)
        self.calls: list = []

    async def event_wait(self, name, timeout):
        self.calls.append((name, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeWorker:
    def __init__(self, answers=()) -> None:
        self.loop = FakeLoop()
        self.scheduler = FakeScheduler(answers)
        self.status = Status.running
        self.events: list = []

    def log_event(self, topic, msg):
        self.events.append((topic, msg))


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(channel, "_batches", {})
    monkeypatch.setattr(channel, "_stopped", channel.deque())
    monkeypatch.setattr(channel, "_RETRY", 0.0)


def test_a_chunk_reports_its_start_each_symbol_rate_limited_and_its_end():
    worker = FakeWorker()
    state = channel._BatchState("b1")
    report = channel._ChunkReport(worker, state, 7, 3)
    report[0] = 0  # the first symbol: at once
    assert worker.events == [(channel.TOPIC, ["b1", 7, 0])]
    report[0] = 1  # within 20 ms of the last report: held for the timer, which is armed once
    report[0] = 2
    assert worker.events == [(channel.TOPIC, ["b1", 7, 0])]
    assert len(worker.loop.callbacks) == 1 and state.timer_armed
    worker.loop.run_all()  # 20 ms later: the symbol running now is reported (a long one after short ones)
    assert worker.events[-1] == (channel.TOPIC, ["b1", 7, 2]) and not state.timer_armed
    report[0] = 3  # the end: at once, whatever the rate limit
    assert worker.events[-1] == (channel.TOPIC, ["b1", 7, -1])
    report[0] = 3
    assert len(worker.events) == 3  # said once
    worker.loop.run_all()
    assert len(worker.events) == 3


def test_a_chunk_that_ran_no_symbol_reports_nothing():
    worker = FakeWorker()
    report = channel._ChunkReport(worker, channel._BatchState("b"), 0, 4)
    report[0] = 4
    assert worker.events == []


def test_the_watch_cancels_the_batch_token_when_the_stop_event_is_set():
    worker = FakeWorker(answers=[False, True])
    state = channel._join(worker, "b2")
    assert state.watching and not state.token.is_cancelled
    assert channel._join(worker, "b2") is state and len(worker.loop.callbacks) == 1  # one watch a process
    worker.loop.run_all()
    assert state.token.is_cancelled and not state.watching
    assert worker.scheduler.calls == [(channel.stop_event_name("b2"), channel._WAIT)] * 2
    # a later chunk of the stopped batch joins a cancelled token: it runs no symbol, no new watch
    assert channel._join(worker, "b2").token.is_cancelled and not worker.loop.callbacks


def test_the_watch_ends_once_no_chunk_of_the_batch_runs_here():
    worker = FakeWorker(answers=[False])
    state = channel._join(worker, "b3")
    channel._leave(state)
    worker.loop.run_all()
    assert not state.watching and not state.token.is_cancelled and "b3" not in channel._batches


def test_a_worker_that_lost_its_scheduler_cancels_the_token_else_it_retries():
    worker = FakeWorker(answers=[OSError("no route"), True])
    state = channel._join(worker, "b4")
    worker.loop.run_all()  # still running: retried, then the event was set
    assert state.token.is_cancelled and "stopped" in state.token.reason
    worker = FakeWorker(answers=[OSError("no route")])
    worker.status = Status.closing
    state = channel._join(worker, "b5")
    worker.loop.run_all()
    assert state.token.is_cancelled and "lost its scheduler" in state.token.reason


def test_stopped_batches_are_remembered_within_a_bound(monkeypatch):
    monkeypatch.setattr(channel, "_KEEP_STOPPED", 2)
    for name in ("s1", "s2", "s3"):
        worker = FakeWorker(answers=[True])
        channel._leave(channel._join(worker, name))
        worker.loop.run_all()
    assert sorted(channel._batches) == ["s2", "s3"]


def test_the_worker_token_travels_as_a_reference_to_its_batch():
    worker = FakeWorker(answers=[])
    state = channel._join(worker, "b6")
    assert pickle.loads(pickle.dumps(state.token)) is state.token
    other = pickle.loads(pickle.dumps(channel.WorkerToken("elsewhere")))
    assert isinstance(other, channel.WorkerToken) and not other.is_cancelled


def test_reports_are_routed_to_their_batch_and_foreign_messages_ignored():
    routes = channel._Routes()
    seen = []
    routes.batches["mine"] = lambda chunk, index: seen.append((chunk, index))
    routes((0.0, ["mine", 3, 1]))
    routes((0.0, ["other", 3, 1]))
    routes((0.0, "garbage"))
    routes((0.0, ["mine"]))
    assert seen == [(3, 1)]


class EventSettingScheduler(FakeScheduler):
    async def event_set(self, name):
        self.calls.append(("set", name))


def test_a_processor_cancelling_its_token_stops_the_batch_here_and_tells_the_scheduler_and_the_client():
    worker = FakeWorker()
    worker.scheduler = EventSettingScheduler([])
    state = channel._join(worker, "b7")
    worker.loop.callbacks.clear()  # (the watch)
    token = channel.WorkerToken("b7", chunk=3)
    assert token.cancel("fatal: quota exhausted") is True
    assert token.asked == "fatal: quota exhausted"
    assert state.token.is_cancelled  # the batch's other chunks here stop at once
    assert state.token.asked is None  # (not a processor's own cancel of that token)
    assert worker.events == [(channel.TOPIC, ["b7", channel.ASKED, [3, "fatal: quota exhausted"]])]
    worker.loop.run_all()
    assert worker.scheduler.calls == [("set", channel.stop_event_name("b7"))]  # every other worker hears it
    assert token.cancel("again") is False and len(worker.events) == 1


def test_a_token_cancelled_by_the_batch_is_not_a_processor_asking():
    worker = FakeWorker(answers=[True])
    state = channel._join(worker, "b8")
    worker.loop.run_all()  # the stop event was set
    assert state.token.is_cancelled and state.token.asked is None and worker.events == []


def test_abandoned_chunks_tokens_are_cancelled_and_only_theirs():
    worker = FakeWorker()
    state = channel._join(worker, "b9")
    state.chunks[1], state.chunks[2] = channel.WorkerToken("b9", 1), channel.WorkerToken("b9", 2)
    channel.abandon_chunks("b9", [2, 5])
    channel.abandon_chunks("unknown batch", [1])
    assert state.chunks[2].is_cancelled and "timeout" in state.chunks[2].reason
    assert not state.chunks[1].is_cancelled and not state.token.is_cancelled
    assert state.chunks[2].asked is None and worker.events == []


def test_an_asking_report_is_routed_to_its_batch():
    routes = channel._Routes()
    seen = []
    routes.batches["mine"] = lambda chunk, index: seen.append((chunk, index))
    routes((0.0, ["mine", channel.ASKED, [4, "why"]]))
    assert seen == [(channel.ASKED, [4, "why"])]
