"""``run()``: the notebook one-liner. Start a batch in the background and show it.

>>> from procengine_nb import run
>>> handle = run(str.upper, ["a", "b", "c"], name="letters", display=False, max_workers=2)
>>> handle.result(timeout=10).summary(), handle.panel.status.value
('3 of 3 processed: 3 ok, 0 failed', 'Done: 3 processed')
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from procengine_nb._safe import logger
from procengine_nb._validation import check_callable, check_type
from procengine_nb.backends.asyncio import is_async_callable
from procengine_nb.backends.threads import classify
from procengine_nb.cancellation import CancellationToken
from procengine_nb.engine import CloseAtEnd, ProcessingEngine
from procengine_nb.handle import JobHandle
from procengine_nb.models import ProcessingJob, coerce_symbols
from procengine_nb.progress import ProgressCallback
from procengine_nb.store import ResultStore, make_key_function, resolve_store
from procengine_nb.views.console import ConsoleProgress

__all__ = ["in_jupyter_kernel", "run", "show_job", "show_jobs"]

_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)


def in_jupyter_kernel() -> bool:
    """True when this code runs inside a Jupyter kernel (``IPython.get_ipython()`` has a ``kernel``).

    Never imports IPython: if it is not imported yet, we are not in a kernel.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return getattr(shell, "kernel", None) is not None


def _in_caller_context(processor: Callable[..., Any]) -> Callable[..., Any]:
    """``processor`` run in a copy of the current context on whatever worker thread calls it.

    Under ipykernel >= 7 the parent of output messages is a ContextVar; a pool's threads start with an
    empty context and fall back to the *currently executing* cell, so a worker's ``print`` would land
    in whichever cell runs later. Running each call in a copy of the context of the cell that called
    ``run()`` (like ``asyncio.to_thread``) sends it to that cell. ``functools.wraps`` keeps the
    signature, so a ``cancellation_token`` parameter is still seen.
    """
    context = contextvars.copy_context()

    @functools.wraps(processor)
    def call(*args: Any, **kwargs: Any) -> Any:
        return context.copy().run(processor, *args, **kwargs)

    return call


def _runs_in_threads(engine_options: dict[str, Any]) -> bool:
    backend = engine_options.get("backend")
    executor = engine_options.get("executor")
    if backend not in (None, "threads"):
        return False
    return executor is None or classify(executor)[0]  # an executor whose workers share memory


def _make_panel(handle: JobHandle) -> Any:
    try:
        from procengine_nb.views.panel import ProgressPanel
    except ImportError as exc:  # ipywidgets missing: the terminal view still works
        _log.info("no progress panel (%s); using the terminal view", exc)
        return None
    return ProgressPanel.for_handle(handle)


def run(
    processor: Callable[..., Any],
    symbols: ProcessingJob | Iterable[Any],
    *,
    progress_callback: ProgressCallback | None = None,
    cancellation_token: CancellationToken | None = None,
    name: str | None = None,
    display: bool | None = None,
    total: int | None = None,
    store: str | os.PathLike[str] | ResultStore | None = None,
    key: Callable[[Any], str] | None = None,
    **engine_options: Any,
) -> JobHandle:
    """Start processing ``symbols`` with ``processor`` in the background and show its progress.

    Builds ``ProcessingEngine(processor, **engine_options)`` (``max_workers``, ``backend``,
    ``max_errors``, ``timeout``, ...), starts the batch and returns its :class:`JobHandle` at once.
    A :class:`~procengine_nb.ProgressPanel` is always built (``handle.panel``; None only without
    ipywidgets). ``display=None`` (default) displays the panel when running under a Jupyter kernel
    and otherwise writes a progress line to stderr; ``display=True`` always displays the panel,
    ``display=False`` shows nothing. ``progress_callback`` still runs for every symbol.
    ``symbols`` may be a generator (drawn lazily; ``total=`` is a hint of its length): see
    :meth:`ProcessingEngine.process_batch`.

    The engine is ``run()``'s own: what its backend started (a Dask ``LocalCluster`` when no
    ``client=`` is given, the shared loky pool) is released when the batch ends. Pass ``client=`` to
    keep a cluster across runs.

    ``store=`` (an SQLite path or a :class:`~procengine_nb.ResultStore`) and ``key=`` make the results
    durable, as for ``ProcessingEngine.process_batch``: rerunning the same ``run()`` (after a kernel
    restart, say) skips every symbol the store holds a success for under the batch's ``name`` (the
    processor's ``module.qualname`` when no name is given); the snapshot's ``from_store`` counts them.

    Under a kernel, worker threads' prints and the progress callback's output go to the cell that
    called ``run()``, not to the cell running when they print.

    An ``async def`` processor is awaited on an event loop the batch owns (not the kernel's), at most
    ``max_workers`` coroutines at once; Stop cancels the running ones (see ``ProcessingEngine``).

    Wait with ``await handle`` (Stop stays clickable on ipykernel >= 7.4) or ``handle.result()``
    (blocks the kernel: Stop clicks wait until the cell ends; interrupt the kernel to cancel).
    """
    check_callable(processor, "processor")
    check_type(name, str, "name", allow_none=True)
    check_type(display, bool, "display", what="True, False", allow_none=True)
    make_key_function(key)  # bad store= or key=: an error before an engine (or a cluster) is built
    store = resolve_store(store)
    if isinstance(symbols, ProcessingJob):
        if name is not None and name != symbols.name:
            raise ValueError("name= cannot rename a ProcessingJob; give the job its name instead")
        job = symbols
    else:
        job = ProcessingJob(coerce_symbols(symbols, "symbols"), name=name)

    kernel = in_jupyter_kernel()
    if kernel and _runs_in_threads(engine_options) and not is_async_callable(processor):
        # (an async processor runs on the batch's loop, whose tasks start in the job thread's
        # context, a copy of this one: its prints go to this cell already)
        processor = _in_caller_context(processor)
    engine = ProcessingEngine(processor, **engine_options)
    try:
        handle = engine.start(job, progress_callback=progress_callback, cancellation_token=cancellation_token,
                              total=total, store=store, key=key)
    except BaseException:  # e.g. store= without a usable batch name: release what the engine holds
        engine.close()
        raise
    handle.attach(CloseAtEnd(engine))  # run() owns its engine: a cluster it started ends with the batch
    if handle._origin is not None:
        handle._origin.reuse = False  # closed at the end: a follow-up (handle.retry()) makes a new engine
    show_panel = display if display is not None else kernel
    try:
        if display is None and not kernel:  # the terminal: show progress before importing widgets
            handle.attach(ConsoleProgress(handle.token, name=job.display_name, handle=handle))
        panel = _make_panel(handle)
        if show_panel and panel is not None:
            from IPython.display import display as ipython_display

            ipython_display(panel)
        elif display is None and kernel:  # a kernel without ipywidgets
            handle.attach(ConsoleProgress(handle.token, name=job.display_name, handle=handle))
    except BaseException:  # e.g. Ctrl-C while importing the widgets: leave nothing running
        handle.cancel("interrupted while showing the progress")
        handle.wait()
        raise
    return handle


def show_job(handle: JobHandle) -> None:
    """``handle.show()``: display the job's live panel in the current cell under a Jupyter kernel (the
    panel ``run()`` made, else a new one attached now); elsewhere (or without ipywidgets) print the job's
    progress line once. ``procengine_nb.views.jobs.show_job`` does it when that view exists."""
    try:
        from procengine_nb.views.jobs import show_job as show_in_view
    except ImportError:  # no jobs view (or no ipywidgets): the panel or the line from here
        pass
    else:
        show_in_view(handle)
        return
    if in_jupyter_kernel():
        panel = handle.panel if handle.panel is not None and not handle.panel.closed else _make_panel(handle)
        if panel is not None:
            from IPython.display import display as ipython_display

            ipython_display(panel)
            return
    print(_terminal_line(handle))


def _terminal_line(handle: JobHandle) -> str:
    from procengine_nb.views.console import progress_line

    return progress_line(handle.job.display_name, handle.progress, status=handle.state)


def show_jobs(handles: list[JobHandle]) -> None:
    """Display ``jobs()``: under a Jupyter kernel, the widget ``procengine_nb.views.jobs.jobs_view(handles)``
    makes (a live panel per running job, a summary line per ended one); elsewhere, one line per job."""
    if in_jupyter_kernel():
        try:
            from procengine_nb.views.jobs import jobs_view
        except ImportError as exc:  # no ipywidgets (or no jobs view): the text lines
            _log.info("no jobs widget (%s); showing text", exc)
        else:
            from IPython.display import display as ipython_display

            ipython_display(jobs_view(list(handles)))
            return
    print(repr(handles))
