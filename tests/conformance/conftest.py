"""The ``backend`` fixture of the conformance suite: every backend shape the promise holds on.

Each parameter is a :class:`Shape`: how to build an engine on it for a processor (the async form on
asyncio), and how to close what a batch runs on while it runs. Clusters are started once per module
(the suite is one module; tests elsewhere count child processes) and only when a Dask shape is
selected; the ``executor=`` pool belongs to the test.
"""

from __future__ import annotations

import functools
import multiprocessing
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from procengine_nb import ProcessingEngine

from . import conformance_procs

WORKERS = 2
"""Workers (threads, processes, coroutines, Dask threads) of every shape."""


class Shape:
    """One backend shape: ``engine(name, **kwargs)`` builds an engine for processor ``name`` of
    :mod:`conformance_procs` (``name + "_async"`` when ``is_async``), ``close_mid_batch(engine)`` closes
    what the batch runs on, the way a user would."""

    def __init__(self, name: str, *, remote: bool, is_async: bool = False,
                 make: Callable[..., ProcessingEngine], close: Callable[[ProcessingEngine], None],
                 make_closable: Callable[..., ProcessingEngine] | None = None,
                 shared: Path | None = None) -> None:
        self.name = name
        self.remote = remote
        """True when processors run in other processes (values and exceptions must be pickled)."""
        self.is_async = is_async
        self._make = make
        self._close = close
        self._make_closable = make_closable or make
        self._shared = shared

    def directory(self, tmp_path: Path) -> Path:
        """Where the test and its processors leave each other files: ``tmp_path``, or on a worker of
        another host (which sees none of this machine's ``/tmp``), a directory both sides see."""
        if self._shared is None:
            return tmp_path
        return Path(tempfile.mkdtemp(dir=self._shared))

    def processor(self, name: str, **bound: Any) -> Callable[..., Any]:
        fn = getattr(conformance_procs, name + ("_async" if self.is_async else ""))
        return functools.partial(fn, **bound) if bound else fn

    def engine(self, name: str, *, bound: dict[str, Any] | None = None, **kwargs: Any) -> ProcessingEngine:
        return self._make(self.processor(name, **(bound or {})), **kwargs)

    def closable_engine(self, name: str, *, bound: dict[str, Any] | None = None, **kwargs: Any) -> ProcessingEngine:
        """An engine whose backend :meth:`close_mid_batch` may close (Dask: a client of the test's own)."""
        return self._make_closable(self.processor(name, **(bound or {})), **kwargs)

    def close_mid_batch(self, engine: ProcessingEngine) -> None:
        self._close(engine)

    def __repr__(self) -> str:
        return self.name


SHAPES = ["threads", "executor", "executor-processes", "processes", "asyncio", "dask-localcluster", "dask-user-client",
          "dask-remote"]


@pytest.fixture(scope="module")
def _dask_local_cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def _dask_local_client(_dask_local_cluster: Any) -> Iterator[Any]:
    client = _dask_client_on(_dask_local_cluster)
    yield client
    client.close()


@pytest.fixture(scope="module")
def _dask_user_client() -> Iterator[Any]:
    """The way most notebooks start Dask: a client that owns its cluster."""
    distributed = pytest.importorskip("distributed")
    client = distributed.Client(n_workers=WORKERS, threads_per_worker=1, dashboard_address=None)
    yield client
    client.close()


def _dask_client_on(cluster: Any) -> Any:
    import distributed

    return distributed.Client(cluster, set_as_default=False)


@pytest.fixture(params=SHAPES)
def backend(request: pytest.FixtureRequest) -> Iterator[Shape]:
    name = request.param
    if name == "threads":
        yield Shape(name, remote=False,
                    make=lambda p, **kw: ProcessingEngine(p, max_workers=WORKERS, **kw),
                    close=lambda engine: engine.close())
    elif name == "executor":
        pool = ThreadPoolExecutor(WORKERS)
        try:
            yield Shape(name, remote=False,
                        make=lambda p, **kw: ProcessingEngine(p, executor=pool, **kw),
                        close=lambda engine: pool.shutdown(wait=False, cancel_futures=True))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    elif name == "executor-processes":
        # the user's own process pool: chunks travel as on processes (one path)
        pytest.importorskip("cloudpickle")
        processes = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield Shape(name, remote=True,
                        make=lambda p, **kw: ProcessingEngine(p, executor=processes, **kw),
                        close=lambda engine: processes.shutdown(wait=False, cancel_futures=True))
        finally:
            processes.shutdown(wait=True, cancel_futures=True)
    elif name == "processes":
        pytest.importorskip("loky")
        from procengine_nb.backends.processes import shutdown_pools

        yield Shape(name, remote=True,
                    make=lambda p, **kw: ProcessingEngine(p, backend="processes", max_workers=WORKERS, **kw),
                    close=lambda engine: (engine.close(), shutdown_pools()))
    elif name == "asyncio":
        yield Shape(name, remote=False, is_async=True,
                    make=lambda p, **kw: ProcessingEngine(p, backend="asyncio", max_workers=WORKERS, **kw),
                    close=lambda engine: engine.close())
    elif name == "dask-localcluster":
        cluster = request.getfixturevalue("_dask_local_cluster")
        client = request.getfixturevalue("_dask_local_client")
        own: list[Any] = []

        def make(p: Callable[..., Any], **kw: Any) -> ProcessingEngine:
            client.wait_for_workers(WORKERS, timeout=120)
            return ProcessingEngine(p, backend="dask", client=client, **kw)

        def make_closable(p: Callable[..., Any], **kw: Any) -> ProcessingEngine:
            own.append(_dask_client_on(cluster))  # closing it leaves the cluster running
            own[-1].wait_for_workers(WORKERS, timeout=120)
            return ProcessingEngine(p, backend="dask", client=own[-1], **kw)

        try:
            yield Shape(name, remote=True, make=make, make_closable=make_closable,
                        close=lambda engine: engine.backend.client.close())
        finally:
            for c in own:
                c.close()
    elif name == "dask-user-client":
        distributed = pytest.importorskip("distributed")
        owned: list[Any] = []

        def make_user(p: Callable[..., Any], **kw: Any) -> ProcessingEngine:
            client = request.getfixturevalue("_dask_user_client")
            client.wait_for_workers(WORKERS, timeout=120)
            return ProcessingEngine(p, backend="dask", client=client, **kw)

        def make_own(p: Callable[..., Any], **kw: Any) -> ProcessingEngine:
            # closing it closes its cluster: a client of the test's own, not the session's
            owned.append(distributed.Client(n_workers=WORKERS, threads_per_worker=1, dashboard_address=None))
            owned[-1].wait_for_workers(WORKERS, timeout=120)
            return ProcessingEngine(p, backend="dask", client=owned[-1], **kw)

        try:
            yield Shape(name, remote=True, make=make_user, make_closable=make_own,
                        close=lambda engine: engine.backend.client.close())
        finally:
            for c in owned:
                c.close()
    elif name == "dask-remote":
        # a scheduler and a worker started with Dask's CLI, the worker on another host (its own UTS and
        # mount namespaces: another host name, a /tmp of its own); see tests/_remote_dask.py
        distributed = pytest.importorskip("distributed")
        deployment = request.getfixturevalue("dask_remote_deployment")
        client = request.getfixturevalue("dask_remote")
        clients: list[Any] = []

        def make_remote(p: Callable[..., Any], **kw: Any) -> ProcessingEngine:
            return ProcessingEngine(p, backend="dask", client=client, **kw)

        def make_remote_closable(p: Callable[..., Any], **kw: Any) -> ProcessingEngine:
            clients.append(distributed.Client(deployment.address, set_as_default=False))  # closing it
            return ProcessingEngine(p, backend="dask", client=clients[-1], **kw)  # leaves the deployment up

        try:
            yield Shape(name, remote=True, make=make_remote, make_closable=make_remote_closable,
                        close=lambda engine: engine.backend.client.close(), shared=deployment.exchange)
        finally:
            for c in clients:
                c.close()
    else:  # pragma: no cover
        raise AssertionError(name)


def pytest_configure(config: pytest.Config) -> None:
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - no remote backend then
        return
    cloudpickle.register_pickle_by_value(conformance_procs)  # workers need not import it
