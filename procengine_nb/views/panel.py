"""The notebook view: a live ipywidgets 8 panel with a Stop button bound to the job's token.

What the panel shows lives in widget state (the bar's value, one HTML widget's text, the button), so it
renders the same in JupyterLab, Notebook 7, Voilà, exported HTML and tests. It is a ``JobView``
(``update(progress)``, ``failed(result)``, ``finish(result, error)``, ``waited()``).

- An ipywidgets ``Box``, lazily: its comm and parts are opened the first time the panel is displayed
  (or ``progress_bar``/``stop_button``/``model_id`` is read, e.g. by a container it is put in), so a
  panel never displayed opens no comm. Displayed, it uses 8 widget models (the box, the bar, the button,
  one HTML text, and their shared layout and three styles); :meth:`close` releases them.
- Throttled: at most one render per ``min_interval`` (0.1 s) whatever the symbol rate; a ticker
  re-renders while nothing completes so elapsed/ETA/"Stopping…" move; the final state is always
  rendered, in ``finish``, before ``result()`` returns.
- True when saved: the displayed output carries a ``text/plain`` and ``text/html`` rendering of
  the panel's state beside the widget view (for viewers without the widget renderer), updated at
  the end; :meth:`waited` re-sends the final state from the cell that waited for the job, which is
  what headless runs (nbclient, papermill, ``nbconvert --execute``) save.
- Failures show as they happen: counts grouped by exception type and message, and the latest few.
- Stop: a click cancels the token; the button becomes "Stopping…" and is disabled.
- Every symbol, job name and exception message is escaped; each part carries a stable CSS class
  (``procengine-panel``, ``procengine-bar``, ``procengine-status``, ``procengine-stop``, ...).

>>> from procengine_nb import CancellationToken, ProcessingProgress
>>> panel = ProgressPanel(CancellationToken(), name="prices", ticker=False)
>>> panel.update(ProcessingProgress(total_symbols=4, completed_symbols=1))
>>> panel, panel.counts.value, panel.status.value, panel.widgets_built
(ProgressPanel(name='prices'), '1 / 4 (25%)', 'Running', False)
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from ipywidgets.widgets.widget_int import ProgressStyle
from ipywidgets.widgets.widget_string import HTMLStyle

from procengine_nb._safe import logger
from procengine_nb._validation import check_callable, check_int, check_type
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult
from procengine_nb.progress import ProcessingProgress
from procengine_nb.views._failures import FailureLog
from procengine_nb.views._format import (
    JobState,
    bar_style,
    clean_text,
    describe_error,
    format_counts,
    format_duration,
    format_rate,
    html_text,
    job_state,
    status_text,
)
from procengine_nb.views._live import Throttle, check_interval, shown_times

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.handle import JobHandle

__all__ = ["JobSummary", "ProgressPanel"]

_log = logger(__name__)  # never raises (see procengine_nb._safe.GuardedLogger)
STOP_REASON = "stopped from the panel"
"""The cancel reason a Stop click gives the token."""
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# The panel's look, shipped inside its HTML text (one widget model fewer than a separate style
# widget). Every text is the theme's main font colour on the theme's background (>= 4.5:1 in the
# light and dark themes); errors are marked by a red rule, not by red text. Items wrap whole.
_CSS = (
    "<style>"
    ".procengine-panel{display:flex;flex-flow:row wrap;align-items:center;gap:2px 8px;max-width:100%}"
    ".procengine-panel>.procengine-bar{flex:1 1 10em;min-width:8em;width:auto;margin:0}"
    ".procengine-bar .widget-label{font-weight:bold;max-width:60%;color:var(--jp-ui-font-color1,#212121)}"
    ".procengine-panel>.procengine-stop.jupyter-button{flex:none;width:auto;min-width:max-content;margin:0;"
    "padding:0 12px;color:#fff;background:#b3261e;opacity:1}"
    ".procengine-panel>.procengine-stop.jupyter-button:disabled{color:var(--jp-ui-font-color1,#212121);"
    "background:var(--jp-layout-color2,#eee);border:1px solid var(--jp-border-color1,#9e9e9e);opacity:1;"
    "cursor:default}"
    ".procengine-panel>.procengine-text{flex:1 1 100%;min-width:0;width:auto;margin:0;height:auto}"
    ".procengine-text .widget-html-content{line-height:1.45;white-space:normal;height:auto;min-width:0;"
    "overflow-wrap:anywhere;color:var(--jp-ui-font-color1,#212121)}"
    ".procengine-line{display:flex;flex-wrap:wrap;column-gap:1.2em}"
    ".procengine-line>span{white-space:nowrap}"
    ".procengine-err{font-weight:bold;border-left:3px solid var(--jp-error-color1,#d32f2f);padding-left:4px}"
    ".procengine-failures ul{margin:0;padding-left:1.2em}"
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


class _Widgets:
    """The parts of a displayed panel: the bar, the Stop button and one HTML text, one Layout shared by
    them and the panel's box, and the bar's, the button's and the text's styles. With the panel's own box,
    8 widget models."""

    def __init__(self, name: str, on_stop: Callable[[Any], None]) -> None:
        self.layout = layout = widgets.Layout()
        self.bar = widgets.IntProgress(
            value=0, min=0, max=1, bar_style="info", description=clean_text(name, 60),
            style=ProgressStyle(description_width="initial"), layout=layout,
            _dom_classes=("procengine-bar",),
        )
        self.button = widgets.Button(
            description="Stop", icon="stop", button_style="danger", layout=layout,
            tooltip="Cancel the job: pending symbols are dropped, partial results kept",
            _dom_classes=("procengine-stop",),
        )
        self.text = widgets.HTML(layout=layout, style=HTMLStyle(), _dom_classes=("procengine-text",))
        self.button.on_click(on_stop)
        self.models: tuple[widgets.Widget, ...] = (
            self.bar, self.button, self.text, layout, self.bar.style, self.button.style, self.text.style,
        )

    def send_state(self) -> None:
        """Send the full state of the parts that change (to the current output parent)."""
        for widget in (self.bar, self.button, self.text):
            widget.send_state()

    def close(self) -> None:
        for model in self.models:
            model.close()


class ProgressPanel(widgets.Box):
    """A live panel for one job: name, bar, counts, errors, elapsed, ETA, rate, running symbols, status,
    failures as they happen, a Stop button and (at the end) a collapsible table of failed symbols.

    Display it (``display(panel)``, or end a cell with it); ``run()`` does that for you.

    Args:
        token: the job's cancellation token; Stop cancels it.
        name: the job name shown in the title (default: the handle's job name, else "batch").
        handle: the :class:`~procengine_nb.JobHandle`, to show the symbols running right now.
        max_error_rows: rows of the failed-symbols table before "+K more".
        latest_errors: how many of the latest failures are listed while the job runs.
        min_interval: seconds between two renders (the throttle); 0.1 gives ~10 per second.
        refresh_interval: seconds between re-renders while nothing completes (elapsed/ETA move).
        clock: the time source in seconds (injectable for tests).
        ticker: start the refresh thread on the first update (tests drive :meth:`tick` instead).

    Use :meth:`for_handle` to make a panel for a running job and attach it in one call.

    The panel is an ipywidgets container (a ``Box``) whose model is opened, with its parts, the first
    time it is displayed (or put in another container, or a part is read): until then it costs no comm.
    """

    _PARTS = ("title", "counts", "errors", "elapsed", "eta", "rate", "running", "status", "failures",
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
        self._may_open = False  # Widget.__init__ calls open(): the comm waits for the first display
        super().__init__(_dom_classes=("procengine-panel",))
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
        self._closed = False
        self._widgets: _Widgets | None = None
        self._display_id: str | None = None
        self._bar = (0, 1, "info")
        self._button = ("Stop", False)
        for part in self._PARTS:
            setattr(self, part, Part(part))
        self.title: Part
        self.counts: Part
        self.errors: Part
        self.elapsed: Part
        self.eta: Part
        self.rate: Part
        self.running: Part
        self.status: Part
        self.failures: Part
        self.error_table: Part
        with self._lock:
            self._render(clock())
        self._throttle.renders = 0
        self._throttle.forget_last()  # the first snapshot is shown at once

    @classmethod
    def for_handle(cls, handle: JobHandle, **options: Any) -> ProgressPanel:
        """Make a panel for ``handle`` (its token, name and running symbols), attach it, set
        ``handle.panel`` and return it.

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
        """True once the widgets exist (the panel was displayed, or a widget attribute was read)."""
        return self._widgets is not None

    def _built(self) -> _Widgets:
        with self._lock:
            if self._widgets is None:
                parts = _Widgets(self._name, self._on_stop)
                self._widgets = parts
                self._push(parts)
                # the box's own state goes in its opening message (no update messages before it)
                self.layout = parts.layout
                self.children = (parts.bar, parts.button, parts.text)
                self._may_open = True
                widgets.Box.open(self)
            return self._widgets

    def open(self) -> None:
        """Open the panel's comm, with its parts (the first display does it; nothing before)."""
        if getattr(self, "_may_open", True):
            super().open()
        # else: still inside __init__; the first display builds the parts and opens the box

    @property
    def model_id(self) -> str:
        """The widget model id (opens the panel's comm and builds its parts on first use)."""
        if self.comm is None and not getattr(self, "_closed", False):
            self._built()
        return super().model_id

    @property
    def widget(self) -> widgets.Box:
        """The panel itself, an ipywidgets ``Box`` (kept for code that asks for "the widget")."""
        self._built()
        return self

    @property
    def progress_bar(self) -> widgets.IntProgress:
        """The ``IntProgress`` bar (builds the widgets)."""
        return self._built().bar

    @property
    def stop_button(self) -> widgets.Button:
        """The Stop ``Button``; clicking it cancels the token (builds the widgets)."""
        return self._built().button

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
            widgets = self._widgets if not self._closed else None
            shown = self._display_id is not None
        if widgets is not None:
            widgets.send_state()
        if shown:
            self._update_display()

    # -- time passing -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Re-render if a throttled snapshot is pending or ``refresh_interval`` passed (the ticker
        thread calls this every ``min_interval``; tests call it directly with a fake clock)."""
        self._throttle.tick()

    def close(self) -> None:
        """Stop the ticker and close the panel's widget models (its view disappears from the notebook)."""
        if "_throttle" not in self.__dict__:  # __init__ refused its arguments (Widget.__del__ still closes)
            widgets.Box.close(self)
            return
        self._throttle.end()
        with self._lock:
            self._closed = True
            parts = self._widgets
        if parts is not None:
            parts.close()
        widgets.Box.close(self)
        self.__dict__.pop("_repr_mimebundle_", None)  # Widget.close hides it; a closed panel still shows its text

    # -- Stop ----------------------------------------------------------------------------------------
    def _on_stop(self, _button: Any = None) -> None:
        with self._lock:
            if self._stop_clicked or self._outcome is not None:
                return  # a second click (or a click after the end) does nothing
            self._stop_clicked = True
            self._button = ("Stopping…", True)
            if self._widgets is not None:
                self._push(self._widgets)
        self._token.cancel(STOP_REASON)  # outside the lock: cancel runs the token's callbacks
        self._throttle.render_now()

    # -- rendering -----------------------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        """What the panel shows the job as (running, stopping, done, done with errors, cancelled, failed)."""
        with self._lock:
            return self._state()

    def _state(self) -> JobState:
        result, error = self._outcome if self._outcome is not None else (None, None)
        return job_state(
            self._latest,
            cancel_requested=self._token.is_cancelled,
            ended=self._outcome is not None,
            cancelled=None if result is None else result.cancelled,
            error=error,
        )

    def _render(self, now: float) -> None:
        """Compute every part from the latest snapshot and push it to the widgets, if built (caller
        holds the lock). Only changed values send a message to the front-end."""
        p = self._latest
        state = self._state()
        result, error = self._outcome if self._outcome is not None else (None, None)
        ended = self._outcome is not None
        elapsed_ms, eta_ms = shown_times(p, state, since_snapshot=now - self._received_at, ended=ended)
        self.title.value = f"<b>{html_text(self._name)}</b>"
        self.counts.value = format_counts(p)
        self.errors.value = f"errors: {p.errors_count}"
        self.elapsed.value = f"elapsed {format_duration(elapsed_ms)}"
        self.eta.value = f"ETA {format_duration(eta_ms)}"
        self.rate.value = format_rate(p.rate_per_second)
        self.running.value = self._running_html(ended)
        self.status.value = html.escape(status_text(state, p, error=error))
        self.failures.value = self._failures_html(ended)
        self.error_table.value = self._error_table_html(result)
        if not p.total_known:  # no total, no share of it to draw: the bar stays empty, the counts speak
            value, maximum = 0, 1
        else:
            value, maximum = (p.completed_symbols if p.total_symbols else (1 if ended else 0)), max(1, p.total_symbols)
        self._bar = (value, maximum, bar_style(state))
        if state is JobState.STOPPING:
            self._button = ("Stopping…", True)
        elif ended:  # the job is over: the button no longer acts; after a cancel it says so
            self._button = ("Stopped" if state is JobState.CANCELLED else self._button[0], True)
        if self._widgets is not None and not self._closed:
            self._push(self._widgets)

    def _push(self, widgets: _Widgets) -> None:
        value, maximum, style = self._bar
        bar = widgets.bar
        with bar.hold_sync():
            if maximum < bar.value:  # keep min <= value <= max at every step
                bar.value = value
                bar.max = maximum
            else:
                bar.max = maximum
                bar.value = value
            bar.bar_style = style
        button = widgets.button
        description, disabled = self._button
        if button.description != description or button.disabled != disabled:
            with button.hold_sync():
                button.description = description
                button.disabled = disabled
        widgets.text.value = _CSS + self._text_html()

    def _text_html(self) -> str:
        errors_class = ' class="procengine-errors procengine-err"' if self._latest.errors_count else (
            ' class="procengine-errors"')
        stats = (
            f'<span class="procengine-counts">{self.counts.value}</span>'
            f"<span{errors_class}>{self.errors.value}</span>"
            f'<span class="procengine-elapsed">{self.elapsed.value}</span>'
            f'<span class="procengine-eta">{self.eta.value}</span>'
            f'<span class="procengine-rate">{self.rate.value}</span>'
        )
        # the status and the running symbols get a line each: one line where they fit, wrapped where not
        parts = [f'<div class="procengine-line">{stats}</div>',
                 f'<div class="procengine-status">{self.status.value}</div>']
        if self.running.value:
            parts.append(f'<div class="procengine-running">{self.running.value}</div>')
        if self.failures.value:
            parts.append(f'<div class="procengine-failures">{self.failures.value}</div>')
        if self.error_table.value:
            parts.append(f'<div class="procengine-error-table">{self.error_table.value}</div>')
        return "".join(parts)

    def _running_html(self, ended: bool) -> str:
        if ended:
            return ""
        symbols: list[Any] = []
        if self._handle is not None:
            try:
                symbols = self._handle.running_symbols(6)
            except Exception:  # the batch's bookkeeping is read racily: never let it break a render
                symbols = []
        if not symbols:
            return ""
        shown = ", ".join(html_text(s, 40) for s in symbols[:5])
        more = ", …" if len(symbols) > 5 else ""
        return f"running: {shown}{more}"

    def _failures_html(self, ended: bool) -> str:
        """Counts grouped by exception type and message, then (while running) the latest failures."""
        if not self._failures.total:
            return ""
        groups = self._failures.groups()
        lines = []
        for group in groups[:3]:
            message = f": {html_text(group.message, 120)}" if group.message else " (various messages)"
            lines.append(f"<div>{group.count} x {html_text(group.kind, 80)}{message}</div>")
        if len(groups) > 3:
            lines.append(f"<div>+{sum(g.count for g in groups[3:])} more failures of other kinds</div>")
        latest = [] if ended else self._failures.latest()
        if latest:
            items = "".join(
                f"<li>{html_text(f.symbol, 40)}: {html_text(f.kind, 60)}: {html_text(f.message, 160)}</li>"
                for f in latest
            )
            lines.append(f"<div>latest:</div><ul>{items}</ul>")
        return "".join(lines)

    def _error_table_html(self, result: BatchResult | None) -> str:
        if result is None:
            return ""
        failed = result.errors
        if not failed:
            return ""
        rows = []
        for r in failed[: self._max_error_rows]:
            kind, message = describe_error(r.error)
            rows.append(
                f"<tr><td>{html_text(r.symbol, 80)}</td><td>{html_text(kind, 80)}</td>"
                f"<td>{html_text(message, 300)}</td></tr>"
            )
        more = len(failed) - self._max_error_rows
        extra = f'<div class="procengine-more">+{more} more (see result.errors)</div>' if more > 0 else ""
        noun = "symbol" if len(failed) == 1 else "symbols"
        return (
            f"<details><summary>{len(failed)} failed {noun}</summary>"
            "<table><thead><tr><th>symbol</th><th>error</th><th>message</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{extra}</details>"
        )

    # -- what viewers without widgets see, and what survives export ------------------------------------
    def as_text(self) -> str:
        """The panel's state as one line of plain text (its ``text/plain`` output), e.g.
        ``ProgressPanel(name='prices'): Running | 15 / 24 (62%) | errors 0``."""
        with self._lock:
            state = self._state()
            _, error = self._outcome if self._outcome is not None else (None, None)
            p = self._latest
            line = clean_text(status_text(state, p, error=error), 400)
            return f"{self!r}: {line} | {format_counts(p)} | errors {p.errors_count}"

    def as_html(self) -> str:
        """The panel's state as static HTML (its ``text/html`` output, no script, no style sheet)."""
        with self._lock:
            body = (
                f"{self.title.value} · {self.counts.value} · {self.errors.value} · {self.status.value}"
            )
            extra = "".join(
                f'<div class="procengine-{name}">{part.value}</div>'
                for name, part in (("failures", self.failures), ("error-table", self.error_table)) if part.value
            )
        live = f"<!--procengine-live--><div>{body}</div>{extra}<!--/procengine-live-->"
        return f'<div class="procengine-summary">{live}</div>'

    def _mimebundle(self) -> dict[str, Any]:
        """The widget view (unless the panel was closed) with the text fallbacks."""
        with self._lock:
            closed = self._closed
        if not closed:
            self._built()
        bundle = {} if closed else dict(widgets.Box._repr_mimebundle_(self) or {})
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
            state = self._state()
            result, error = self._outcome if self._outcome is not None else (None, None)
            line = status_text(state, self._latest, error=error)
            text = f"{clean_text(self._name)}: {line}"  # text/plain: Jupyter renders ANSI there
            table = self._error_table_html(result)
        body = f"<b>{html_text(self._name)}</b>: {html.escape(line)}"
        return JobSummary(text, f'<div class="procengine-summary">{body}{table}</div>')

    def summary_html(self) -> str:
        """:meth:`summary` as an HTML fragment."""
        return self.summary().html

    def __repr__(self) -> str:
        # Stable (no live figures), one bounded line.
        return f"ProgressPanel(name={clean_text(self._name)!r})"
