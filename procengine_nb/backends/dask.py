"""The ``"dask"`` backend: a ``distributed`` cluster (``pip install procengine_nb[dask]``).

>>> from procengine_nb import ProcessingEngine
>>> with ProcessingEngine(abs, backend="dask", max_workers=2) as engine:     # doctest: +SKIP
...     sorted(r.value for r in engine.process_batch([-1, 2, -3]))             # a LocalCluster
[1, 2, 3]

Which cluster:

- ``client=<distributed.Client>``: used as it is; the engine never closes it.
- ``client="tcp://host:8786"``: the engine connects a ``Client`` at its first batch and closes it in
  ``engine.close()``.
- no client: the engine starts a ``LocalCluster`` on 127.0.0.1 (``max_workers`` single-threaded
  worker processes, default: the number of CPUs; no dashboard) at its **first batch**, keeps it for
  the next batches (starting one takes seconds), and closes it in ``engine.close()`` — or at the end
  of a ``with ProcessingEngine(...)`` block, or when the engine is garbage-collected / the interpreter
  exits. Its logs below ERROR are silenced (they would land in the cell). ``cluster_options={...}``
  adds or overrides ``LocalCluster`` arguments.

Each chunk is one Dask task with a unique key (``procengine-chunk-<uuid>``), submitted with
``client.submit`` and followed with the Dask future's own ``add_done_callback``; at most the engine's
bounded window of tasks is on the cluster at once. Workers must be able to import ``procengine_nb``.

Honest limits:

- Stop cancels (``client.cancel``) every task not running yet. A task already executing on a worker
  cannot be stopped by Dask (distributed#2617): it is left to finish, and the final snapshot counts it in
  ``running`` (found with ``client.call_stack``; a task that starts in the few milliseconds between
  that query and the cancel is missed). On workers of this machine (a LocalCluster) the processors'
  token still turns cancelled within ~5 ms (see :class:`~procengine_nb.backends._remote.MarkerToken`), so
  a chunk stops at its next symbol; on remote workers that token is never cancelled.
- A worker that dies is handled by the scheduler: its tasks run again on another worker, so no symbol
  is lost. A task that keeps killing its workers fails after ``distributed.scheduler.allowed-failures``
  attempts with ``KilledWorker``: that chunk's symbols become ERROR results and the batch goes on.
- ``distributed`` keeps two process-wide helper threads once used (``Dask-Callback-Thread``,
  ``Dask-Offload``); they are not per batch and do not grow.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from procengine_nb.backends._remote import BatchMarker, RemoteTask, _ProcessorBlob, encode_chunk, run_encoded
from procengine_nb.backends.base import Backend, BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

try:
    import cloudpickle  # noqa: F401  (used by remote; checked here for the error message)
    import distributed
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('backend="dask" needs dask.distributed: pip install "procengine_nb[dask]"') from exc

__all__ = ["DaskBackend"]

_CANCEL_REASON = "stopped by procengine_nb"
_CALL_STACK_TIMEOUT = 2.0  # seconds a Stop waits to learn which tasks already run


class DaskTaskCancelled(RuntimeError):
    """A chunk's Dask task was cancelled by something other than this batch (a restart, a close)."""


class DaskClientClosed(RuntimeError):
    """The Dask client (or the engine's own cluster) was closed while this chunk was in flight."""


_WATCH_INTERVAL = 0.2  # seconds between two looks at the client's status during a batch


def _complete(task: RemoteTask, future: Any) -> None:
    """Runs on distributed's callback thread when the Dask future finishes (or errs / is cancelled)."""
    if task.done():  # cancelled by the batch already
        return
    status = future.status
    if status == "cancelled":
        task.complete_with_error(DaskTaskCancelled(
            f"the Dask task {future.key!r} for this chunk was cancelled outside the engine "
            "(the client or cluster was closed or restarted?)"
        ))
        return
    try:
        blobs = future.result()
    except BaseException as exc:  # KilledWorker, a worker-side RemoteSerializationError, ...
        task.complete_with_error(exc)
    else:
        task.complete_with_blobs(blobs)


class _DaskBatch(BatchExecutor):
    """One batch on a Dask client.

    A closed client never completes its futures (no done-callback, no error), so the batch keeps the
    chunks in flight (``_outstanding``) and a watcher thread looks at the client's status every
    0.2 s while the batch is open: once the client is closing or closed (the user's ``client.close()``,
    or the engine's own LocalCluster going away), every chunk in flight ends as per-symbol ERRORs with
    :class:`DaskClientClosed` and the batch returns. ``engine.close()`` does the same at once.
    """

    def __init__(self, backend: DaskBackend, token: CancellationToken) -> None:
        self._client = backend._ensure_client()
        self._marker = BatchMarker()
        self._blob = _ProcessorBlob()
        self._registration = token.register(self._marker.cancel)
        self.worker_token = None  # the engine's token cannot be pickled; workers get a MarkerToken
        # On a LocalCluster (workers on this machine) a chunk marks its start with a started file, so
        # timeout= counts from there; elsewhere the start cannot be seen and counts from submission.
        self._local = isinstance(getattr(self._client, "cluster", None), distributed.LocalCluster)
        self._outstanding: set[RemoteTask] = set()
        self._backend = backend
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="procengine-dask-watch", daemon=True)
        self._watcher.start()
        backend._batches.add(self)

    def _watch(self) -> None:
        client = self._client
        while not self._stop.wait(_WATCH_INTERVAL):
            if getattr(client, "status", "closed") in ("closing", "closed"):
                self.fail_outstanding(DaskClientClosed(
                    "the Dask client was closed while this chunk was in flight (client.close()?)"))
                return

    def fail_outstanding(self, error: BaseException) -> None:
        """End every chunk still in flight with ``error`` (one ERROR per symbol)."""
        for task in list(self._outstanding):
            task.complete_with_error(error)

    def started(self, future: Future[Any]) -> bool:
        started_file = getattr(future, "started_file", None)
        return future.done() or started_file is None or os.path.exists(started_file)

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        client = self._client
        status = getattr(client, "status", "closed")
        if status in ("closing", "closed"):
            # A closing client still takes a submit and never completes it (a client that owns its
            # cluster stays "closing" for seconds, after the watcher has failed what was in flight)
            raise DaskClientClosed(f"Client is {status}: the Dask client takes no new chunk")
        payload, task = encode_chunk(self._blob, chunk.processor, chunk.symbols, chunk.pass_token,
                                     self._marker.marker)
        if payload is None:
            return task
        key = f"procengine-chunk-{uuid.uuid4().hex}"
        started_file = self._marker.started_file() if self._local else None
        task.started_file = started_file
        inner = client.submit(run_encoded, *payload, started_file, key=key, pure=False)
        task.inner, task.key = inner, key
        self._outstanding.add(task)
        task.add_done_callback(self._outstanding.discard)
        inner.add_done_callback(lambda f, task=task: _complete(task, f))
        return task

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        tasks: list[RemoteTask] = []
        for future in futures:
            if isinstance(future, RemoteTask) and future.inner is not None:
                if not future.done():
                    tasks.append(future)
            else:
                future.cancel()
        if not tasks:
            return
        client = self._client
        try:  # which of them already execute on a worker (those cannot be stopped; leave them be)
            # client.call_stack(keys=...), bounded: a worker stuck in GIL-holding C code must not
            # delay the Stop by the comm timeouts
            stacks = client.sync(client.scheduler.call_stack, keys=[t.key for t in tasks],
                                 callback_timeout=_CALL_STACK_TIMEOUT)
            executing = {key for per_worker in stacks.values() for key in per_worker}
        except Exception:  # cannot tell (a worker just died, timeout): count them all as possibly running
            executing = {t.key for t in tasks}
        stop = [t for t in tasks if t.key not in executing]
        if stop:
            try:
                client.cancel([t.inner for t in stop], reason=_CANCEL_REASON)
            except Exception:  # the client is closing: the tasks die with it
                pass
            for task in stop:
                task.complete_cancelled()

    def close(self, *, cancelled: bool) -> None:
        self._stop.set()
        self._registration.unregister()
        if cancelled:
            self._marker.cancel()
        # The batch is over: its directory goes, and any chunk of it still queued or running on a
        # worker of this machine sees its token cancelled (a late chunk runs no symbol).
        self._marker.close()
        self._backend._batches.discard(self)
        if self._watcher is not threading.current_thread():
            self._watcher.join()


def _close_owned(client: Any, cluster: Any) -> None:
    for thing in (client, cluster):
        if thing is not None:
            try:
                thing.close()
            except Exception:  # pragma: no cover - already closed / interpreter shutting down
                pass


class DaskBackend(Backend):
    """Run chunks as tasks on a ``distributed`` cluster (see the module docstring).

    Args:
        max_workers: tasks in flight are bounded by twice this; default: the cluster's total threads
            (for a LocalCluster the engine starts: the number of CPUs, one thread per worker).
        client: a ``distributed.Client``, a scheduler address, or None for a LocalCluster.
        cluster_options: extra ``LocalCluster`` keyword arguments (only without ``client``).
    """

    name = "dask"
    shares_memory = False
    # Tasks shorter than this are grouped: a Dask task costs ~1-15 ms of scheduling, and each completion
    # is a round trip (scheduler -> client -> next submit) that a worker must not wait for. 0.2 s: 400 tasks
    # of 5 ms took 0.99x a dask.bag's time (0.05 s: 1.09x). A Stop never waits for a running chunk, and on
    # workers of this machine the marker token stops it at its next symbol.
    target_task_seconds = 0.2

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        client: distributed.Client | str | None = None,
        cluster_options: Mapping[str, Any] | None = None,
    ) -> None:
        if client is not None and not isinstance(client, (distributed.Client, str)):
            raise TypeError(f"client must be a distributed.Client, an address str or None, not {type(client).__name__}")
        if isinstance(client, str) and not client.strip():
            raise ValueError("client must not be an empty address")
        if cluster_options is not None:
            if not isinstance(cluster_options, Mapping):
                raise TypeError(f"cluster_options must be a mapping, not {type(cluster_options).__name__}")
            if client is not None:
                raise ValueError("cluster_options applies only when the engine starts its own LocalCluster (no client)")
        self._given = client
        self._max_workers = max_workers
        self._cluster_options = dict(cluster_options or {})
        self._client: distributed.Client | None = client if isinstance(client, distributed.Client) else None
        self._cluster: Any = None
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._batches: weakref.WeakSet[_DaskBatch] = weakref.WeakSet()  # open batches (see close())

    @property
    def client(self) -> distributed.Client | None:
        """The client in use (None until the first batch when the engine starts or connects one)."""
        return self._client

    @property
    def max_workers(self) -> int:
        if self._max_workers is not None:
            return self._max_workers
        if self._given is None:  # our own LocalCluster: one single-threaded worker per CPU
            return _cpu_count()
        threads = sum(self._ensure_client().nthreads().values())
        return max(1, threads)

    def _ensure_client(self) -> distributed.Client:
        with self._lock:
            if self._closed:
                raise RuntimeError("this dask backend was closed")
            if self._client is not None:
                return self._client
            if isinstance(self._given, str):
                client = distributed.Client(self._given, set_as_default=False)
                cluster = None
            else:
                options: dict[str, Any] = {
                    "n_workers": self._max_workers or _cpu_count(),
                    "threads_per_worker": 1,
                    "processes": True,
                    "host": "127.0.0.1",
                    "dashboard_address": None,
                    # the cluster's WARNING logs (e.g. "event loop unresponsive" on a busy machine)
                    # would land in the notebook cell under the panel
                    "silence_logs": logging.ERROR,
                }
                if not {"dashboard_address", "scheduler_kwargs"} & set(self._cluster_options):
                    # no dashboard, and the scheduler's HTTP endpoint on a free loopback port
                    # (not 8787, which another cluster may hold)
                    options["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"}
                options.update(self._cluster_options)
                cluster = distributed.LocalCluster(**options)
                try:
                    client = distributed.Client(cluster, set_as_default=False)
                except BaseException:
                    cluster.close()
                    raise
            self._client, self._cluster = client, cluster
            self._finalizer = weakref.finalize(self, _close_owned, client, cluster)
            return client

    def open(self, token: CancellationToken) -> BatchExecutor:
        return _DaskBatch(self, token)

    def close(self) -> None:
        """Close the client and the LocalCluster the engine started (never a client you passed).

        A batch still running on them returns at once: its chunks in flight end as ERRORs
        (:class:`DaskClientClosed`), the symbols never submitted are unprocessed."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
            if finalizer is not None:
                self._client, self._cluster = None, None
        if finalizer is not None:
            for batch in list(self._batches):
                batch.fail_outstanding(DaskClientClosed("the engine was closed while this chunk was in flight"))
            finalizer()

    def __repr__(self) -> str:
        where = "LocalCluster" if self._given is None else repr(self._given)
        return f"<DaskBackend {where} max_workers={self._max_workers}>"


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
