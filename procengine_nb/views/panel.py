"""The notebook view: a live ipywidgets 8 panel with Pause and Stop buttons bound to the job.

What the panel shows lives in widget state (two HTML texts and three buttons in a box), so it renders the
same in JupyterLab, Notebook 7, Voilà, exported HTML and tests. It is a ``JobView`` (``update(progress)``,
``failed(result)``, ``finish(result, error)``, ``waited()``) that *holds* its widgets: nothing of
ipywidgets is built until the panel is displayed (or :attr:`ProgressPanel.widget` is read).

- No widget before the first display, so a panel never displayed opens no comm. Displayed, it uses 9
  widget models: the box, the live text, the failures text, the Pause, Stop and Retry buttons, their
  shared layout, the texts' shared style and the buttons' shared style. One more than the 8 of the
  panel before Pause and Retry: the failures have their own text, which changes only when a failure
  arrives, so a failure group opened to its traceback stays open while the figures move.
  :meth:`ProgressPanel.close` releases them.
- One renderer: every text (the live HTML, the failures, the ``text/plain``/``text/html`` fallbacks, the
  terminal line) comes from :func:`procengine_nb.views._render.render`.
- The bar is HTML: the succeeded share in the state's colour and the failed share beside it in the
  error colour (``role="progressbar"``, ``aria-valuenow``/``aria-valuemax``, ``data-failed``).
- Throttled: at most one render per ``min_interval`` (0.1 s) whatever the symbol rate; a ticker
  re-renders while nothing completes so elapsed/ETA/stalls/"Stopping…" move; the final state is always
  rendered, in ``finish``, before ``result()`` returns.
- Pause / Continue (``handle.pause()``/``unpause()``): the status says "Paused"; Stop while paused is a
  Stop. Stalled symbols (``handle.stalled()``) are listed in the error colour with how long they run.
- After the end: "Retry N failed" (some failed) and "Resume" (a Stop left symbols unprocessed; the
  Pause button turns into it) start ``handle.retry()``/``handle.resume()``; the panel's box then holds
  the follow-up job's live panel, in the same output.
- True when saved: the displayed output carries ``text/plain`` and ``text/html`` renderings beside the
  widget view, updated at the end; :meth:`ProgressPanel.waited` re-sends the final state from the cell
  that waited for the job, which is what headless runs (nbclient, papermill) save.
- Every symbol, job name, exception message and traceback is escaped; each part carries a stable CSS
  class (``procengine-panel``, ``procengine-bar``, ``procengine-status``, ``procengine-stop``,
  ``procengine-pause``, ``procengine-retry``, ...).

>>> from procengine_nb import CancellationToken, ProcessingProgress
>>> panel = ProgressPanel(CancellationToken(), name="prices", ticker=False)
>>> panel.update(ProcessingProgress(total_symbols=4, completed_symbols=1))
>>> panel, panel.counts.value, panel.status.value, panel.progress_bar.value, panel.widgets_built
(ProgressPanel(name='prices'), '1 / 4 (25%)', 'Running', 1, False)
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets  # at import: without ipywidgets 8, run() falls back to the terminal view
from ipywidgets.widgets.widget_button import ButtonStyle
from ipywidgets.widgets.widget_string import HTMLStyle

from procengine_nb._safe import describe, logger
from procengine_nb._validation import check_callable, check_int, check_type
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult
from procengine_nb.progress import ProcessingProgress
from procengine_nb.views._failures import FailureLog
from procengine_nb.views._format import JobState, clean_text, job_state
from procengine_nb.views._live import Throttle, check_interval, read_handle, shown_times
from procengine_nb.views._render import Bar, JobFacts, JobText, render

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.handle import JobHandle

__all__ = ["BarView", "JobSummary", "ProgressPanel"]

_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)
STOP_REASON = "stopped from the panel"
"""The cancel reason a Stop click gives the token."""
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
HIDDEN = "procengine-hidden"
"""The CSS class of a button not offered now (the buttons share one layout, so a class hides them)."""

# The panel's look, shipped inside its live HTML text (one widget model fewer than a separate style
# widget). Every text is the theme's main font colour on the theme's background (>= 4.5:1 in the
# light and dark themes); the error colour for text is the theme's darkest red in light themes and a
# light red in dark ones (both >= 4.5:1 on the theme's background). Items wrap whole.
_CSS = (
    "<style>"
    ".procengine-panel{display:flex;flex-flow:row wrap;align-items:flex-start;gap:4px 8px;max-width:100%}"
    ".procengine-panel>.procengine-text{flex:1 1 16em;min-width:0;width:auto;margin:0;height:auto}"
    ".procengine-panel>.procengine-failures-text{flex:1 1 100%;min-width:0;width:auto;margin:0;height:auto}"
    ".procengine-panel>.jupyter-button{flex:none;width:auto;min-width:max-content;margin:0;padding:0 12px;"
    "opacity:1}"
    ".procengine-panel>.procengine-stop.jupyter-button{color:#fff;background:#b3261e}"
    ".procengine-panel>.procengine-pause.jupyter-button{color:var(--jp-ui-font-color1,#212121);"
    "background:var(--jp-layout-color2,#eee);border:1px solid var(--jp-border-color1,#9e9e9e)}"
    ".procengine-panel>.procengine-retry.jupyter-button{color:#fff;background:#0d47a1}"
    ".procengine-panel>.jupyter-button:disabled{color:var(--jp-ui-font-color1,#212121);"
    "background:var(--jp-layout-color2,#eee);border:1px solid var(--jp-border-color1,#9e9e9e);opacity:1;"
    "cursor:default}"
    ".procengine-panel>.procengine-hidden,.procengine-hidden{display:none!important}"
    ".procengine-host{display:block;max-width:100%}"
    ".procengine-text .widget-html-content,.procengine-failures-text .widget-html-content{line-height:1.45;"
    "white-space:normal;height:auto;min-width:0;overflow-wrap:anywhere;color:var(--jp-ui-font-color1,#212121)}"
    ".procengine-head{display:flex;align-items:center;gap:8px}"
    ".procengine-title{flex:none;max-width:60%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
    ".procengine-bar{flex:1 1 8em;min-width:6em;height:14px;display:flex;overflow:hidden;border-radius:2px;"
    "background:var(--jp-layout-color2,#eee);border:1px solid var(--jp-border-color1,#9e9e9e)}"
    ".procengine-bar>div{height:100%}"
    ".procengine-bar-info .procengine-bar-done{background:var(--jp-brand-color1,#1976d2)}"
    ".procengine-bar-success .procengine-bar-done{background:var(--jp-success-color1,#388e3c)}"
    ".procengine-bar-warning .procengine-bar-done{background:var(--jp-warn-color1,#f57c00)}"
    ".procengine-bar-danger .procengine-bar-done{background:var(--jp-error-color1,#d32f2f)}"
    ".procengine-bar-failed{background:var(--jp-error-color1,#d32f2f);"
    "background-image:repeating-linear-gradient(45deg,transparent 0 3px,rgba(0,0,0,.25) 3px 5px)}"
    ".procengine-line{display:flex;flex-wrap:wrap;column-gap:1.2em}"
    ".procengine-line>span{white-space:nowrap}"
    ".procengine-err{font-weight:bold;border-left:3px solid var(--jp-error-color1,#d32f2f);padding-left:4px}"
    ".procengine-stalled{font-weight:bold;color:var(--jp-error-color0,#b71c1c)}"
    "[data-jp-theme-light=false] .procengine-stalled{color:var(--jp-error-color2,#e57373)}"
    ".procengine-failures ul{margin:0;padding-left:1.2em}"
    ".procengine-failures summary{cursor:pointer}"
    ".procengine-traceback{margin:2px 0 4px;padding:4px;max-height:16em;overflow:auto;white-space:pre-wrap;"
    "font-size:85%;color:var(--jp-ui-font-color1,#212121);background:var(--jp-layout-color2,#eee)}"
    ".procengine-failures li,.procengine-error-table td{overflow-wrap:break-word}"
    ".procengine-error-table{overflow-x:auto}.procengine-error-table table{border-collapse:collapse}"
    ".procengine-error-table td,.procengine-error-table th{padding:0 .6em 0 0;text-align:left;"
    "vertical-align:top;color:var(--jp-ui-font-color1,#212121)}"
    "</style>"
)


class JobSummary:
    """The end-of-job summary as text and HTML: a plain output that survives saving and export.

    ``display(panel.summary())`` (or just ending a cell with it) stores a ``text/plain`` and a
    ``text/html`` output that nbconvert and GitHub render without the widget state.
    """

    __slots__ = ("html", "text")

    def __init__(self, text: str, html_fragment: str) -> None:
        self.text = text
        """One line, e.g. ``prices: Done with errors: 2 of 10 failed``."""
        self.html = html_fragment
        """The same, plus the table of failed symbols, as escaped HTML."""

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return self.html


class Part:
    """One rendered part of the panel (``panel.status.value``, ``panel.counts.value``, ...): escaped
    HTML, readable whether or not the widgets were built."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = ""

    def __repr__(self) -> str:
        return f"Part({self.name!r}, {self.value!r})"


class BarView:
    """``panel.progress_bar``: the bar's figures as the panel shows them now (read-only; no widget).

    ``value`` (completed: succeeded + failed), ``max``, ``failed``, ``bar_style`` (info, success,
    warning, danger) and ``description`` (the job name), like an ``IntProgress``'s traits.
    """

    __slots__ = ("_panel",)

    def __init__(self, panel: ProgressPanel) -> None:
        self._panel = panel

    @property
    def _bar(self) -> Bar:
        return self._panel._text.bar

    @property
    def value(self) -> int:
        return self._bar.value

    @property
    def max(self) -> int:
        return self._bar.maximum

    @property
    def failed(self) -> int:
        return self._bar.failed

    @property
    def bar_style(self) -> str:
        return self._bar.style

    @property
    def description(self) -> str:
        return self._panel._name

    def __repr__(self) -> str:
        bar = self._bar
        return f"BarView(value={bar.value}, max={bar.maximum}, failed={bar.failed}, bar_style={bar.style!r})"


# A button's state: (description, disabled, hidden)
_ButtonState = tuple[str, bool, bool]


class _Widgets:
    """The widgets of a displayed panel: the box; the live text and the failures text (one shared
    style); the Pause, Stop and Retry buttons (one shared style); one layout shared by all. 9 models."""

    def __init__(self, panel: ProgressPanel) -> None:
        self.layout = layout = widgets.Layout()
        text_style, button_style = HTMLStyle(), ButtonStyle()
        self.live = widgets.HTML(layout=layout, style=text_style, _dom_classes=("procengine-text",))
        self.failures = widgets.HTML(layout=layout, style=text_style, _dom_classes=("procengine-failures-text",))
        self.pause = widgets.Button(description="Pause", icon="pause", layout=layout, style=button_style,
                                    tooltip="Pause: running symbols finish, nothing new starts until Continue",
                                    _dom_classes=("procengine-pause",))
        self.stop = widgets.Button(description="Stop", icon="stop", button_style="danger", layout=layout,
                                   style=button_style,
                                   tooltip="Cancel the job: pending symbols are dropped, partial results kept",
                                   _dom_classes=("procengine-stop",))
        self.retry = widgets.Button(description="Retry", icon="redo", layout=layout, style=button_style,
                                    tooltip="Start a new job with the symbols that failed",
                                    _dom_classes=("procengine-retry", HIDDEN))
        self.pause.on_click(panel._on_pause)
        self.stop.on_click(panel._on_stop)
        self.retry.on_click(panel._on_retry)
        self.box = widgets.Box(children=(self.live, self.pause, self.stop, self.retry, self.failures),
                               layout=layout, _dom_classes=("procengine-panel",))
        self.styles = (text_style, button_style)

    @property
    def parts(self) -> tuple[widgets.Widget, ...]:
        """The widgets the panel changes (their state is re-sent by :meth:`send_state`)."""
        return (self.live, self.failures, self.pause, self.stop, self.retry)

    @property
    def models(self) -> tuple[widgets.Widget, ...]:
        return (self.box, *self.parts, self.layout, *self.styles)

    def send_state(self) -> None:
        """Send the full state of the parts that change (to the current output parent)."""
        for widget in self.parts:
            widget.send_state()

    def close(self, *, keep_box: bool = False) -> None:
        for model in self.models:
            if keep_box and model in (self.box, self.layout):
                continue
            model.close()


class ProgressPanel:
    """A live panel for one job: name, bar (done and failed shares), counts, errors, elapsed, ETA, rate,
    running and stalled symbols, status, failures as they happen (each group opening to its latest
    traceback), Pause/Continue and Stop, and at the end Retry/Resume and a table of failed symbols.

    Display it (``display(panel)``, or end a cell with it); ``run()`` and ``handle.show()`` do that.
    ``panel.widget`` is its ipywidgets container (a ``Box``), to put in your own layout.

    Args:
        token: the job's cancellation token; Stop cancels it.
        name: the job name shown in the title (default: the handle's job name, else "batch").
        handle: the :class:`~procengine_nb.JobHandle`: running and stalled symbols, Pause, Retry/Resume.
        max_error_rows: rows of the failed-symbols table before "+K more".
        latest_errors: how many of the latest failures are listed while the job runs.
        min_interval: seconds between two renders (the throttle); 0.1 gives ~10 per second.
        refresh_interval: seconds between re-renders while nothing completes (elapsed/ETA move).
        clock: the time source in seconds (injectable for tests).
        ticker: start the refresh thread on the first update (tests drive :meth:`tick` instead).

    Use :meth:`for_handle` to make a panel for a running job and attach it in one call.
    """

    _PARTS = ("title", "counts", "errors", "elapsed", "eta", "rate", "running", "stalled", "status", "failures",
              "error_table")

    def __init__(
        self,
        token: CancellationToken,
        *,
        name: str | None = None,
        handle: JobHandle | None = None,
        max_error_rows: int = 20,
        latest_errors: int = 3,
        min_interval: float = 0.1,
        refresh_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
    ) -> None:
        check_type(token, CancellationToken, "token", what="a procengine_nb.CancellationToken")
        check_type(name, str, "name", allow_none=True)
        check_int(max_error_rows, "max_error_rows", minimum=0)
        check_int(latest_errors, "latest_errors", minimum=0)
        min_interval = check_interval(min_interval, "min_interval")
        refresh_interval = check_interval(refresh_interval, "refresh_interval")
        check_callable(clock, "clock")
        if name is None and handle is not None:
            name = handle.job.display_name
        self._options: dict[str, Any] = {
            "max_error_rows": max_error_rows, "latest_errors": latest_errors, "min_interval": min_interval,
            "refresh_interval": refresh_interval, "clock": clock, "ticker": ticker,
        }
        self._token = token
        self._handle = handle
        self._name = name if name is not None else "batch"
        self._max_error_rows = max_error_rows
        self._clock = clock
        self._throttle = Throttle(self._render, min_interval=min_interval, refresh_interval=refresh_interval,
                                  clock=clock, ticker_name="procengine-panel-ticker" if ticker else None)
        self._lock = self._throttle.lock
        self._failures = FailureLog(latest=latest_errors)
        self._latest = handle.progress if handle is not None else ProcessingProgress(total_symbols=0)
        self._received_at = clock()
        self._outcome: tuple[BatchResult | None, BaseException | None] | None = None
        self._stop_clicked = False
        self._follow_clicked: str | None = None
        self._notice = ""
        self._closed = False
        self._widgets: _Widgets | None = None
        self._successor: ProgressPanel | None = None
        self._display_id: str | None = None
        self._buttons: dict[str, _ButtonState] = {}
        self._text: JobText
        for part in self._PARTS:
            setattr(self, part, Part(part))
        self.title: Part
        self.counts: Part
        self.errors: Part
        self.elapsed: Part
        self.eta: Part
        self.rate: Part
        self.running: Part
        self.stalled: Part
        self.status: Part
        self.failures: Part
        self.error_table: Part
        with self._lock:
            self._render(clock())
        self._throttle.renders = 0
        self._throttle.forget_last()  # the first snapshot is shown at once

    @classmethod
    def for_handle(cls, handle: JobHandle, **options: Any) -> ProgressPanel:
        """Make a panel for ``handle`` (its token, name, running and stalled symbols, Pause, Retry/Resume),
        attach it, set ``handle.panel`` and return it.

        >>> from procengine_nb import ProcessingEngine
        >>> handle = ProcessingEngine(str.upper).start(["a", "b"])
        >>> panel = ProgressPanel.for_handle(handle)
        >>> _ = handle.result(timeout=10)
        >>> handle.panel is panel, panel.status.value
        (True, 'Done: 2 processed')
        """
        panel = cls(handle.token, handle=handle, **options)
        handle.panel = panel
        handle.attach(panel)
        return panel

    # -- the widgets (built on first use) ------------------------------------------------------------
    @property
    def widgets_built(self) -> bool:
        """True once the widgets exist (the panel was displayed, or :attr:`widget` was read)."""
        return self._widgets is not None

    def _built(self) -> _Widgets:
        with self._lock:
            if self._widgets is None:
                if self._closed:
                    raise RuntimeError("this panel was closed: its widgets are gone (make a new panel)")
                parts = _Widgets(self)
                self._widgets = parts
                self._push(parts)
            return self._widgets

    @property
    def widget(self) -> widgets.Box:
        """The panel's ipywidgets container (a ``Box``; built, and its comm opened, on first use)."""
        return self._built().box

    @property
    def progress_bar(self) -> BarView:
        """The bar's figures (``value``, ``max``, ``failed``, ``bar_style``): no widget is built."""
        return BarView(self)

    @property
    def stop_button(self) -> widgets.Button:
        """The Stop ``Button``; clicking it cancels the token (builds the widgets)."""
        return self._built().stop

    @property
    def pause_button(self) -> widgets.Button:
        """The Pause / Continue ``Button`` (after a Stop that left symbols unprocessed: Resume)."""
        return self._built().pause

    @property
    def resume_button(self) -> widgets.Button:
        """The Resume button: the Pause button once the job ended (hidden unless a Stop left symbols)."""
        return self._built().pause

    @property
    def retry_button(self) -> widgets.Button:
        """The "Retry N failed" ``Button`` (hidden unless the job ended with failures)."""
        return self._built().retry

    @property
    def successor_panel(self) -> ProgressPanel | None:
        """The panel of the follow-up job a Retry/Resume click started (shown in this panel's box)."""
        return self._successor

    @property
    def closed(self) -> bool:
        """True once :meth:`close` released the widgets (the panel still renders its text)."""
        return self._closed

    @property
    def render_count(self) -> int:
        """How many times the panel was rendered (throttled updates plus forced ones)."""
        return self._throttle.renders

    # -- JobView ----------------------------------------------------------------------------------
    def update(self, progress: ProcessingProgress) -> None:
        """Take a new snapshot; render it now unless the last render was under ``min_interval`` ago
        (then the ticker renders it soon). Cheap: called after every symbol."""
        with self._lock:
            if self._throttle.ended:
                return
            self._latest = progress
            self._received_at = self._clock()
        self._throttle.offer()

    def failed(self, result: Any) -> None:
        """A symbol failed (a :class:`~procengine_nb.SymbolResult`): counted and listed, throttled.
        Ignored after :meth:`finish`: the result's ``errors`` are the count from then on."""
        with self._lock:
            if self._outcome is not None:
                return
            log = self._failures  # a record racing with finish() goes to the log finish() replaced
        log.record(result)
        self._throttle.offer()

    def finish(self, result: BatchResult | None, error: BaseException | None) -> None:
        """Show the final state (always rendered, whatever the throttle) and stop the ticker."""
        with self._lock:
            if self._outcome is not None:
                return
        self._throttle.end()
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = (result, error)
            if result is not None:
                self._latest = result.progress
                if self._failures.total < len(result.errors):  # attached late: count them all from the result
                    self._failures = FailureLog(latest=self._failures.latest_size)
                    for failed in result.errors:
                        self._failures.record(failed)
            elif self._handle is not None:
                self._latest = self._handle.progress
            self._throttle.renders += 1
            self._render(self._clock())
        self._update_display()

    def waited(self) -> None:
        """Called on the thread that waited for the job, after it ended: re-send the final state from
        there. In Jupyter that thread's output parent is the waiting cell, the one a headless run
        (nbclient, papermill) records; the job thread's messages belong to a cell that already ended."""
        with self._lock:
            parts = self._widgets if not self._closed and self._successor is None else None
            shown = self._display_id is not None
        if parts is not None:
            parts.send_state()
        if shown:
            self._update_display()

    # -- time passing -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Re-render if a throttled snapshot is pending or ``refresh_interval`` passed (the ticker
        thread calls this every ``min_interval``; tests call it directly with a fake clock)."""
        self._throttle.tick()

    def close(self) -> None:
        """Stop the ticker and close the panel's widget models (its view disappears from the notebook)."""
        self._throttle.end()
        with self._lock:
            self._closed = True
            parts, self._widgets = self._widgets, None
            successor = self._successor
        if parts is not None:
            parts.close()
        if successor is not None:
            successor.close()

    # -- the buttons ---------------------------------------------------------------------------------
    def _on_stop(self, _button: Any = None) -> None:
        with self._lock:
            if self._stop_clicked or self._outcome is not None:
                return  # a second click (or a click after the end) does nothing
            self._stop_clicked = True
            self._buttons["stop"] = ("Stopping…", True, False)
            if self._widgets is not None:
                self._push(self._widgets)
        self._token.cancel(STOP_REASON)  # outside the lock: cancel runs the token's callbacks
        self._throttle.render_now()

    def _on_pause(self, _button: Any = None) -> None:
        """Pause / Continue while the job runs; Resume once it ended (after a Stop)."""
        handle = self._handle
        with self._lock:
            ended = self._outcome is not None
        if ended:
            self._follow("resume")
            return
        if handle is None or self._token.is_cancelled or not _can(handle, "pause"):
            return
        if self._handle_paused():
            handle.unpause()
        else:
            handle.pause()
        self._throttle.render_now()

    def _on_retry(self, _button: Any = None) -> None:
        self._follow("retry")

    def _follow(self, kind: str) -> None:
        """Start ``handle.retry()``/``handle.resume()`` and show the follow-up job's panel in this box."""
        handle = self._handle
        with self._lock:
            if self._outcome is None or self._follow_clicked is not None or handle is None or self._closed:
                return
            if self._buttons["pause" if kind == "resume" else "retry"][2]:
                return  # not offered (hidden): nothing failed, or nothing was left
            self._follow_clicked = kind
            self._render(self._clock())  # both follow-up buttons off at once: one click starts one job
        try:
            successor = getattr(handle, kind)()
        except Exception as exc:  # e.g. the engine was closed: say so, offer the button again
            with self._lock:
                self._follow_clicked = None
                self._notice = f"Could not {kind}: {describe(exc, 300)}"
                self._render(self._clock())
            return
        panel = successor.panel if isinstance(getattr(successor, "panel", None), ProgressPanel) else None
        if panel is None or panel.closed:
            panel = type(self).for_handle(successor, **self._options)
        self.adopt(panel)

    def adopt(self, panel: ProgressPanel) -> None:
        """Show ``panel`` (the follow-up job's) in this panel's place: the box holds it from now on, and this
        panel's own parts are released."""
        check_type(panel, ProgressPanel, "panel", what="a ProgressPanel")
        with self._lock:
            self._successor = panel
            parts = self._widgets
        if parts is None:
            return
        parts.box.children = (panel.widget,)
        parts.box._dom_classes = ("procengine-host",)
        parts.close(keep_box=True)

    # -- rendering -----------------------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        """What the panel shows the job as (running, paused, stopping, done, done with errors, cancelled,
        failed)."""
        with self._lock:
            return self._state()

    def _handle_paused(self) -> bool:
        handle = self._handle
        try:
            paused = getattr(handle, "paused", None) if handle is not None else None
        except Exception:  # read racily from the job: never let it break a render
            paused = None
        return bool(getattr(self._latest, "paused", False) if paused is None else paused)

    def _state(self) -> JobState:
        result, error = self._outcome if self._outcome is not None else (None, None)
        ended = self._outcome is not None
        return job_state(
            self._latest,
            cancel_requested=self._token.is_cancelled,
            ended=ended,
            cancelled=None if result is None else result.cancelled,
            error=error,
            paused=False if ended else self._handle_paused(),
        )

    def _facts(self, now: float) -> JobFacts:
        p = self._latest
        state = self._state()
        result, error = self._outcome if self._outcome is not None else (None, None)
        ended = self._outcome is not None
        elapsed_ms, eta_ms = shown_times(p, state, since_snapshot=now - self._received_at, ended=ended)
        running: list[Any] = []
        stalled: list[tuple[Any, float]] = []
        if not ended and self._handle is not None:
            running = read_handle(self._handle, "running_symbols", 6)
            stalled = read_handle(self._handle, "stalled")
        return JobFacts(
            name=self._name, progress=p, state=state, error=error, elapsed_ms=elapsed_ms, eta_ms=eta_ms,
            running=running, stalled=stalled, groups=self._failures.groups() if self._failures.total else (),
            latest=self._failures.latest(), failed_results=result.errors if result is not None else (),
            max_error_rows=self._max_error_rows, notice=self._notice, ended=ended,
        )

    def _render(self, now: float) -> None:
        """Compute every part from the latest facts and push it to the widgets, if built (caller holds the
        lock). Only changed values send a message to the front-end."""
        text = self._text = render(self._facts(now))
        self.title.value = text.title_html()
        self.counts.value = html.escape(text.counts)
        self.errors.value = f"errors: {text.errors}"
        self.elapsed.value = html.escape(text.elapsed)
        self.eta.value = html.escape(text.eta)
        self.rate.value = html.escape(text.rate)
        self.running.value = f"running: {html.escape(text.running)}" if text.running else ""
        self.stalled.value = f"stalled: {html.escape(text.stalled)}" if text.stalled else ""
        self.status.value = html.escape(text.status)
        self.failures.value = text.failures_html
        self.error_table.value = text.table_html
        self._buttons = self._button_states()
        if self._widgets is not None and not self._closed and self._successor is None:
            self._push(self._widgets)

    def _button_states(self) -> dict[str, _ButtonState]:
        state = self._state()
        handle = self._handle
        if self._outcome is None:
            stopping = state is JobState.STOPPING
            stop = ("Stopping…", True, False) if stopping else ("Stop", False, False)
            can_pause = handle is not None and _can(handle, "pause")
            pause = ("Continue" if state is JobState.PAUSED else "Pause", stopping, not can_pause)
            return {"stop": stop, "pause": pause, "retry": ("Retry", True, True)}
        result, _ = self._outcome
        stop = ("Stopped" if state is JobState.CANCELLED else "Stop", True, False)
        busy = self._follow_clicked is not None
        failed = len(result.errors) if result is not None else 0
        left = result is not None and (len(result.unprocessed) > 0 or not getattr(result, "input_exhausted", True))
        can_retry = failed > 0 and handle is not None and _can(handle, "retry")
        can_resume = left and handle is not None and _can(handle, "resume")
        retry_label = "Retrying…" if self._follow_clicked == "retry" else f"Retry {failed} failed"
        resume_label = "Resuming…" if self._follow_clicked == "resume" else "Resume"
        return {"stop": stop, "pause": (resume_label, busy, not can_resume),
                "retry": (retry_label, busy, not can_retry)}

    def _push(self, parts: _Widgets) -> None:
        for key, button in (("stop", parts.stop), ("pause", parts.pause), ("retry", parts.retry)):
            description, disabled, hidden = self._buttons[key]
            classes = (f"procengine-{key}", HIDDEN) if hidden else (f"procengine-{key}",)
            if (button.description, button.disabled, tuple(button._dom_classes)) != (description, disabled, classes):
                with button.hold_sync():
                    button.description = description
                    button.disabled = disabled
                    button._dom_classes = classes
        parts.pause.icon = "play" if parts.pause.description in ("Continue", "Resume") else "pause"
        parts.live.value = _CSS + self._text.live_html()
        parts.failures.value = self._text.failures_block_html()

    # -- what viewers without widgets see, and what survives export ------------------------------------
    def as_text(self) -> str:
        """The panel's state as one line of plain text (its ``text/plain`` output), e.g.
        ``ProgressPanel(name='prices'): Running | 15 / 24 (62%) | errors 0``."""
        with self._lock:
            return self._text.plain(repr(self))

    def as_html(self) -> str:
        """The panel's state as static HTML (its ``text/html`` output, no script, no style sheet)."""
        with self._lock:
            return self._text.static_html()

    def _mimebundle(self) -> dict[str, Any]:
        """The widget view (unless the panel was closed) with the text fallbacks."""
        with self._lock:
            closed = self._closed
        bundle: dict[str, Any] = {}
        if not closed:
            box = self._built().box
            bundle[WIDGET_VIEW] = {"version_major": 2, "version_minor": 0, "model_id": box.model_id}
        bundle["text/plain"] = self.as_text()
        bundle["text/html"] = self.as_html()
        return bundle

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view plus ``text/plain`` and ``text/html`` renderings of the current state."""
        return self._mimebundle()

    def _ipython_display_(self) -> None:
        """``display(panel)``: show the widget view (with its text fallbacks) under a display id, so
        the fallbacks can be brought up to date at the end."""
        from IPython.display import display

        with self._lock:
            if self._display_id is None:
                self._display_id = uuid.uuid4().hex
            display_id = self._display_id
        display(self._mimebundle(), raw=True, display_id=display_id)

    def _update_display(self) -> None:
        with self._lock:
            display_id = self._display_id
            closed = self._closed
        if display_id is None or closed:
            return
        try:
            from IPython.display import update_display

            update_display(self._mimebundle(), raw=True, display_id=display_id)
        except Exception:  # no shell any more (kernel shutting down): the widgets still hold the state
            _log.debug("could not update the panel's output", exc_info=True)

    def summary(self) -> JobSummary:
        """The panel's current state as a plain text/HTML output (deterministic once the job ended:
        no timings), e.g. ``prices: Cancelled: 37 of 100 processed, 63 not processed``."""
        with self._lock:
            text = self._text
        line = f"{text.name}: {text.status}"  # text/plain: Jupyter renders ANSI there
        body = f"{text.title_html()}: {html.escape(text.status)}"
        return JobSummary(line, f'<div class="procengine-summary">{body}{text.table_html}</div>')

    def summary_html(self) -> str:
        """:meth:`summary` as an HTML fragment."""
        return self.summary().html

    def __repr__(self) -> str:
        # Stable (no live figures), one bounded line.
        return f"ProgressPanel(name={clean_text(self._name)!r})"


def _can(handle: Any, method: str) -> bool:
    """True when the handle offers ``method`` (the engine side may not have it on every handle)."""
    return callable(getattr(handle, method, None))
