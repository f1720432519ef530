"""Every job of the kernel within reach: the ``jobs()`` widget.

``procengine_nb.jobs()`` lists the jobs of this process (running ones and the last that ended); in a
notebook its display is :func:`jobs_view`: one widget holding a live panel (Pause, Stop) per running job
and one summary line per ended job. It is the way back to a job after a page reload or a lost variable:
the panel of a running job is the one already showing it (``handle.panel``) when there is one, so its
figures, failures and buttons are the same, or a new one attached now (it still lists every failure).
``handle.show()`` (``one_liner.show_job``) displays the same panel in the current cell. Every line comes
from the renderer every view shares (``_render.render``).

>>> from procengine_nb import ProcessingEngine
>>> from procengine_nb import ProcessingJob
>>> handle = ProcessingEngine(str.upper).start(ProcessingJob(["a", "b"], name="letters"))
>>> _ = handle.result(timeout=10)
>>> print(jobs_view([handle]).as_text())
jobs: 0 running, 1 ended
  letters: Done: 2 processed
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from procengine_nb.views._format import job_state
from procengine_nb.views._live import read_handle
from procengine_nb.views._render import JobFacts, JobText, render
from procengine_nb.views.panel import WIDGET_VIEW, ProgressPanel

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.handle import JobHandle

__all__ = ["JobsView", "job_text", "jobs_view", "panel_of"]


def job_text(handle: JobHandle) -> JobText:
    """The rendered parts of ``handle``'s job as it is now (running, paused, stopping or ended)."""
    ended = handle.done()
    result = handle.partial_result if ended else None
    error: BaseException | None = None
    if ended and result is None:
        error = handle.future.exception()
    progress = result.progress if result is not None else handle.progress
    state = job_state(
        progress, cancel_requested=handle.token.is_cancelled, ended=ended,
        cancelled=None if result is None else result.cancelled, error=error,
        paused=False if ended else bool(getattr(handle, "paused", False)),
    )
    running: list[Any] = []
    stalled: list[Any] = []
    if not ended:
        running = read_handle(handle, "running_symbols", 6)
        stalled = read_handle(handle, "stalled")
    return render(JobFacts(
        name=handle.job.display_name, progress=progress, state=state, error=error,
        eta_ms=progress.estimated_remaining_ms, running=running, stalled=stalled,
        failed_results=result.errors if result is not None else (), ended=ended,
    ))


def panel_of(handle: JobHandle) -> ProgressPanel:
    """The live panel of ``handle``: the one already showing it (``handle.panel``) unless it was closed,
    else a new one attached now (it gets every failure so far, then each new one)."""
    panel = getattr(handle, "panel", None)
    if isinstance(panel, ProgressPanel) and not panel.closed:
        return panel
    return ProgressPanel.for_handle(handle)


class JobsView:
    """The display of ``jobs()``: one widget with a live panel per running job (in the list's order,
    newest first) and one summary line per ended job.

    Nothing is built until it is displayed (or :attr:`widget` is read); :meth:`as_text` and
    :meth:`as_html` are its text fallbacks.
    """

    def __init__(self, handles: Iterable[JobHandle]) -> None:
        self.handles: list[JobHandle] = list(handles)
        """The jobs shown, newest first."""
        self._widget: widgets.VBox | None = None
        self._panels: list[ProgressPanel] = []

    @property
    def running(self) -> list[JobHandle]:
        """The jobs that had not ended when the view was made or last displayed."""
        return [h for h in self.handles if not h.done()]

    @property
    def ended(self) -> list[JobHandle]:
        return [h for h in self.handles if h.done()]

    @property
    def panels(self) -> list[ProgressPanel]:
        """The live panels the widget holds (one per job running when it was built)."""
        return list(self._panels)

    @property
    def widget(self) -> widgets.VBox:
        """The ipywidgets container (a ``VBox``, class ``procengine-jobs``); built on first use."""
        if self._widget is None:
            running = self.running
            self._panels = [panel_of(h) for h in running]
            ended = [h for h in self.handles if h not in running]
            layout = widgets.Layout()
            lines = widgets.HTML(value=self._ended_html(ended, empty=not running), layout=layout,
                                 _dom_classes=("procengine-jobs-ended",))
            self._widget = widgets.VBox([*(p.widget for p in self._panels), lines], layout=layout,
                                        _dom_classes=("procengine-jobs",))
        return self._widget

    @staticmethod
    def _ended_html(ended: list[JobHandle], *, empty: bool) -> str:
        if not ended:
            return "" if not empty else '<div class="procengine-job-line">No jobs in this process yet.</div>'
        items = "".join(
            f'<div class="procengine-job-line">{text.title_html()}: {html.escape(text.status)}</div>'
            for text in (job_text(h) for h in ended)
        )
        noun = "job" if len(ended) == 1 else "jobs"
        return f'<div class="procengine-jobs-ended"><div>{len(ended)} ended {noun}, newest first:</div>{items}</div>'

    def as_text(self) -> str:
        """One line per job: the live figures of a running one, the final status of an ended one."""
        running = self.running
        lines = [f"jobs: {len(running)} running, {len(self.handles) - len(running)} ended"]
        for handle in self.handles:
            text = job_text(handle)
            lines.append(f"  {text.line()}" if handle in running else f"  {text.summary()}")
        return "\n".join(lines)

    def as_html(self) -> str:
        """The same as static HTML (no style sheet, no script)."""
        running = self.running
        items = []
        for handle in self.handles:
            text = job_text(handle)
            body = html.escape(text.line()) if handle in running else f"{text.title_html()}: {html.escape(text.status)}"
            items.append(f'<li class="procengine-job-line">{body}</li>')
        head = f"jobs: {len(running)} running, {len(self.handles) - len(running)} ended"
        return f'<div class="procengine-jobs-summary"><div>{head}</div><ul>{"".join(items)}</ul></div>'

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        box = self.widget
        return {
            WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": box.model_id},
            "text/plain": self.as_text(),
            "text/html": self.as_html(),
        }

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True, display_id=uuid.uuid4().hex)

    def close(self) -> None:
        """Close the container (the panels stay: they belong to their jobs)."""
        if self._widget is not None:
            lines = self._widget.children[-1]
            for model in (lines, lines.style, self._widget.layout, self._widget):
                model.close()
            self._widget = None

    def __repr__(self) -> str:
        running = len(self.running)
        return f"<JobsView {running} running, {len(self.handles) - running} ended>"


def jobs_view(handles: Iterable[JobHandle]) -> JobsView:
    """The display of ``procengine_nb.jobs()`` (``JobList`` calls it): a :class:`JobsView` of ``handles``."""
    return JobsView(handles)
