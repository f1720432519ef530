"""The ``"dask"`` backend: a ``distributed`` cluster (``pip install procengine_nb[dask]``).

>>> from procengine_nb import ProcessingEngine
>>> with ProcessingEngine(abs, backend="dask", max_workers=2) as engine:     # doctest: +SKIP
...     sorted(r.value for r in engine.process_batch([-1, 2, -3]))             # a LocalCluster
[1, 2, 3]

Which cluster:

- ``client=<distributed.Client>``: used as it is; the engine never closes it. It must be a synchronous
  client: an asynchronous one (``Client(..., asynchronous=True)``) is refused with a ``TypeError``.
- ``client="tcp://host:8786"``: the engine connects a ``Client`` at its first batch, on the batch's
  thread (``start()`` returns at once; a Stop ends the wait), and closes it in ``engine.close()``. A
  scheduler that cannot be reached (within ``distributed.comm.timeouts.connect``, 30 s by default)
  ends the batch cancelled, every symbol unprocessed, with a reason naming the address
  (:class:`DaskUnreachable`); the next batch tries again. Reading ``engine.max_workers`` (or
  ``repr(engine)``) before the first batch connects, on the caller's thread.
- no client: the engine starts a ``LocalCluster`` on 127.0.0.1 (``max_workers`` single-threaded
  worker processes, default: the number of CPUs; no dashboard) at its **first batch**, keeps it for
  the next batches (starting one takes seconds), and closes it in ``engine.close()`` — or at the end
  of a ``with ProcessingEngine(...)`` block, or when the engine is garbage-collected / the interpreter
  exits. Its logs below ERROR are silenced (they would land in the cell), and its workers ignore SIGINT
  (a terminal's Ctrl-C reaches the whole process group: the interrupt is the caller's, and the engine
  closes the workers). ``cluster_options={...}`` adds or overrides ``LocalCluster`` arguments.

Each chunk is one Dask task with a unique key (``procengine-chunk-<batch id>-<n>``), submitted with
``client.submit`` and followed by a coroutine on the client's event loop that fetches its outcome (no
thread ever blocks on a Dask future: not the caller's, not the batch's, not distributed's callback
thread, which Python joins at exit); at most the engine's bounded window of tasks is on the cluster at
once. Workers must be able to import ``procengine_nb``.

The Stop and each chunk's progress travel over the scheduler (see
:mod:`~procengine_nb.backends._dask_channel`), so they work the same on a LocalCluster, through your
own ``Client()`` and with workers on other hosts; nothing is written to the client's disk:

- Stop sets the batch's ``distributed.Event``; on every worker running a chunk of the batch, the
  processors' token (a worker-local :class:`~procengine_nb.backends._dask_channel.WorkerToken`) turns
  cancelled within a few milliseconds (measured: median 1-2 ms, a worker on another host included),
  so a chunk stops before its next symbol and a cooperative processor can stop mid-symbol. The same
  happens when the batch ends (a chunk still running then runs no further symbol).
- A processor's own ``cancellation_token.cancel(reason)`` stops the batch, as on threads: the batch
  ends cancelled with that ``reason`` (the symbols its chunk ran are counted).
- ``timeout=``: a chunk given up on has its own token cancelled on its worker (a cooperative
  processor stops) and its Dask task released; on the engine's own LocalCluster, the workers still
  running such chunks half a second later are restarted (the next chunks and batches get their places; the chunks of
  this batch they also ran run again elsewhere, none lost).
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
  in the last milliseconds, from one bounded ``call_stack`` of every executing task).
- On your own client or cluster, a chunk given up on by ``timeout=`` whose processor ignores its token
  keeps its worker thread until it returns (the engine restarts only the workers of its own cluster):
  the next chunks, and the next batch, run on the other workers and wait while none is free.
- A chunk's first symbol may start before its worker heard of a Stop that came just before it (the
  worker's first look at the batch's event takes one scheduler round trip); its token turns cancelled
  then.
- When your client closes, the tasks it had running on a cluster that stays up are released by the
  scheduler but run on to their end (nobody is left to set the stop event).
- A worker that dies is handled by the scheduler: its tasks run again on another worker, so no symbol
  is lost. A task that keeps killing its workers fails after ``distributed.scheduler.allowed-failures``
  attempts with ``KilledWorker``: that chunk's symbols become ERROR results and the batch goes on.
- When a batch ends, the tasks of its chunks still running (a processor that ignores its token) are
  released: they run on to the end of their current symbol (their token is cancelled), and their
  results are never fetched.
- ``distributed`` may keep process-wide helper threads once used (``Dask-Offload``); they are not per
  batch and do not grow. A Stop while an address is being connected leaves the connecting thread
  (``procengine-dask-connect``) to finish its attempt (at most the connect timeout); a connection it
  makes serves the next batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, wait
from typing import Any

from procengine_nb.backends._chunk_codec import ProcessorBlob, encode_chunk
from procengine_nb.backends._dask_channel import ASKED, ClientChannel, abandon_chunks, clear_events, run_chunk_task
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
_ABANDON_REASON = "given up on by procengine_nb (past its timeout=)"
_ASKED_GRACE = 2.0  # seconds a batch stopped by a processor waits for that processor's chunk results
_ABANDON_GRACE = 0.5  # seconds an abandoned chunk's token has to stop it before its worker is restarted
_TELL_TIMEOUT = 5.0  # seconds to tell the workers which chunks were given up on (before any restart)
_RESTART_TIMEOUT = 60.0  # seconds a restart of the engine's own workers may take (off every caller's thread)


class DaskTaskCancelled(RuntimeError):
    """A chunk's Dask task was cancelled by something other than this batch (a restart, a close)."""


class DaskUnreachable(ConnectionError):
    """The Dask scheduler at the address given as ``client=`` could not be reached."""


class DaskClientClosed(RuntimeError):
    """The Dask client (or the engine's own cluster) was closed while this chunk was in flight."""


_WATCH_INTERVAL = 0.2  # seconds between two looks at the client's status during a batch
_KEEP_ENDED_EVENT = 60.0  # seconds an ended batch's stop event stays on the scheduler at least (a worker
# whose chunk started just before the Stop may look at it only now: cleared, it would wait in vain)


async def _follow(batch: _DaskBatch, task: RemoteTask, future: Any) -> None:
    """On the client's event loop: wait for the chunk's Dask future, fetch its outcome from the worker
    and complete ``task`` with it.

    No thread ever blocks on it: not the caller's, not the batch's, and not distributed's callback
    thread (``add_done_callback`` + ``future.result()`` there waited, without a bound, on a client whose
    cluster may be going away, and Python joins that thread at exit). A chunk still in flight when the
    client's loop stops is ended by the batch's watcher (:class:`DaskClientClosed`)."""
    try:
        outcome = await future._result()
    except BaseException as exc:  # KilledWorker, a worker-side RemoteSerializationError, a cancel...
        if batch.closed:  # released at the batch's end: its final snapshot still counts it as running
            return
        if future.status != "cancelled":
            if isinstance(exc, asyncio.CancelledError):  # the client's loop is stopping: the watcher ends it
                raise
            task.complete_with_error(exc)
            return
        outcome = None
    if task.done():  # cancelled by the batch already
        return
    if future.status == "cancelled":
        task.complete_with_error(DaskTaskCancelled(
            f"the Dask task {future.key!r} for this chunk was cancelled outside the engine "
            "(the client or cluster was closed or restarted?)"
        ))
        return
    try:
        payload, asked = outcome
    except Exception as exc:  # pragma: no cover - not a task of ours
        task.complete_with_error(exc)
        return
    if asked is not None:  # a processor cancelled its token: the batch stops before its short chunk counts
        batch.processor_asked(asked, then=lambda: task.complete_with_blobs(payload))
        return
    task.complete_with_blobs(payload)


async def _give_up(client: Any, batch_id: str, numbers: list[int], inners: list[Any], restart: bool) -> None:
    """On the client's event loop: tell the workers running the abandoned chunks ``numbers`` to cancel
    those chunks' tokens, release their tasks, and (``restart``: the engine's own cluster) restart the
    workers still running them ``_ABANDON_GRACE`` seconds later. Never raises (a failure leaves the
    workers busy, as without it)."""
    try:
        await asyncio.wait_for(client._run(abandon_chunks, batch_id, numbers, on_error="return"), _TELL_TIMEOUT)
    except Exception:  # a worker that cannot be reached (its processor runs on)
        pass
    busy: list[str] = []
    if restart:
        keys = {inner.key for inner in inners}
        await asyncio.sleep(_ABANDON_GRACE)  # a cooperative processor stops by itself: its worker is not restarted
        try:
            processing = await client.scheduler.processing()
            busy = [worker for worker, running in processing.items() if keys & set(running)]
        except Exception:
            busy = []
    await _release(client, inners, _ABANDON_REASON)
    if busy:
        try:
            await client.scheduler.restart_workers(workers=busy, timeout=_RESTART_TIMEOUT, wait_for_workers=False,
                                                   on_error="return", stimulus_id=f"procengine-abandon-{time.time()}")
        except Exception:
            _log.debug("restarting the Dask workers %s failed", busy, exc_info=True)


async def _release(client: Any, inners: list[Any], reason: str) -> None:
    """On the client's event loop: release tasks nobody waits for (never raises)."""
    try:
        await client._cancel(inners, reason=reason)
    except Exception:
        pass


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

    def __init__(self, backend: DaskBackend, token: CancellationToken, client: distributed.Client) -> None:
        status = getattr(client, "status", "closed")
        if status != "running":
            raise DaskClientClosed(f"Client is {status}: the Dask client must be running to start a batch")
        self._client = client
        self._token = token
        self._asking: int | None = None  # the number of the chunk whose processor cancelled the batch
        self._id = uuid.uuid4().hex
        self._blob = ProcessorBlob()
        self._numbers = itertools.count()
        self._by_number: dict[int, tuple[RemoteTask, Chunk]] = {}  # chunks in flight by their number
        self._index: dict[RemoteTask, int] = {}  # started chunks: the symbol running (-1: none any more)
        self._outstanding: set[RemoteTask] = set()
        self._given_up: set[RemoteTask] = set()  # chunks past their timeout= (see abandon())
        self._ended: str | None = None  # why the client can take no more chunks (it closed)
        self.worker_token = None  # the engine's token cannot be pickled; workers get a WorkerToken
        self._channel = ClientChannel(client, self._id, self._on_started)
        self._registration = token.register(self._channel.stop)
        self._backend = backend
        self._stop = threading.Event()
        self._poke = threading.Event()  # wakes the watcher (a processor asked, or the batch closes)
        self._asked: str | None = None  # the reason of the first processor that cancelled its token
        self._after: deque[Callable[[], Any]] = deque()  # completions to run once the token is cancelled
        self._watcher = threading.Thread(target=self._watch, name="procengine-dask-watch", daemon=True)
        self._watcher.start()
        backend._batches.add(self)

    def _on_started(self, number: Any, index: Any) -> None:  # on the client's event loop
        """A chunk's report: symbol ``index`` starts (-1: none runs any more); passed on to the chunk's
        hooks (``on_start`` at its first report, ``on_symbol``). ``number`` :data:`ASKED`: a processor
        cancelled its token (``index`` is its reason)."""
        if number == ASKED:
            asking, reason = index
            self.processor_asked(str(reason), asking)
            return
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

    @property
    def closed(self) -> bool:
        """True once the batch has ended (:meth:`close`)."""
        return self._stop.is_set()

    def processor_asked(self, reason: str, chunk: int = -1, then: Callable[[], Any] | None = None) -> None:
        """A processor of chunk number ``chunk`` cancelled its token: the batch stops, with its reason
        (as on threads); :meth:`stop_running` waits briefly for that chunk's results (it ran them).
        ``then`` (that chunk's completion) runs once the batch's token is cancelled."""
        if chunk >= 0 and self._asking is None:
            self._asking = chunk
        if self._asked is None:
            self._asked = reason
        if then is not None:
            self._after.append(then)
        self._poke.set()  # the watcher cancels the batch's token: never its callbacks on the client's loop

    def stop_running(self, futures: Iterable[Future[Any]]) -> None:
        """When a processor stopped the batch: wait, at most ``_ASKED_GRACE`` seconds, for its chunk's
        results (it stops after the symbol that asked), so what it ran counts. Else nothing (a Stop
        never waits for running chunks)."""
        asking = self._asking
        found = self._by_number.get(asking) if asking is not None else None
        if found is not None:
            wait([found[0]], timeout=_ASKED_GRACE)

    def _forget(self, number: int, task: RemoteTask) -> None:
        self._outstanding.discard(task)
        self._given_up.discard(task)
        self._by_number.pop(number, None)
        self._index.pop(task, None)

    def _watch(self) -> None:
        client, poke = self._client, self._poke
        while not self._stop.is_set():
            poke.wait(_WATCH_INTERVAL)
            poke.clear()
            if self._stop.is_set():
                return
            if self._asked is not None:
                self._token.cancel(self._asked)
                while self._after:
                    self._after.popleft()()
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
        client.loop.add_callback(_follow, self, task, inner)
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
        # What already runs on a worker cannot be stopped by Dask: it is left be (the stop event tells its
        # processors). Which chunks run is known from their started reports; a chunk that started in the
        # last milliseconds (its report still on its way) is found with call_stack, bounded (a worker stuck
        # in GIL-holding C code must not delay the Stop by the comm timeouts). Asked for every executing
        # task (keys=None), never by key: the scheduler logs a KeyError traceback for a key it has released
        unknown = [t for t in tasks if t not in index]
        executing: set[Any] = set()
        client = self._client
        if unknown and self._ended is None:
            try:
                stacks = client.sync(client.scheduler.call_stack, keys=None, callback_timeout=_CALL_STACK_TIMEOUT)
                executing = {key for per_worker in stacks.values() for key in (per_worker or ())}
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

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Chunks past their ``timeout=``: their processors' token is cancelled on their worker (a
        cooperative processor stops), their Dask tasks are released, and on the engine's own
        LocalCluster the workers still running them are restarted, so the next chunks (and batches) get
        their places. On your own cluster a processor that ignores its token keeps its worker thread
        until it returns (distributed#2617)."""
        tasks = [f for f in futures if isinstance(f, RemoteTask) and f.inner is not None]
        if not tasks or self._ended is not None:
            return
        self._given_up.update(tasks)  # released by _give_up (after its look at which workers run them)
        numbers = [number for number, (task, _) in list(self._by_number.items()) if task in tasks]
        try:
            self._client.loop.add_callback(_give_up, self._client, self._id, numbers,
                                           [t.inner for t in tasks], self._backend._owns_cluster)
        except Exception:  # pragma: no cover - the client's loop is gone
            pass

    def close(self, *, cancelled: bool) -> None:
        self._stop.set()
        self._poke.set()
        self._registration.unregister()
        # The batch is over: its stop event is set, so any chunk of it still queued or running on a
        # worker (on any host) sees its token cancelled and runs no further symbol.
        self._channel.close()
        # Nobody reads the results of chunks still in flight now: their tasks are released (never
        # fetched: a fetch racing a closing cluster makes its scheduler and workers log tracebacks)
        left = [t.inner for t in list(self._outstanding) if not t.done() and t not in self._given_up]
        if left and self._ended is None:
            try:
                self._client.loop.add_callback(_release, self._client, left, _CANCEL_REASON)
            except Exception:  # pragma: no cover - the client's loop is gone
                pass
        self._backend._batch_ended(self._channel.event_name)
        self._backend._batches.discard(self)
        if self._watcher is not threading.current_thread():
            self._watcher.join()


class _Refusing(BatchExecutor):
    """The batch of a backend that has no cluster to run it on (its scheduler cannot be reached): every
    chunk is refused with the reason, so the batch ends cancelled, its symbols unprocessed."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def submit_chunk(self, chunk: Chunk) -> Future[list[SymbolResult]]:
        raise DaskUnreachable(self._reason)

    def close(self, *, cancelled: bool) -> None:
        pass


class _IgnoreInterrupts(distributed.WorkerPlugin):
    """On the engine's own cluster's workers: ignore SIGINT. A terminal's Ctrl-C reaches the whole
    process group; the interrupt is the caller's (its batch stops), while the workers, which the
    engine closes, would each print a ``KeyboardInterrupt`` traceback."""

    def setup(self, worker: Any) -> None:
        import signal

        if threading.current_thread() is threading.main_thread():  # the worker process's own loop
            signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        if isinstance(client, distributed.Client) and getattr(client, "asynchronous", False):
            raise TypeError("client is an asynchronous distributed.Client (asynchronous=True); the engine needs a "
                            "synchronous one (Client(..., asynchronous=False)) or the scheduler's address as a str")
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
        self._unreachable: str | None = None  # why the latest batch got no connection to the address

    @property
    def client(self) -> distributed.Client | None:
        """The client in use (None until the first batch when the engine starts or connects one)."""
        return self._client

    @property
    def _owns_cluster(self) -> bool:
        return self._given is None

    @property
    def max_workers(self) -> int:
        """``max_workers=`` when given; else one per CPU for the engine's own LocalCluster, else the
        cluster's total threads (for an address, reading it before the first batch connects; a batch
        that got no connection reads 1)."""
        if self._max_workers is not None:
            return self._max_workers
        if self._given is None:  # our own LocalCluster: one single-threaded worker per CPU
            return _cpu_count()
        if self._client is None and self._unreachable is not None:
            return 1
        threads = sum(self._ensure_client().nthreads().values())
        return max(1, threads)

    def _ensure_client(self) -> distributed.Client:
        if isinstance(self._given, str):
            return self._ensure_connected(self._given)
        with self._lock:
            if self._closed:
                raise RuntimeError("this dask backend was closed")
            if self._client is not None:
                return self._client
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
            try:
                client.register_plugin(_IgnoreInterrupts(), name="procengine-ignore-sigint")
            except Exception:  # only quieter Ctrl-Cs are lost
                _log.debug("the workers' SIGINT plugin could not be registered", exc_info=True)
            return client

    def _ensure_connected(self, address: str) -> distributed.Client:
        """The client of ``address``, connected now if need be (outside the lock: a close never waits
        for a connection; one made after the close, or beside another, is closed at once)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this dask backend was closed")
            if self._client is not None:
                return self._client
        client = distributed.Client(address, set_as_default=False)
        with self._lock:
            if self._client is None and not self._closed:
                self._client = client
                self._finalizer = weakref.finalize(self, _close_owned, client, None)
                return client
            current, closed = self._client, self._closed
        _close_owned(client, None)
        if current is None or closed:
            raise RuntimeError("this dask backend was closed")
        return current

    def open(self, token: CancellationToken) -> BatchExecutor:
        """On the batch's thread: connect (an address) or start the LocalCluster, then open the batch.

        An address is connected on a helper thread the batch waits for, so a Stop ends the batch at
        once; a scheduler that cannot be reached (after ``distributed.comm.timeouts.connect``, 30 s by
        default) gives a batch that refuses its chunks: it ends cancelled, its symbols unprocessed, with
        a reason naming the address and the error."""
        if isinstance(self._given, str) and self._client is None and not self._closed:
            failure = self._connect(token)
            if failure is not None:
                return _Refusing(failure)
        batch = _DaskBatch(self, token, self._ensure_client())
        self._clear_ended(_KEEP_ENDED_EVENT)
        return batch

    def _connect(self, token: CancellationToken) -> str | None:
        """Connect the address on a helper thread; return why the batch cannot run, or None."""
        done = threading.Event()
        failed: list[BaseException] = []

        def connect() -> None:
            try:
                self._ensure_client()
            except BaseException as exc:  # an unreachable or refusing scheduler, a closed backend
                failed.append(exc)
            finally:
                done.set()

        registration = token.register(done.set)
        try:
            threading.Thread(target=connect, name="procengine-dask-connect", daemon=True).start()
            done.wait()
        finally:
            registration.unregister()
        if failed:
            self._unreachable = (f"cannot connect to the Dask scheduler at {self._given!r}: "
                                 f"{type(failed[0]).__name__}: {failed[0]}")
            return self._unreachable
        if self._client is None:  # stopped while connecting (the connection, if made, serves the next batch)
            self._unreachable = f"stopped while connecting to the Dask scheduler at {self._given!r}"
            return self._unreachable
        self._unreachable = None
        return None

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
