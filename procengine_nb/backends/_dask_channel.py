"""The Dask backend's channel: the Stop to the workers and "started" reports back, over the scheduler.

Both directions use only the cluster's own primitives, so they reach workers on any host (no file,
no shared memory, nothing on the client's disk):

- **Stop** (client -> workers): a ``distributed.Event`` named ``procengine-stop-<batch id>`` on the
  scheduler. The client sets it on Stop and when the batch closes (the batch is over: a chunk that
  still runs or starts later runs no further symbol). In each worker process that runs a chunk of the
  batch, one coroutine on the worker's event loop waits on that event on the scheduler
  (``event_wait``, the call behind ``Event.wait``) and, once it is set, cancels the batch's
  worker-local :class:`~procengine_nb.cancellation.CancellationToken`, and with it each running chunk's
  own token (the one its processors get): it turns cancelled within a few milliseconds of Stop, on any
  host, and a chunk stops before its next symbol.
  The coroutine ends when the event is set, or at a wait's end (every 2 s) once no chunk of the batch
  runs in that process any more; a worker that loses its scheduler cancels the token too (its results
  could not be delivered).
- **A processor's own cancel** (worker -> everyone): ``cancellation_token.cancel(reason)`` cancels the
  batch's token in that process, sets the stop event from the worker, and logs
  ``[batch id, "asked", [chunk number, reason]]`` on the topic; the chunk's result carries the reason
  too, so the client cancels the batch with it before counting that (short) chunk.
- **Given up on** (client -> workers): :func:`abandon_chunks`, run on the workers with ``Client.run``,
  cancels the tokens of the chunks the batch gave up on (past their ``timeout=``), and only theirs.
- **Started** (workers -> client): each chunk logs ``[batch id, chunk number, index]`` on the
  scheduler topic ``procengine-nb`` (``Worker.log_event``) as its symbol ``index`` starts, and
  ``[batch id, chunk number, -1]`` once no symbol of it runs any more. A symbol's start is sent at once
  when the chunk's previous report is 20 ms old; within 20 ms of it, it is sent by a timer on the
  worker's loop 20 ms later (so a chunk of tiny symbols costs at most 50 reports a second, and a long
  symbol that follows short ones is still reported). The client subscribes to the topic
  (``Client.subscribe_topic``, one handler per client, routing by batch id) while it has a batch open.
  Reports from one worker reach the client in order (one stream), so a chunk's end is seen before the
  start of the next chunk on the same worker thread.

The topic is one for every batch (the scheduler keeps its last ``distributed.admin.low-level-log-length``
events, so it stays bounded); a set event stays on the scheduler until the backend clears it (at least
60 s after its batch ended, at the next batch or when the engine closes).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import distributed
from distributed.core import Status

from procengine_nb.backends._chunk_codec import load_task
from procengine_nb.backends._wire import Payload, encode_results
from procengine_nb.backends._worker import run_columns
from procengine_nb.cancellation import CancellationToken

__all__ = ["ASKED", "TOPIC", "ClientChannel", "WorkerToken", "abandon_chunks", "run_chunk_task", "stop_event_name"]

TOPIC = "procengine-nb"  # the scheduler topic that carries the started reports of every batch
_REPORT_EVERY = 0.02  # seconds: at most one started report per chunk this often (the rest by a timer)
_WAIT = 2.0  # seconds a worker's watch waits on the stop event before it looks whether it is still needed
_RETRY = 0.2  # seconds between two attempts of a watch whose scheduler call failed
_KEEP_STOPPED = 256  # stopped batches a worker process remembers (a late chunk of one runs no symbol)
_ENDED = -1  # index of a chunk's "no symbol runs any more" report
ASKED = "asked"  # in place of a chunk number: ``[batch id, ASKED, [chunk, reason]]``: a processor of that
# chunk (-1: unknown) cancelled its token
_ASKED_REASON = "a processor on a Dask worker cancelled the batch (cancellation_token.cancel())"


def stop_event_name(batch_id: str) -> str:
    """The name of the ``distributed.Event`` that stops the batch ``batch_id``."""
    return f"procengine-stop-{batch_id}"


# -- worker side ----------------------------------------------------------------------------------
class WorkerToken(CancellationToken):
    """The token processors get on a Dask worker: one per chunk, cancelled by the batch's stop event on
    the scheduler (see the module docstring) or when the batch gives the chunk up (past its
    ``timeout=``). A processor's own ``cancel(reason)`` stops the whole batch, as on threads: the batch's
    other chunks on this worker stop at once, the stop event is set for every other worker, and the
    client cancels the batch with ``reason``. Pickles as a reference to its batch, so a processor may
    pass it on (in another worker process it joins the same batch's token; anywhere else it is a token
    that is never cancelled)."""

    __slots__ = ("batch_id", "chunk", "asked")

    def __init__(self, batch_id: str, chunk: int = -1) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.chunk = chunk  # the chunk number it serves (-1: the batch's own token in this process)
        self.asked: str | None = None  # the reason, when a processor cancelled this token itself

    def __reduce__(self) -> tuple[Any, ...]:
        return (_token_for, (self.batch_id,))

    def cancel(self, reason: str | None = None) -> bool:
        """Cancel the token (a processor asking the batch to stop; see the class docstring)."""
        asked = reason if reason is not None else _ASKED_REASON
        first = CancellationToken.cancel(self, reason)
        if first:
            self.asked = asked
            _ask(self.batch_id, self.chunk, asked)
        return first


def _token_for(batch_id: str) -> CancellationToken:
    with _lock:
        state = _batches.get(batch_id)
    return state.token if state is not None else WorkerToken(batch_id)


def _ask(batch_id: str, chunk: int, reason: str) -> None:
    """A processor cancelled a token of the batch: stop the batch's chunks here, set its stop event on
    the scheduler (the other workers) and tell the client (which cancels the batch with ``reason``)."""
    with _lock:
        state = _batches.get(batch_id)
    if state is None or state.worker is None:  # a token outside any running chunk: nobody to tell
        return
    CancellationToken.cancel(state.token, reason)
    worker = state.worker
    try:
        worker.log_event(TOPIC, [batch_id, ASKED, [chunk, reason]])
        worker.loop.add_callback(_set_event, worker, stop_event_name(batch_id))
    except Exception:  # pragma: no cover - the worker is closing: nobody is listening any more
        pass


async def _set_event(worker: Any, name: str) -> None:
    try:
        await worker.scheduler.event_set(name=name)
    except Exception:  # the scheduler cannot be reached: the client still hears the report, or nothing runs
        pass


class _BatchState:
    """One batch in one worker process: its token, how many of its chunks run here (and their tokens),
    its watch and the chunks whose started report waits for the timer."""

    __slots__ = ("batch_id", "token", "worker", "running", "chunks", "watching", "pending", "timer_armed")

    def __init__(self, batch_id: str, worker: Any = None) -> None:
        self.batch_id = batch_id
        self.token = WorkerToken(batch_id)
        self.worker = worker
        self.running = 0
        self.chunks: dict[int, WorkerToken] = {}  # the running chunks' tokens by chunk number
        self.watching = False
        self.pending: set[_ChunkReport] = set()
        self.timer_armed = False


_lock = threading.Lock()
_batches: dict[str, _BatchState] = {}  # batch id -> its state in this worker process
_stopped: deque[str] = deque()  # batch ids whose token was cancelled, oldest first (bounded)


def _join(worker: Any, batch_id: str) -> _BatchState:
    with _lock:
        state = _batches.get(batch_id)
        if state is None:
            state = _batches[batch_id] = _BatchState(batch_id, worker)
        state.running += 1
        watch = not state.watching and not state.token.is_cancelled
        if watch:
            state.watching = True
    if watch:
        worker.loop.add_callback(_watch, worker, state)
    return state


def _leave(state: _BatchState) -> None:
    with _lock:
        state.running -= 1


async def _watch(worker: Any, state: _BatchState) -> None:
    """Wait on the batch's stop event on the scheduler; cancel the batch's token once it is set."""
    name = stop_event_name(state.batch_id)
    reason = "the batch was stopped (or is over)"
    while True:
        try:
            is_set = await worker.scheduler.event_wait(name=name, timeout=_WAIT)
        except Exception:  # the scheduler cannot be reached right now
            if getattr(worker, "status", None) not in (Status.running, Status.paused):
                reason, is_set = "the Dask worker lost its scheduler (its results cannot be delivered)", True
            else:
                await asyncio.sleep(_RETRY)
                is_set = False
        if is_set:
            CancellationToken.cancel(state.token, reason)
            with _lock:
                state.watching = False
                _stopped.append(state.batch_id)
                while len(_stopped) > _KEEP_STOPPED:
                    old = _batches.get(_stopped.popleft())
                    if old is not None and old.running == 0:
                        del _batches[old.batch_id]
            return
        with _lock:
            if state.running == 0:  # no chunk of the batch runs here: stop watching (a new one restarts it)
                state.watching = False
                if _batches.get(state.batch_id) is state:
                    del _batches[state.batch_id]
                return


class _ChunkReport:
    """What :func:`run_columns` writes the running symbol's index into (``report[0] = index``): sends the
    chunk's started reports (see the module docstring)."""

    __slots__ = ("_worker", "_state", "_head", "_size", "current", "_sent", "_sent_at", "__weakref__")

    def __init__(self, worker: Any, state: _BatchState, chunk: int, size: int) -> None:
        self._worker = worker
        self._state = state
        self._head = [state.batch_id, chunk]
        self._size = size
        self.current = _ENDED
        self._sent = _ENDED
        self._sent_at = float("-inf")

    def __setitem__(self, _slot: int, index: int) -> None:
        if index >= self._size:  # the chunk ended: said at once (before its result is sent)
            self.current = _ENDED
            self._send(_ENDED)
            return
        self.current = index
        now = time.monotonic()
        if now - self._sent_at >= _REPORT_EVERY:
            self._sent_at = now
            self._send(index)
            return
        state = self._state
        with _lock:
            state.pending.add(self)
            arm = not state.timer_armed
            state.timer_armed = True
        if arm:
            loop = self._worker.loop
            loop.add_callback(lambda: loop.call_later(_REPORT_EVERY, _flush, state))

    def _send(self, index: int) -> None:
        if index == self._sent:
            return
        self._sent = index
        try:
            self._worker.log_event(TOPIC, [*self._head, index])
        except Exception:  # pragma: no cover - the worker is closing: nobody is listening any more
            pass

    def flush(self) -> None:
        current = self.current
        if current != self._sent:
            self._sent_at = time.monotonic()
            self._send(current)


def _flush(state: _BatchState) -> None:
    """On the worker's loop: send the started reports the rate limit held back."""
    with _lock:
        pending, state.pending = state.pending, set()
        state.timer_armed = False
    for report in pending:
        report.flush()


def abandon_chunks(batch_id: str, numbers: list[int]) -> None:
    """Run on every worker (``Client.run``) when the batch gives up on the chunks ``numbers`` (past their
    ``timeout=``): the tokens of those that run here are cancelled (a cooperative processor stops)."""
    with _lock:
        state = _batches.get(batch_id)
        tokens = [] if state is None else [state.chunks.get(number) for number in numbers]
    for token in tokens:
        if token is not None:
            CancellationToken.cancel(token, "given up on: past its timeout=")


def run_chunk_task(batch_id: str, chunk: int, processor_blob: bytes, symbols_blob: bytes,
                   pass_token: bool) -> tuple[Payload, str | None]:
    """The Dask task of one chunk: unpickle it, run it with its own worker token (cancelled with the
    batch's; reporting each symbol's start), and return the encoded results (see
    :func:`~procengine_nb.backends._wire.encode_results`) and, when a processor cancelled its token,
    the reason it gave (else None). A chunk of a batch already stopped here runs no symbol."""
    worker = distributed.get_worker()
    state = _join(worker, batch_id)
    token = WorkerToken(batch_id, chunk)
    link = state.token.register(lambda: CancellationToken.cancel(token, state.token.reason))
    with _lock:
        state.chunks[chunk] = token
    try:
        processor, symbols = load_task(processor_blob, symbols_blob)
        report = _ChunkReport(worker, state, chunk, len(symbols))
        try:
            head, rest = run_columns(processor, symbols, token, pass_token, report)
        finally:
            report[0] = len(symbols)  # said once more if run_columns raised (an interrupt)
        return encode_results(rest, head), token.asked or state.token.asked
    finally:
        link.unregister()
        with _lock:
            state.chunks.pop(chunk, None)
        _leave(state)


# -- client side ----------------------------------------------------------------------------------
class _Routes:
    """The handler of one client's ``procengine-nb`` subscription: routes each report to its batch."""

    __slots__ = ("batches", "__weakref__")

    def __init__(self) -> None:
        self.batches: dict[str, Callable[[int, int], None]] = {}

    def __call__(self, event: Any) -> None:  # on the client's event loop
        try:
            batch_id, chunk, index = event[1]
            callback = self.batches.get(batch_id)
            if callback is not None:
                callback(chunk, index)
        except Exception:  # a malformed or foreign message on the topic: not ours
            pass


_routes: weakref.WeakKeyDictionary[Any, _Routes] = weakref.WeakKeyDictionary()
_routes_lock = threading.Lock()


async def _scheduler_call(client: Any, op: str, **kwargs: Any) -> None:
    try:
        await getattr(client.scheduler, op)(**kwargs)
    except Exception:  # the client or scheduler is closing: nothing left to reach
        pass


def _fire(client: Any, op: str, **kwargs: Any) -> None:
    """Send a scheduler call from any thread without waiting for it (never blocks, never raises)."""
    try:
        client.loop.add_callback(_scheduler_call, client, op, **kwargs)
    except Exception:  # pragma: no cover - the client's loop is gone
        pass


class ClientChannel:
    """One batch's end of the channel on the client: ``stop()`` sets the batch's stop event (from any
    thread, without waiting), and ``on_started(chunk, index)`` is called on the client's event loop
    for every started report of the batch while the channel is open. ``close()`` sets the stop event
    (the batch is over) and stops listening."""

    def __init__(self, client: distributed.Client, batch_id: str,
                 on_started: Callable[[int, int], None]) -> None:
        self.client = client
        self.batch_id = batch_id
        self.event_name = stop_event_name(batch_id)
        with _routes_lock:
            routes = _routes.get(client)
            if routes is None:
                routes = _routes[client] = _Routes()
            if not routes.batches:  # raises ClosedClientError on a closed client
                client.subscribe_topic(TOPIC, routes)
            routes.batches[batch_id] = on_started
        self._open = True

    def stop(self) -> None:
        _fire(self.client, "event_set", name=self.event_name)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.stop()
        client = self.client
        with _routes_lock:
            routes = _routes.get(client)
            if routes is None:
                return
            routes.batches.pop(self.batch_id, None)
            if not routes.batches:
                del _routes[client]
                try:
                    client.unsubscribe_topic(TOPIC)
                except Exception:  # the client is closed: its subscriptions went with it
                    pass


def clear_events(client: Any, names: list[str]) -> None:
    """Remove ended batches' stop events from the scheduler (without waiting)."""
    for name in names:
        _fire(client, "event_clear", name=name)
