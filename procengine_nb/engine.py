"""The processing engine: run a batch of symbols through one function on an executor.

>>> engine = ProcessingEngine(lambda s: s.lower(), max_workers=2)
>>> result = engine.process_batch(["A", "B", "C"])
>>> sorted(r.value for r in result), result.cancelled, list(result.unprocessed)
(['a', 'b', 'c'], False, [])
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any, Protocol, runtime_checkable

from procengine_nb._batch import BatchRun, BatchSettings
from procengine_nb._safe import safe_repr, safe_str, type_name
from procengine_nb._validation import check_callable, check_int, check_number, check_seconds, check_type
from procengine_nb.backends import Backend, make_backend
from procengine_nb.backends.asyncio import is_async_callable, is_async_generator_callable
from procengine_nb.cancellation import CancellationToken
from procengine_nb.handle import JobHandle
from procengine_nb.models import BatchResult, JobType, ProcessingJob, ResultStatus, coerce_symbols
from procengine_nb.observe import JobView, Publisher
from procengine_nb.progress import ProgressCallback
from procengine_nb.store import (
    ResultStore,
    StoreSession,
    code_fingerprint,
    default_batch_name,
    make_key_function,
    resolve_store,
)

__all__ = ["IProcessingEngine", "ProcessingEngine"]


@runtime_checkable
class IProcessingEngine(Protocol):
    """What a processing engine offers; :class:`ProcessingEngine` satisfies it."""

    def process_batch(
        self,
        job_or_symbols: ProcessingJob | Iterable[Any],
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
    ) -> BatchResult: ...

    def start(
        self,
        job_or_symbols: ProcessingJob | Iterable[Any],
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
    ) -> JobHandle: ...


def _processor_name(processor: object) -> str:
    """The processor's ``__qualname__`` (else its type's name) as short, safe text; never raises."""
    try:
        name = getattr(processor, "__qualname__", None)
    except Exception:  # a callable object whose __getattr__ raises
        name = None
    return safe_str(name, 80) if name else type_name(processor)


def _accepts_token(processor: Callable[..., Any]) -> bool:
    """True when ``processor`` declares a ``cancellation_token`` parameter it can take by keyword."""
    try:
        parameter = inspect.signature(processor).parameters.get("cancellation_token")
    except Exception:  # builtins and some C callables have no signature; a hostile __getattr__ neither
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY,
    )


def _coroutine_backend(processor: Callable[..., Any], backend: str | Backend | None,
                       executor: Executor | None) -> str | Backend:
    """The backend for an async processor: ``"asyncio"`` unless one that can await was asked for.

    Refuses, naming the fix, what cannot run coroutines (a worker process or a Dask worker has no
    event loop of ours, and a user's executor would hand back coroutine objects)."""
    name = _processor_name(processor)
    fix = ("drop it (the engine then awaits the coroutines on its own event loop, max_workers at once), "
           "or pass a sync function")
    if executor is not None:
        raise TypeError(f"processor {name!r} is an async function, which executor= cannot run: {fix}")
    if isinstance(backend, Backend):
        if getattr(backend, "runs_coroutines", False):
            return backend
        raise TypeError(f"processor {name!r} is an async function, which the {backend.name} backend "
                        f"cannot run: {fix}")
    if backend in (None, "threads", "asyncio"):
        return "asyncio"
    if backend in ("processes", "dask"):
        raise TypeError(f"processor {name!r} is an async function, which the {backend} backend cannot "
                        f"run (its workers have no event loop): use backend='asyncio' (the default for "
                        f"async functions), or a sync function that calls asyncio.run() itself")
    return backend  # an unknown name: make_backend says which ones exist


def _check_retry_on(retry_on: object) -> tuple[type[BaseException], ...]:
    """``retry_on`` as a non-empty tuple of exception classes, or a TypeError/ValueError naming the problem."""
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not classes:
        raise ValueError("retry_on must name at least one exception class (use retries=0 for no retries)")
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on must be an exception class or a tuple of them, not {type_name(cls)}"
                            + (f" ({safe_repr(cls, 60)})" if not isinstance(cls, type) else f" ({cls.__qualname__})"))
    return classes  # type: ignore[return-value]


def _check_stall_after(stall_after: object) -> float | None:
    """``stall_after`` as float seconds > 0, or None; else a TypeError/ValueError saying what is accepted."""
    accepted = "a finite number of seconds > 0, or None (five times the median duration, at least 10 s)"
    if stall_after is None:
        return None
    if isinstance(stall_after, bool) or not isinstance(stall_after, (int, float)):
        raise TypeError(f"stall_after must be {accepted}, not {type_name(stall_after)}")
    if not math.isfinite(stall_after) or stall_after <= 0:
        raise ValueError(f"stall_after must be {accepted}, got {safe_repr(stall_after, 40)}")
    return float(stall_after)


# constructor options that are the caller's objects: a follow-up job's engine holds them weakly
_RESOURCES = ("executor", "backend", "client")


class _Recipe:
    """How to make an engine like this one again, for a follow-up job (``handle.retry()``/``resume()``)
    once the engine that ran the first job is gone or closed (``run()`` closes its own).

    Holds the processor and the plain settings; the caller's own objects (``executor=``, a ``Backend``,
    ``client=``) only weakly, so an ended job listed by ``jobs()`` never keeps a pool or a cluster alive.
    """

    __slots__ = ("processor", "_plain", "_weak")

    def __init__(self, processor: Callable[..., Any], options: dict[str, Any]) -> None:
        self.processor = processor
        self._plain: dict[str, Any] = {}
        self._weak: dict[str, Any] = {}
        for name, value in options.items():
            if name in _RESOURCES and value is not None and not isinstance(value, str):
                try:
                    self._weak[name] = weakref.ref(value)
                    continue
                except TypeError:  # not weakly referenceable: kept as it is
                    pass
            self._plain[name] = value

    def make(self) -> ProcessingEngine:
        """A new engine with the same processor and settings (RuntimeError if a resource is gone)."""
        options = dict(self._plain)
        for name, ref in self._weak.items():
            value = ref()
            if value is None:
                raise RuntimeError(f"cannot start a follow-up job: the {name}= the first job ran on no longer "
                                   "exists; use engine.retry(result) / engine.resume(result) on a new engine")
            options[name] = value
        return ProcessingEngine(self.processor, **options)


class _Origin:
    """Where a job came from, for its follow-ups: its engine (weakly) and the recipe of a new one."""

    __slots__ = ("engine", "recipe", "reuse")

    def __init__(self, engine: ProcessingEngine) -> None:
        self.engine = weakref.ref(engine)
        self.recipe = engine._recipe
        self.reuse = True
        """False when the engine is closed at the end of the job (``run()``'s own): make a new one."""

    def engine_for_follow_up(self) -> tuple[ProcessingEngine, bool]:
        """An engine for a follow-up job and whether the follow-up owns it (closes it at its end)."""
        engine = self.engine() if self.reuse else None
        if engine is not None and not engine._closed:
            return engine, False
        return self.recipe.make(), True


class CloseAtEnd:
    """A job view that releases an engine's backend (e.g. a LocalCluster it started) when the batch
    ends, on the job thread, before ``handle.result()`` returns (``run()`` and follow-up jobs own theirs)."""

    def __init__(self, engine: ProcessingEngine) -> None:
        self._engine: ProcessingEngine | None = engine

    def update(self, progress: Any) -> None:
        """Nothing to show."""

    def finish(self, result: Any, error: BaseException | None) -> None:
        engine, self._engine = self._engine, None  # an ended job listed by jobs() does not keep it
        if engine is not None:
            engine.close()


class ProcessingEngine:
    """Runs a batch of symbols through ``processor`` on a pool of workers, with progress and cancel.

    Args:
        processor: called once per symbol, ``processor(symbol)``; if it declares a
            ``cancellation_token`` parameter it also gets the batch's token (cooperative cancel).
            Raising :class:`ProcessingCancelledException` ends that symbol as CANCELLED; any other
            exception as ERROR. Never stops the batch. An ``async def`` processor (or a partial of
            one, or an object with an ``async def __call__``) runs on the ``"asyncio"`` backend: its
            coroutines are awaited on an event loop the batch owns, and a cancel stops them at their
            next ``await`` (CANCELLED). A sync processor that returns an awaitable has it awaited on
            the batch's loop too (on threads, by the worker that called it).
        max_workers: how many symbols run at once (default: ``min(32, cpu_count + 4)`` threads; 32
            coroutines for an async processor).
        executor: any ``concurrent.futures.Executor`` to run on instead of the engine's own thread
            pool; the engine never shuts it down. One whose workers do not share memory (a
            ``ProcessPoolExecutor``, Dask's ``ClientExecutor``, or ``shares_memory = False``) gets chunks
            as ``backend="processes"`` does; see :func:`procengine_nb.backends.threads.classify`.
        backend: ``"threads"`` (default), ``"processes"`` (loky worker processes, for CPU-bound work),
            ``"dask"`` (a ``distributed`` cluster: ``client=`` a Client or an address; without one a
            LocalCluster is started at the first batch and closed by :meth:`close`), or a
            :class:`~procengine_nb.backends.Backend`. See ``procengine_nb.backends``.
        max_errors: cancel the batch (with a reason) once more than this many symbols failed.
        timeout: seconds a symbol may take from the moment its own processing starts on a worker
            (never from its submission: a symbol queued behind stuck ones is not timed until it
            starts); a late one becomes an ERROR with a ``TimeoutError`` (its thread finishes on its
            own; its result is dropped). Symbols then go one per task. On the asyncio backend it
            counts from the start of the symbol's own coroutine, which is cancelled when it runs late.
        retries: how many more times a failing symbol is tried (0: none) when its exception is an
            instance of ``retry_on``. Only its final outcome is a result (``SymbolResult.attempts``
            says how many calls it took) and only that one is counted and published as failed.
        retry_on: the exception class(es) worth a retry (default: any ``Exception``; a ``TimeoutError``
            from ``timeout=`` is one).
        backoff: seconds before the first retry, doubled for each next one (``backoff * 2**k``), each
            scaled by a random factor in [0.5, 1] (jitter). A waiting symbol holds no worker: the batch
            runs other symbols meanwhile (while ``2 * max_workers`` symbols wait, it draws no new ones),
            and a Stop does not wait for it: it ends as its last ERROR result.
        eta_smoothing: None for the average rate since the start, or an EMA factor in (0, 1].
        chunk_size: symbols per executor task; None adapts it to measured task time (tiny tasks are
            grouped so the executor's hand-off does not dominate, long ones go one at a time).
        clock: the time source (seconds), injectable for tests.
        stall_after: seconds after which a running symbol counts as stalled (``handle.stalled()``, and
            the panel names it); None: five times the median duration of the completed symbols, at
            least 10 s.
        **backend_options: the backend's own options (``client=``, ``cluster_options=`` for Dask).

    A batch's pool is created for that batch and shut down at its end: no thread outlives its last
    task. Batches are independent, so one engine may run several at once.

    >>> engine = ProcessingEngine(len, max_workers=2, max_errors=0)
    >>> engine.process_batch([[1], [1, 2]]).progress.percentage
    100.0
    """

    def __init__(
        self,
        processor: Callable[..., Any],
        *,
        max_workers: int | None = None,
        executor: Executor | None = None,
        backend: str | Backend | None = None,
        max_errors: int | None = None,
        timeout: float | None = None,
        eta_smoothing: float | None = None,
        chunk_size: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        stall_after: float | None = None,
        **backend_options: Any,
    ) -> None:
        options = {"max_workers": max_workers, "executor": executor, "backend": backend, "max_errors": max_errors,
                   "timeout": timeout, "eta_smoothing": eta_smoothing, "chunk_size": chunk_size, "clock": clock,
                   "retries": retries, "retry_on": retry_on, "backoff": backoff, "stall_after": stall_after,
                   **backend_options}
        check_callable(processor, "processor")
        check_int(max_workers, "max_workers", minimum=1, allow_none=True)
        check_int(max_errors, "max_errors", minimum=0, allow_none=True)
        check_seconds(timeout, "timeout", strict=True, allow_none=True)
        check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
        check_number(eta_smoothing, "eta_smoothing", minimum=0, strict=True, maximum=1, allow_none=True)
        check_type(executor, Executor, "executor", allow_none=True)
        if executor is not None and backend not in (None, "threads"):
            raise ValueError("pass either executor= or backend=, not both")
        check_type(backend, (str, Backend), "backend", what="a str or a Backend", allow_none=True)
        check_callable(clock, "clock")
        check_int(retries, "retries", minimum=0)
        retry_on = _check_retry_on(retry_on)
        check_seconds(backoff, "backoff")
        stall_after = _check_stall_after(stall_after)
        if is_async_generator_callable(processor):
            raise TypeError("processor is an async generator function (async def with yield), which "
                            "returns no awaitable result; make it return its value instead of yielding")
        if is_async_callable(processor):
            backend = _coroutine_backend(processor, backend, executor)
        if backend == "asyncio" and timeout is not None:
            backend_options["timeout"] = timeout
        self.processor = processor
        self._recipe = _Recipe(processor, options)
        self._closed = False  # close() was called (a follow-up job then gets a new engine)
        self.backend = make_backend(backend, max_workers=max_workers, executor=executor, **backend_options)
        self._owns_backend = not isinstance(backend, Backend)
        if timeout is not None and not self.backend.supports_timeout:
            raise ValueError(
                f"timeout= counts from each symbol's own start, which executor={type_name(executor)} cannot "
                "report (its workers do not share memory and may be on other hosts); timeout= works with "
                'backend="threads", "processes", "asyncio" and "dask", and with an executor= that is a '
                "ThreadPoolExecutor, a thread-based executor, or a ProcessPoolExecutor (concurrent.futures or loky)"
            )
        if self.backend.times_symbols and timeout is not None and getattr(self.backend, "timeout", None) != timeout:
            raise ValueError(f"the {self.backend.name} backend object times symbols itself: give it the "
                             f"timeout (e.g. AsyncBackend(timeout={timeout!r})) instead of the engine")
        self._settings = BatchSettings(
            processor=processor,
            pass_token=_accepts_token(processor),
            backend=self.backend,
            clock=clock,
            eta_smoothing=eta_smoothing,
            max_errors=max_errors,
            timeout=None if self.backend.times_symbols else timeout,
            chunk_size=chunk_size,
            target_chunk_seconds=self.backend.target_task_seconds,
            retries=retries,
            retry_on=retry_on,
            backoff=float(backoff),
            stall_after=stall_after,
        )

    @property
    def max_workers(self) -> int:
        """How many symbols run at once."""
        return self.backend.max_workers

    # -- running --------------------------------------------------------------------------------
    def process_batch(
        self,
        job_or_symbols: ProcessingJob | Iterable[Any],
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
        *,
        views: Iterable[JobView] = (),
        total: int | None = None,
        store: str | os.PathLike[str] | ResultStore | None = None,
        key: Callable[[Any], str] | None = None,
    ) -> BatchResult:
        """Process every symbol and return the :class:`BatchResult` (blocking).

        ``progress_callback`` is called with a snapshot after every completed symbol and once more at
        the end (100% unless cancelled); if it raises, the error is logged and the batch goes on.
        When ``cancellation_token`` is cancelled, pending symbols are dropped and the partial result
        returns at once (``cancelled=True``), without waiting for running tasks; the symbols never
        completed are in ``unprocessed``, in input order. Work that had already finished when the
        cancel arrived is kept in the results; it is reported by the final callback rather than one
        callback each, so a slow callback cannot delay the Stop.

        ``job_or_symbols`` with ``len()`` (a list, tuple, range, Series...) is read as it is; one without
        (an iterator, a generator) is drawn lazily on the batch's thread, at most an in-flight window
        ahead, so ``start()`` returns at once and an endless generator runs until a Stop or a deadline
        (``CancellationToken.cancel_after``) in bounded memory. ``total=`` is a hint of how many it will
        yield; without it ``total_symbols`` counts the symbols drawn so far and ``total_known`` is False
        (views show no percentage or ETA). On a cancel, ``unprocessed`` holds the symbols drawn but never
        completed, the rest stays in the iterator (``input_exhausted`` is False) and :meth:`resume`
        continues with both. An input that raises while drawn ends the batch cancelled, with the reason
        and the exception (``input_error``); the symbols drawn before are all accounted for. A
        ``DataFrame``, a ``dict``, a ``str``/``bytes``/``memoryview`` are refused with a TypeError
        saying what to pass.

        ``store=`` (a path to an SQLite file, or a :class:`~procengine_nb.ResultStore`) makes the
        results durable: each completed result is written by the batch's writer thread, at most ~0.5 s
        or ~1,000 results behind (a locked file delays only the writer: never the batch, a callback,
        the Stop or the return), and a symbol whose key (its type and ``str(symbol)``, a ``str`` symbol
        itself, or ``key(symbol)`` when ``key=`` is given) already has a SUCCESS in the store under this
        batch's name, made by the same processor code (``ResultStore(..., reuse="any")``: by any code),
        is not run again: it comes back at once with ``from_store=True`` (counted in
        ``progress.from_store``). Rerunning the same call after a crash (even a kill -9 of the kernel)
        therefore computes only what was in flight or not yet committed. The batch's name is the job's
        ``name``; a job without one uses the processor's ``module.qualname`` (a lambda or a
        ``functools.partial`` has no name that tells two calls apart: name the job). A bad store (a
        missing folder, another version's file) is an error here, before any symbol runs; a ``key=``
        (or a ``str()``) that raises is that symbol's ERROR, never run. ``ResultStore.flush()`` waits
        for the writes. See ``procengine_nb.store``.

        >>> token = CancellationToken()
        >>> token.cancel()
        True
        >>> ProcessingEngine(str).process_batch(["A", "B"], cancellation_token=token).unprocessed
        UnprocessedView(['A', 'B'])
        >>> result = ProcessingEngine(str).process_batch(iter("ABC"))
        >>> len(result), result.progress.total_symbols, result.input_exhausted
        (3, 3, True)
        """
        return self._prepare(job_or_symbols, progress_callback, cancellation_token, views, total, store, key).run()

    def start(
        self,
        job_or_symbols: ProcessingJob | Iterable[Any],
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
        *,
        views: Iterable[JobView] = (),
        total: int | None = None,
        store: str | os.PathLike[str] | ResultStore | None = None,
        key: Callable[[Any], str] | None = None,
    ) -> JobHandle:
        """Start :meth:`process_batch` on a background thread and return its :class:`JobHandle` at once.
        Same arguments (``total=`` for a lazy input); a generator is drawn on that thread, not here.

        ``store=`` and ``key=`` as for :meth:`process_batch`; the store is checked here, before the
        thread starts.

        >>> handle = ProcessingEngine(str.upper).start(["a", "b"])
        >>> sorted(r.value for r in handle.result(timeout=10))
        ['A', 'B']
        """
        batch = self._prepare(job_or_symbols, progress_callback, cancellation_token, views, total, store, key)
        return JobHandle._start(batch, _Origin(self))

    def retry(
        self,
        previous: BatchResult,
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
        *,
        include_cancelled: bool = True,
    ) -> BatchResult:
        """Process again only the symbols that failed in ``previous`` (and, by default, those that
        stopped cooperatively), as a new batch of type ``JobType.RETRY``."""
        job = self._retry_job(previous, include_cancelled)
        return self.process_batch(job, progress_callback, cancellation_token)

    def _retry_job(self, previous: BatchResult, include_cancelled: bool = True) -> ProcessingJob:
        """The job :meth:`retry` runs (the symbols that failed, and by default those that stopped)."""
        self._check_previous(previous)
        check_type(include_cancelled, bool, "include_cancelled")
        wanted = {ResultStatus.ERROR, ResultStatus.CANCELLED} if include_cancelled else {ResultStatus.ERROR}
        symbols = [r.symbol for r in previous if r.status in wanted]
        return ProcessingJob(symbols, JobType.RETRY, name=self._follow_up_name(previous, "retry"))

    def resume(
        self,
        previous: BatchResult,
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
    ) -> BatchResult:
        """Process only the symbols ``previous`` never completed (its ``unprocessed``), in input order,
        as a new batch of type ``JobType.RESUME``; for a lazy input not used up
        (``previous.input_exhausted`` is False), then the rest of the same iterator.

        >>> numbers = iter(range(10))
        >>> token = CancellationToken()
        >>> engine = ProcessingEngine(lambda n: token.cancel() if n == 3 else n, max_workers=1, chunk_size=1)
        >>> first = engine.process_batch(numbers, cancellation_token=token)
        >>> first.cancelled, first.input_exhausted
        (True, False)
        >>> rest = engine.resume(first)
        >>> sorted([r.symbol for r in first] + [r.symbol for r in rest]) == list(range(10))
        True
        """
        follow = self._resume_job(previous)
        return self.process_batch(follow, progress_callback, cancellation_token)

    def _resume_job(self, previous: BatchResult) -> ProcessingJob:
        """The job :meth:`resume` runs (``unprocessed``, then the rest of a lazy input)."""
        self._check_previous(previous)
        name = self._follow_up_name(previous, "resume")
        job = previous.job
        if job is not None and job.lazy and not previous.input_exhausted:
            hint = None if job.total is None else max(0, job.total - len(previous))
            symbols: Any = itertools.chain(tuple(previous.unprocessed), job.symbols)
            return ProcessingJob(symbols, JobType.RESUME, name=name, total=hint)
        return ProcessingJob(tuple(previous.unprocessed), JobType.RESUME, name=name)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release what the engine's backend holds: the LocalCluster or client it started for
        ``backend="dask"``; for ``backend="processes"``, the workers of tasks a Stop abandoned (the warm
        pool itself stays for the next engine: ``procengine_nb.backends.processes.shutdown_pools()``
        stops it). Threads: nothing. Never waits for running tasks.
        Idempotent. A Backend object, client or executor you passed in is yours and is not closed.

        >>> with ProcessingEngine(str.upper) as engine:
        ...     len(engine.process_batch(["a"]))
        1
        """
        self._closed = True
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> ProcessingEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------
    def _prepare(
        self,
        job_or_symbols: ProcessingJob | Iterable[Any],
        progress_callback: ProgressCallback | None,
        cancellation_token: CancellationToken | None,
        views: Iterable[JobView] = (),
        total: int | None = None,
        store: object = None,
        key: Callable[[Any], str] | None = None,
    ) -> BatchRun:
        if isinstance(job_or_symbols, ProcessingJob):
            job = job_or_symbols
            if total is not None:
                if job.total is not None and job.total != total:
                    raise ValueError(f"total={safe_repr(total, 40)} differs from the job's own total ({job.total})")
                job = dataclasses.replace(job, total=total)
        else:
            job = ProcessingJob(coerce_symbols(job_or_symbols, "job_or_symbols"), total=total)
        check_callable(progress_callback, "progress_callback", allow_none=True)
        check_type(cancellation_token, CancellationToken, "cancellation_token",
                   what="a procengine_nb.CancellationToken", allow_none=True)
        if cancellation_token is None:
            cancellation_token = CancellationToken()
        if isinstance(views, (str, bytes)) or not isinstance(views, Iterable):
            raise TypeError(f"views must be an iterable of views, not {type_name(views)}")
        session = self._store_session(job, store, key)
        publisher = Publisher(progress_callback, views)
        return BatchRun(self._settings, job, publisher, cancellation_token, session)

    def _store_session(self, job: ProcessingJob, store: object, key: Callable[[Any], str] | None
                       ) -> StoreSession | None:
        """The batch's store session (``store=`` checked now, on the caller's thread), or None."""
        key_function = make_key_function(key)
        resolved = resolve_store(store)
        if resolved is None:
            if key is not None:
                raise ValueError("key= is only used with store=: pass store= too, or drop key=")
            return None
        name = job.name or default_batch_name(self.processor)
        if not name:
            raise ValueError(
                "store= needs a batch name to find this batch's results again, and this processor has "
                "none that tells two calls apart (a lambda, a functools.partial, a callable object): "
                "name the job, e.g. ProcessingJob(symbols, name='prices') or run(..., name='prices')"
            )
        return resolved._session(name, key_function, code_fingerprint(self.processor))

    @staticmethod
    def _check_previous(previous: object) -> None:
        check_type(previous, BatchResult, "previous", what="a BatchResult")

    @staticmethod
    def _follow_up_name(previous: BatchResult, verb: str) -> str:
        base = previous.job.display_name if previous.job is not None else "batch"
        return f"{base} ({verb})"

    def __repr__(self) -> str:
        name = _processor_name(self.processor)
        return f"<ProcessingEngine processor={name} backend={self.backend.name} max_workers={self.max_workers}>"
