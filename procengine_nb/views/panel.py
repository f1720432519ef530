"""The notebook view: a live ipywidgets 8 panel with a Stop button bound to the job's token.

The panel is a ``VBox`` whose content lives in widget state (values of HTML and progress widgets), so it
renders the same in JupyterLab, in exported HTML and in tests. It implements the ``JobView`` protocol of
:mod:`procengine_nb.handle` (``update(progress)`` / ``finish(result, error)``).

- Throttled: at most one render per ``min_interval`` (0.1 s: ~10 renders per second whatever the symbol
  rate; a render sends one comm message per part whose value changed). A ticker thread re-renders while
  no symbol completes, so elapsed/ETA/"Stopping…" move; it stops when the job ends. The final state is
  always rendered, in ``finish`` — which the handle calls before ``result()`` returns.
- Stop: a click cancels the token; the button becomes "Stopping…" and is disabled; a second click does
  nothing. While a cell blocks in ``handle.result()`` the kernel cannot receive clicks (see the README,
  "Waiting for a job in a notebook"); ``await handle`` keeps them flowing on ipykernel >= 7.4.
- Every symbol, job name and exception message is escaped; each part carries a stable CSS class
  (``procengine-panel``, ``procengine-bar``, ``procengine-status``, ``procengine-stop``, ...).

>>> from procengine_nb import CancellationToken, ProcessingProgress
>>> panel = ProgressPanel(CancellationToken(), name="prices", ticker=False)
>>> panel.update(ProcessingProgress(total_symbols=4, completed_symbols=1))
>>> panel, panel.counts.value, panel.status.value
(ProgressPanel(name='prices'), '1 / 4 (25%)', 'Running')
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle

from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import BatchResult
from procengine_nb.progress import ProcessingProgress
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
from procengine_nb.views._ticker import Ticker

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.handle import JobHandle

__all__ = ["JobSummary", "ProgressPanel"]

_log = logging.getLogger(__name__)
STOP_REASON = "stopped from the panel"
"""The cancel reason a Stop click gives the token."""


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


class ProgressPanel(widgets.VBox):
    """A live panel for one job: name, bar, counts, errors, elapsed, ETA, rate, running symbols, status,
    a Stop button and (at the end) a collapsible table of failed symbols.

    Args:
        token: the job's cancellation token; Stop cancels it.
        name: the job name shown in the title (default: the handle's job name, else "batch").
        handle: the :class:`~procengine_nb.JobHandle`, to show the symbols running right now.
        max_error_rows: rows of the failed-symbols table before "+K more".
        min_interval: seconds between two renders (the throttle); 0.1 gives ~10 per second.
        refresh_interval: seconds between re-renders while nothing completes (elapsed/ETA move).
        clock: the time source in seconds (injectable for tests).
        ticker: start the refresh thread on the first update (tests drive :meth:`tick` instead).

    Use :meth:`for_handle` to make a panel for a running job and attach it in one call.
    """

    def __init__(
        self,
        token: CancellationToken,
        *,
        name: str | None = None,
        handle: JobHandle | None = None,
        max_error_rows: int = 20,
        min_interval: float = 0.1,
        refresh_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
    ) -> None:
        if not isinstance(token, CancellationToken):
            raise TypeError(f"token must be a procengine_nb.CancellationToken, not {type(token).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if isinstance(max_error_rows, bool) or not isinstance(max_error_rows, int):
            raise TypeError(f"max_error_rows must be an int, not {type(max_error_rows).__name__}")
        if max_error_rows < 0:
            raise ValueError(f"max_error_rows must be >= 0, got {max_error_rows}")
        for label, value in (("min_interval", min_interval), ("refresh_interval", refresh_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{label} must be a number of seconds, not {type(value).__name__}")
            if not value >= 0 or value == math.inf:
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if name is None and handle is not None:
            name = handle.job.display_name
        self._token = token
        self._handle = handle
        self._name = name if name is not None else "batch"
        self._max_error_rows = max_error_rows
        self._min_interval = float(min_interval)
        self._refresh_interval = float(refresh_interval)
        self._clock = clock
        self._use_ticker = ticker
        self._lock = threading.RLock()
        self._latest = handle.progress if handle is not None else ProcessingProgress(total_symbols=0)
        self._received_at = clock()
        self._last_render = -math.inf
        self._dirty = False
        self._ending = False
        self._outcome: tuple[BatchResult | None, BaseException | None] | None = None
        self._stop_clicked = False
        self._ticker: Ticker | None = None
        self.render_count = 0
        """How many times the panel was rendered (throttled updates plus forced ones)."""

        # The stable CSS classes (what ``add_class`` sets) and the layout are given at construction,
        # so they travel in the widget's opening message instead of one more update each. Parts share
        # their Layout and HTMLStyle models: every widget model is one more comm to open in the kernel
        # and the browser (39 models per panel before sharing, 23 after).
        plain, spaced_layout = widgets.Layout(), widgets.Layout(margin="0 1.5em 0 0")
        html_style = HTMLStyle()

        def part(cls: type[widgets.DOMWidget], css: str, margin: str | None = None, **traits: Any) -> Any:
            layout = traits.pop("layout", None) or (spaced_layout if margin else plain)
            if cls is widgets.HTML:
                traits["style"] = html_style
            return cls(_dom_classes=(css,), layout=layout, **traits)

        spaced = "0 1.5em 0 0"
        self.title = part(widgets.HTML, "procengine-title", value=f"<b>{html_text(self._name)}</b>")
        self.progress_bar = part(widgets.IntProgress, "procengine-bar", value=0, min=0, max=1, bar_style="info",
                                 layout=widgets.Layout(flex="1 1 auto", width="auto", margin=spaced))
        self.counts = part(widgets.HTML, "procengine-counts")
        self.errors = part(widgets.HTML, "procengine-errors", spaced)
        self.elapsed = part(widgets.HTML, "procengine-elapsed", spaced)
        self.eta = part(widgets.HTML, "procengine-eta", spaced)
        self.rate = part(widgets.HTML, "procengine-rate")
        self.running = part(widgets.HTML, "procengine-running")
        self.status = part(widgets.HTML, "procengine-status", spaced)
        self.stop_button = part(widgets.Button, "procengine-stop", description="Stop", icon="stop",
                                button_style="danger",
                                tooltip="Cancel the job: pending symbols are dropped, partial results kept")
        self.error_table = part(widgets.HTML, "procengine-error-table")
        self.stop_button.on_click(self._on_stop)
        row = widgets.Layout(align_items="center")
        super().__init__(
            children=[
                self.title,
                widgets.HBox([self.progress_bar, self.counts], layout=row),
                widgets.HBox([self.errors, self.elapsed, self.eta, self.rate], layout=row),
                self.running,
                widgets.HBox([self.status, self.stop_button], layout=row),
                self.error_table,
            ],
            _dom_classes=("procengine-panel",),
        )
        with self._lock:
            self._render(self._clock())
            self._last_render = -math.inf  # the first snapshot is shown at once
            self.render_count = 0

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

    # -- JobView ----------------------------------------------------------------------------------
    def update(self, progress: ProcessingProgress) -> None:
        """Take a new snapshot; render it now unless the last render was under ``min_interval`` ago
        (then the ticker renders it soon). Cheap: called after every symbol."""
        start_ticker = False
        with self._lock:
            if self._ending:
                return
            now = self._clock()
            self._latest = progress
            self._received_at = now
            if now - self._last_render >= self._min_interval:
                self._render(now)
            else:
                self._dirty = True
            if self._use_ticker and self._ticker is None:
                self._ticker = Ticker(self.tick, interval=max(self._min_interval, 0.01),
                                      name="procengine-panel-ticker")
                start_ticker = True
        if start_ticker:
            assert self._ticker is not None
            self._ticker.start()

    def finish(self, result: BatchResult | None, error: BaseException | None) -> None:
        """Show the final state (always rendered, whatever the throttle) and stop the ticker."""
        with self._lock:
            if self._outcome is not None:
                return
            self._ending = True
            ticker = self._ticker
        self._stop_ticker(ticker)
        with self._lock:
            self._outcome = (result, error)
            if result is not None:
                self._latest = result.progress
            elif self._handle is not None:
                self._latest = self._handle.progress
            self._render(self._clock())
            self.error_table.value = self._error_table_html(result)

    # -- time passing -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Re-render if a throttled snapshot is pending or ``refresh_interval`` passed (the ticker
        thread calls this every ``min_interval``; tests call it directly with a fake clock)."""
        with self._lock:
            if self._ending:
                return
            now = self._clock()
            since = now - self._last_render
            if (self._dirty and since >= self._min_interval) or since >= self._refresh_interval:
                self._render(now)

    @staticmethod
    def _stop_ticker(ticker: Ticker | None) -> None:
        if ticker is not None:
            ticker.stop()

    def close(self) -> None:
        """Stop the ticker and close the panel's widgets (the view disappears from the notebook)."""
        if "_lock" not in self.__dict__:  # __init__ refused its arguments (Widget.__del__ still closes)
            super().close()
            return
        with self._lock:
            self._ending = True
            ticker = self._ticker
        self._stop_ticker(ticker)
        for child in list(self.children):
            if isinstance(child, widgets.Box):
                for grandchild in child.children:
                    grandchild.close()
            child.close()
        super().close()

    # -- Stop ----------------------------------------------------------------------------------------
    def _on_stop(self, _button: Any = None) -> None:
        with self._lock:
            if self._stop_clicked or self._outcome is not None:
                return  # a second click (or a click after the end) does nothing
            self._stop_clicked = True
            self.stop_button.description = "Stopping…"
            self.stop_button.disabled = True
        self._token.cancel(STOP_REASON)  # outside the lock: cancel runs the token's callbacks
        with self._lock:
            if self._outcome is None:
                self._render(self._clock())

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
        """Push the current figures into the widgets (caller holds the lock). Only changed values
        send a message to the front-end."""
        self._last_render = now
        self._dirty = False
        self.render_count += 1
        p = self._latest
        state = self._state()
        _, error = self._outcome if self._outcome is not None else (None, None)
        ended = self._outcome is not None
        elapsed_ms: float = p.elapsed_time_ms
        eta_ms: float | None = p.estimated_remaining_ms
        if state in (JobState.CANCELLED, JobState.FAILED):
            eta_ms = None  # a stopped job has no time remaining to show
        elif not ended and not p.finished:  # let time move between snapshots
            drift = max(0.0, now - self._received_at) * 1000.0
            elapsed_ms += drift
            if eta_ms is not None:
                eta_ms = max(0.0, eta_ms - drift)
        bar = self.progress_bar
        with bar.hold_sync():
            bar.max = max(1, p.total_symbols)
            bar.value = p.completed_symbols if p.total_symbols else (1 if ended else 0)
            bar.bar_style = bar_style(state)
        self.counts.value = format_counts(p)
        if p.errors_count:
            self.errors.value = f'<b style="color:var(--jp-error-color1, #d32f2f)">errors: {p.errors_count}</b>'
        else:
            self.errors.value = "errors: 0"
        self.elapsed.value = f"elapsed {format_duration(elapsed_ms)}"
        self.eta.value = f"ETA {format_duration(eta_ms)}"
        self.rate.value = format_rate(p.rate_per_second)
        self.running.value = self._running_html(ended)
        self.status.value = html.escape(status_text(state, p, error=error))
        button = self.stop_button
        if state is JobState.STOPPING and not button.disabled:
            with button.hold_sync():
                button.description = "Stopping…"
                button.disabled = True
        elif ended:
            # the job is over: the button no longer acts; after a cancel it says so
            final = "Stopped" if state is JobState.CANCELLED else button.description
            if not button.disabled or button.description != final:
                with button.hold_sync():
                    button.description = final
                    button.disabled = True

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

    # -- what survives export -------------------------------------------------------------------------
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
        # The widget's text/plain output: stable (no live figures), one bounded line.
        return f"ProgressPanel(name={clean_text(self._name)!r})"
