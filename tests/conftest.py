"""Shared fixtures: fake clocks and a check that a test leaves no thread behind."""

from __future__ import annotations

import threading

import pytest
from threadcheck import wait_for_threads


class FakeClock:
    """A clock tests move by hand: ``clock()`` returns the current fake time in seconds."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def no_thread_leak():
    """Fail the test if it leaves a thread running (compares ``threading.enumerate()``)."""
    before = set(threading.enumerate())
    yield
    leftovers = wait_for_threads(before)
    assert not leftovers, f"threads left running: {[t.name for t in leftovers]}"


@pytest.fixture(scope="session")
def dask_remote_deployment():
    """A Dask scheduler and a worker on "another host" (own UTS and mount namespaces, a private /tmp),
    started with Dask's CLI by the test session and stopped at its end (see ``tests/_remote_dask.py``).
    Skipped where ``unshare`` cannot be used, except under ``CI=true``, where that fails."""
    import os

    pytest.importorskip("distributed")
    import _remote_dask

    try:
        deployment = _remote_dask.start()
    except _remote_dask.RemoteDaskUnavailable as exc:
        message = f"the remote-host Dask deployment cannot start: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="session")
def dask_remote(dask_remote_deployment):
    """A ``distributed.Client`` of :func:`dask_remote_deployment`, its worker up and on another host."""
    import socket

    distributed = pytest.importorskip("distributed")
    import _remote_dask

    deployment = dask_remote_deployment
    try:
        client = distributed.Client(deployment.address, set_as_default=False, timeout=60)
        try:
            client.wait_for_workers(1, timeout=120)
        except BaseException:
            client.close()
            raise
    except BaseException as exc:
        pytest.fail(f"the remote-host Dask deployment did not come up ({exc!r}):\n{deployment.log()}")
    hosts = set(client.run(socket.gethostname).values())
    assert hosts == {_remote_dask.WORKER_HOSTNAME} != {socket.gethostname()}, hosts
    try:
        yield client
    finally:
        client.close()
