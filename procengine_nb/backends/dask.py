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

Each chunk is one Dask task with a unique key (``procengine-chunk-<batch id>-<n>``), submitted with
``client.submit`` and followed with the Dask future's own ``add_done_callback``; at most the engine's
bounded window of tasks is on the cluster at once. Workers must be able to import ``procengine_nb``.

The Stop and each chunk's progress travel over the scheduler (see
:mod:`~procengine_nb.backends._dask_channel`), so they work the same on a LocalCluster, through your
own ``Client()`` and with workers on other hosts; nothing is written to the client's disk:

- Stop sets the batch's ``distributed.Event``; on every worker running a chunk of the batch, the
  processors' token (a worker-local :class:`~procengine_nb.backends._dask_channel.WorkerToken`) turns
  cancelled within a few milliseconds (measured: median 1-2 ms, a worker on another host included),
  so a chunk stops before its next symbol and a cooperative processor can stop mid-symbol. The same
  happens when the batch ends (a chunk still running then runs no further symbol).
- Each chunk reports on the scheduler's ``procengine-nb`` topic when it starts, which symbol it runs
  and when it ends, so ``timeout=`` counts from each symbol's own start (a symbol queued behind
  abandoned tasks never times out while it waits) and ``handle.running_symbols()`` /
  ``ProcessingProgress.running_symbols`` show only what runs, never queued work.
- Closing what the batch runs on ends the batch within about a second, every symbol accounted: the
  client is watched every 0.2 s while a batch is open, and once it is no longer ``running`` (your
  ``client.close()``, also of a ``Client()`` that owns its cluster; the cluster or scheduler closed
  under it; ``engine.close()`` on the engine's own cluster) the chunks in flight end as ERRORs
  (:class:`DaskClientClosed`), and the rest is unprocessed (the batch is cancelled with that reason).

Honest limits:

- Stop cancels (``client.cancel``) every task not running yet. A task already executing on a worker
  cannot be interrupted by Dask (distributed#2617): a processor that ignores its token runs on, and the
  final snapshot counts it in ``running`` (known from the chunks' reports, and for a task that started
  in the last milliseconds, from ``client.call_stack``).
- A chunk's first symbol may start before its worker heard of a Stop that came just before it (the
  worker's first look at the batch's event takes one scheduler round trip); its token turns cancelled
  then.
- When your client closes, the tasks it had running on a cluster that stays up are released by the
  scheduler but run on to their end (nobody is left to set the stop event).
- A worker that dies is handled by the scheduler: its tasks run again on another worker, so no symbol
  is lost. A task that keeps killing its workers fails after ``distributed.scheduler.allowed-failures``
  attempts with ``KilledWorker``: that chunk's symbols become ERROR results and the batch goes on.
- ``distributed`` keeps two process-wide helper threads once used (``Dask-Callback-Thread``,
  ``Dask-Offload``); they are not per batch and do not grow.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from procengine_nb.backends._chunk_codec import ProcessorBlob, encode_chunk
from procengine_nb.backends._dask_channel import ClientChannel, clear_events, run_chunk_task
from procengine_nb.backends._remote_task import RemoteTask
from procengine_nb.backends.base import Backend, BatchExecutor, Chunk
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import SymbolResult

try:
    import cloudpickle  # noqa: F401  (used by remote; checked here for the error message)
    import distributed
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('backend="dask" needs dask.distributed: pip install "procengine_nb[dask]"') from exc

__all__ = ["DaskBackend"]

_log = logging.getLogger(__name__)
_CANCEL_REASON = "stopped by procengine_nb"
_CALL_STACK_TIMEOUT = 2.0  # seconds a Stop waits to learn which tasks already run


class DaskTaskCancelled(RuntimeError):
    """A chunk's Dask task was cancelled by something other than this batch (a restart, a close)."""


class DaskClientClosed(RuntimeError):
    """The Dask client (or the engine's own cluster) was closed while this chunk was in flight."""


_WATCH_INTERVAL = 0.2  # seconds between two looks at the client's status during a batch
_KEEP_ENDED_EVENT = 60.0  # seconds an ended batch's stop event stays on the scheduler at least (a worker
# whose chunk started just before the Stop may look at it only now: cleared, it would wait in vain)


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

    Its :class:`~procengine_nb.backends._dask_channel.ClientChannel` carries the Stop to the workers and
    each chunk's started reports back (``_index``: the index of the symbol each started chunk runs,
    -1 once none runs any more), over the scheduler. A closed client never completes its futures (no
    done-callback, no error) and silently drops what is submitted while it closes, so a watcher thread
    looks at the client's status every 0.2 s while the batch is open: once it is no longer ``running``
    (the user's ``client.close()``, the cluster or the engine's own LocalCluster going away, a lost
    scheduler), every chunk in flight ends as per-symbol ERRORs with :class:`DaskClientClosed`, and so
    does any chunk submitted after (``submit_chunk`` refuses: the batch is cancelled with that reason).
    ``engine.close()`` does the same at once.
    """

    reports_running = True

    def __init__(self, backend: DaskBackend, token: CancellationToken) -> None:
        client = backend._ensure_client()
        status = getattr(client, "status", "closed")
        if status != "running":
            raise DaskClientClosed(f"Client is {status}: the Dask client must be running to start a batch")
        self._client = client
        self._id = uuid.uuid4().hex
        self._blob = ProcessorBlob()
        self._numbers = itertools.count()
        self._by_number: dict[int, tuple[RemoteTask, Chunk]] = {}  # chunks in flight by their number
        self._index: dict[RemoteTask, int] = {}  # started chunks: the symbol running (-1: none any more)
        self._outstanding: set[RemoteTask] = set()
        self._ended: str | None = None  # why the client can take no more chunks (it closed)
        self.worker_token = None  # the engine's token cannot be pickled; workers get a WorkerToken
        self._channel = ClientChannel(client, self._id, self._on_started)
        self._registration = token.register(self._channel.stop)
        self._backend = backend
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="procengine-dask-watch", daemon=True)
        self._watcher.start()
        backend._batches.add(self)

    def _on_started(self, number: int, index: int) -> None:  # on the client's event loop
        """A chunk's report: symbol ``index`` starts (-1: none runs any more); passed on to the chunk's
        hooks (``on_start`` at its first report, ``on_symbol``)."""
        found = self._by_number.get(number)
        if found is None:
            return
        task, chunk = found
        if task.done():
            return
        first = task not in self._index
        self._index[task] = index
        try:
            if first and chunk.on_start is not None:
                chunk.on_start()
            if chunk.on_symbol is not None:
                chunk.on_symbol(index if index >= 0 else len(chunk.symbols))
        except Exception:  # the hooks are the engine's and trivial; never let one break the client's loop
            _log.exception("a chunk's start hook failed")

    def _forget(self, number: int, task: RemoteTask) -> None:
        self._outstanding.discard(task)
        self._by_number.pop(number, None)
        self._index.pop(task, None)

    def _watch(self) -> None:
        client = self._client
        while not self._stop.wait(_WATCH_INTERVAL):
            status = getattr(client, "status", "closed")
            if status != "running":
                self.end(DaskClientClosed(
                    f"Client is {status}: the Dask client was closed (or lost its scheduler) while this chunk "
                    "was in flight"))

    def end(self, error: BaseException) -> None:
        """The client can run nothing more for this batch: end every chunk in flight with ``error`` (one
        ERROR per symbol) and refuse new ones."""
        self._ended = str(error)
        for task in list(self._outstanding):
            task.complete_with_error(error)

    def started(self, future: Future[Any]) -> bool:
        return future.done() or future in self._index

    def running_index(self, future: Future[Any]) -> int | None:
        if future.done():
            return None
        index = self._index.get(future, -1)  # type: ignore[call-overload]
        return index if index >= 0 else None

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        client = self._client
        status = getattr(client, "status", "closed")
        if self._ended is not None or status != "running":
            # A closing client still takes a submit and never completes it (a client that owns its
            # cluster stays "closing" for seconds, after the watcher has failed what was in flight)
            raise DaskClientClosed(self._ended or f"Client is {status}: the Dask client takes no new chunk")
        pass_token = chunk.pass_token
        payload, task = encode_chunk(self._blob, chunk.processor, chunk.symbols, pass_token, None)
        if payload is None:
            return task
        number = next(self._numbers)
        key = f"procengine-chunk-{self._id}-{number}"
        processor_blob, symbols_blob, _, _ = payload
        inner = client.submit(run_chunk_task, self._id, number, processor_blob, symbols_blob, pass_token,
                              key=key, pure=False)
        task.inner, task.key = inner, key
        self._by_number[number] = (task, chunk)
        self._outstanding.add(task)
        task.add_done_callback(lambda t, number=number: self._forget(number, t))
        inner.add_done_callback(lambda f, task=task: _complete(task, f))
        if self._ended is not None:  # the client closed while this was submitted (a close drops it)
            task.complete_with_error(DaskClientClosed(self._ended))
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
        index = self._index
        # what already runs on a worker cannot be stopped by Dask: leave it be. Known from the started
        # reports; a chunk that started in the last milliseconds (its report still on its way) is found
        # with client.call_stack, bounded: a worker stuck in GIL-holding C code must not delay the Stop
        # by the comm timeouts
        unknown = [t for t in tasks if t not in index]
        executing: set[Any] = set()
        client = self._client
        if unknown and self._ended is None:
            try:
                stacks = client.sync(client.scheduler.call_stack, keys=[t.key for t in unknown],
                                     callback_timeout=_CALL_STACK_TIMEOUT)
                executing = {key for per_worker in stacks.values() for key in per_worker}
            except Exception:  # cannot tell (a worker just died, timeout): count them all as possibly running
                executing = {t.key for t in unknown}
        for task in unknown:
            if task.key in executing:
                index.setdefault(task, 0)  # running; which symbol of it, its report will say
        stop = [t for t in unknown if t.key not in executing]
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
        # The batch is over: its stop event is set, so any chunk of it still queued or running on a
        # worker (on any host) sees its token cancelled and runs no further symbol.
        self._channel.close()
        self._backend._batch_ended(self._channel.event_name)
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
    # of 5 ms took 0.99x a dask.bag's time (0.05 s: 1.09x). A Stop never waits for a running chunk, and the
    # worker token (on any host) stops it at its next symbol.
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
        self._ended: deque[tuple[float, str]] = deque()  # (when, name) of ended batches' stop events

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
        batch = _DaskBatch(self, token)
        self._clear_ended(_KEEP_ENDED_EVENT)
        return batch

    def _batch_ended(self, event_name: str) -> None:
        self._ended.append((time.monotonic(), event_name))

    def _clear_ended(self, older_than: float) -> None:
        """Remove from the scheduler the stop events of batches that ended ``older_than`` seconds ago
        (a set event stays there until cleared; a chunk of an ended batch that still ran has seen it)."""
        client, ended = self._client, self._ended
        if client is None or not ended:
            return
        names: list[str] = []
        limit = time.monotonic() - older_than
        while ended and ended[0][0] <= limit:
            names.append(ended.popleft()[1])
        if names:
            clear_events(client, names)

    def close(self) -> None:
        """Close the client and the LocalCluster the engine started (never a client you passed).

        A batch still running on them returns at once: its chunks in flight end as ERRORs
        (:class:`DaskClientClosed`), the symbols never submitted are unprocessed."""
        with self._lock:
            self._closed = True
            finalizer = self._finalizer
        if finalizer is None:  # a client you passed: only the stop events of batches ended a while ago go
            self._clear_ended(_KEEP_ENDED_EVENT)  # (a worker may be about to look at a newer one)
            return
        with self._lock:
            self._finalizer = None
            self._client, self._cluster = None, None
        for batch in list(self._batches):
            batch.end(DaskClientClosed("the engine was closed while this chunk was in flight"))
        finalizer()

    def __repr__(self) -> str:
        where = "LocalCluster" if self._given is None else repr(self._given)
        return f"<DaskBackend {where} max_workers={self._max_workers}>"


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
