"""The one renderer of a job's text: what a view knows of a job in, text and HTML parts out.

Every view shows the same figures: the notebook panel (its live HTML, its failures HTML, its
``text/plain`` and ``text/html`` fallbacks), the terminal line and the ``jobs()`` summary lines. They all
come from :func:`render`, a pure function of a :class:`JobFacts` (the snapshot, the state, the times to
show, the running and stalled symbols, the failure groups, the failed results at the end): no widgets,
no clock, no locks, so it is tested on its own and the views cannot drift apart.

User data (the job name, symbols, exception types, messages and tracebacks) goes through
:func:`~procengine_nb.views._format.clean_text` (plain parts) and :func:`~procengine_nb.views._format.html_text`
(HTML parts); tracebacks keep their lines and are escaped whole.

>>> from procengine_nb.progress import ProcessingProgress
>>> p = ProcessingProgress(total_symbols=10, completed_symbols=4, errors_count=1, elapsed_time_ms=2000,
...                        estimated_remaining_ms=3000, rate_per_second=2.0)
>>> text = render(JobFacts("prices", p, JobState.RUNNING, eta_ms=3000))
>>> text.line()
'prices: 4 / 10 (40%) | errors 1 | elapsed 2.0s | ETA 3.0s | 2.0/s | Running'
>>> text.bar.done, text.bar.failed, text.bar.maximum
(3, 1, 10)
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from procengine_nb.progress import ProcessingProgress
from procengine_nb.views._failures import Failure, FailureGroup, bound_traceback
from procengine_nb.views._format import (
    JobState,
    bar_style,
    clean_text,
    describe_error,
    format_counts,
    format_duration,
    format_rate,
    html_text,
    status_text,
)

__all__ = ["Bar", "JobFacts", "JobText", "render"]

SHOWN_RUNNING = 5
"""Running symbols named (then "…")."""
SHOWN_STALLED = 5
"""Stalled symbols named (then "+N more")."""
SHOWN_GROUPS = 3
"""Failure groups listed (then "+N more failures of other kinds")."""


@dataclass(frozen=True)
class JobFacts:
    """What a view knows of a job at one moment: everything :func:`render` reads."""

    name: str
    """The job's name (user data)."""
    progress: ProcessingProgress
    """The latest snapshot (the final one once the job ended)."""
    state: JobState
    """What the job is shown as (running, paused, stopping, done, ...)."""
    error: BaseException | None = None
    """What crashed the engine (state FAILED)."""
    elapsed_ms: float | None = None
    """The elapsed time to show; None: the snapshot's."""
    eta_ms: float | None = None
    """The time remaining to show (None: unknown). Use :func:`~procengine_nb.views._live.shown_times`."""
    running: Sequence[Any] = ()
    """Symbols running now (up to ``SHOWN_RUNNING + 1``: one more says there are more)."""
    stalled: Sequence[tuple[Any, float]] = ()
    """``(symbol, seconds running)`` of the symbols running far longer than the rest, longest first."""
    groups: Sequence[FailureGroup] = ()
    """Failures counted by type and message, largest first."""
    latest: Sequence[Failure] = ()
    """The latest failures, newest first (listed while the job runs)."""
    failed_results: Sequence[Any] = ()
    """The failed :class:`~procengine_nb.SymbolResult` s of the final result (the table at the end)."""
    max_error_rows: int = 20
    """Rows of that table before "+K more"."""
    notice: str = ""
    """A line to add under the status (e.g. why a Retry could not start): plain text, user data."""
    ended: bool = field(default=False)
    """The job returned (or crashed): no running symbols, no latest failures, the table instead."""


class Bar(NamedTuple):
    """The bar: ``done`` succeeded and ``failed`` failed of ``maximum`` (at least 1), coloured by ``style``."""

    done: int
    failed: int
    maximum: int
    style: str

    @property
    def value(self) -> int:
        """The completed share (done + failed), what a progress bar's ``value`` is."""
        return self.done + self.failed

    def html(self, label: str = "") -> str:
        """The bar as HTML: the done share in the state's colour, the failed share beside it in the
        error colour; ``role="progressbar"`` and its ``aria-value*`` carry the figures."""
        ok = _share(self.done, self.maximum)
        bad = min(_share(self.failed, self.maximum), 100.0 - ok)
        aria = f' aria-label="{label}"' if label else ""
        return (
            f'<div class="procengine-bar procengine-bar-{self.style}" role="progressbar"{aria} aria-valuemin="0"'
            f' aria-valuemax="{self.maximum}" aria-valuenow="{self.value}" data-failed="{self.failed}">'
            f'<div class="procengine-bar-done" style="width:{ok:.3f}%"></div>'
            f'<div class="procengine-bar-failed" style="width:{bad:.3f}%"></div></div>'
        )


def _share(part: int, whole: int) -> float:
    return 0.0 if whole <= 0 else max(0.0, min(100.0, 100.0 * part / whole))


@dataclass(frozen=True)
class JobText:
    """The rendered parts of one job: plain text (``clean_text``-ed, one line each) and HTML (escaped)."""

    name: str
    """The job name, one clean line."""
    counts: str
    errors: int
    elapsed: str
    eta: str
    rate: str
    status: str
    """The status line; it always starts with the state's name ("Running", "Paused", "Done", ...)."""
    running: str
    """"A, B, C, …" or empty."""
    stalled: str
    """"A (running 1m 05s), B (running 40s)" or empty."""
    notice: str
    bar: Bar
    failures_html: str
    """The failure groups (each a ``<details>`` opening to its latest traceback) and the latest failures."""
    table_html: str
    """At the end: the failed symbols as a collapsible table (or empty)."""

    # -- HTML ---------------------------------------------------------------------------------------
    def title_html(self) -> str:
        return f"<b>{html.escape(self.name)}</b>"

    def live_html(self) -> str:
        """The part of the panel that moves with time: name and bar, figures, status, running, stalled."""
        errors_class = "procengine-errors procengine-err" if self.errors else "procengine-errors"
        stats = (
            f'<span class="procengine-counts">{html.escape(self.counts)}</span>'
            f'<span class="{errors_class}">errors: {self.errors}</span>'
            f'<span class="procengine-elapsed">{html.escape(self.elapsed)}</span>'
            f'<span class="procengine-eta">{html.escape(self.eta)}</span>'
            f'<span class="procengine-rate">{html.escape(self.rate)}</span>'
        )
        parts = [
            f'<div class="procengine-head"><span class="procengine-title">{self.title_html()}</span>'
            f"{self.bar.html(html.escape(self.name))}</div>",
            f'<div class="procengine-line">{stats}</div>',
            f'<div class="procengine-status">{html.escape(self.status)}</div>',
        ]
        if self.notice:
            parts.append(f'<div class="procengine-notice procengine-err">{html.escape(self.notice)}</div>')
        if self.stalled:
            parts.append(f'<div class="procengine-stalled">stalled: {html.escape(self.stalled)}</div>')
        if self.running:
            parts.append(f'<div class="procengine-running">running: {html.escape(self.running)}</div>')
        return "".join(parts)

    def failures_block_html(self) -> str:
        """The failures and, at the end, the table of failed symbols (the panel's second text)."""
        parts = []
        if self.failures_html:
            parts.append(f'<div class="procengine-failures">{self.failures_html}</div>')
        if self.table_html:
            parts.append(f'<div class="procengine-error-table">{self.table_html}</div>')
        return "".join(parts)

    def static_html(self) -> str:
        """The ``text/html`` fallback: no style sheet, no script; what a viewer without widgets shows."""
        body = " · ".join((self.title_html(), html.escape(self.counts), f"errors: {self.errors}",
                           html.escape(self.status)))
        extra = f'<div class="procengine-stalled">stalled: {html.escape(self.stalled)}</div>' if self.stalled else ""
        live = f"<!--procengine-live--><div>{body}</div>{extra}{self.failures_block_html()}<!--/procengine-live-->"
        return f'<div class="procengine-summary">{live}</div>'

    # -- text ---------------------------------------------------------------------------------------
    def line(self) -> str:
        """The terminal line: ``name: counts | errors N | elapsed | ETA | rate | status[ | stalled: …]``."""
        line = (f"{self.name}: {self.counts} | errors {self.errors} | {self.elapsed} | {self.eta} | {self.rate}"
                f" | {self.status}")
        return f"{line} | stalled: {self.stalled}" if self.stalled else line

    def plain(self, prefix: str) -> str:
        """The ``text/plain`` fallback: ``prefix: status | counts | errors N[ | stalled: …]``."""
        text = f"{prefix}: {self.status} | {self.counts} | errors {self.errors}"
        return f"{text} | stalled: {self.stalled}" if self.stalled else text

    def summary(self) -> str:
        """One line for a list of jobs: ``name: status``."""
        return f"{self.name}: {self.status}"


def render(facts: JobFacts) -> JobText:
    """Every part of ``facts`` as text and HTML (pure: same facts, same text)."""
    p = facts.progress
    state = facts.state
    elapsed = p.elapsed_time_ms if facts.elapsed_ms is None else facts.elapsed_ms
    running = "" if facts.ended else _symbols(facts.running, SHOWN_RUNNING)
    stalled = "" if facts.ended else _stalled(facts.stalled)
    return JobText(
        name=clean_text(facts.name, 60),
        counts=format_counts(p),
        errors=p.errors_count,
        elapsed=f"elapsed {format_duration(elapsed)}",
        eta=f"ETA {format_duration(facts.eta_ms)}",
        rate=format_rate(p.rate_per_second),
        status=clean_text(status_text(state, p, error=facts.error), 500),
        running=running,
        stalled=stalled,
        notice=clean_text(facts.notice, 300) if facts.notice else "",
        bar=_bar(p, state, facts.ended),
        failures_html=_failures_html(facts),
        table_html=_table_html(facts.failed_results, facts.max_error_rows) if facts.ended else "",
    )


def _bar(p: ProcessingProgress, state: JobState, ended: bool) -> Bar:
    style = bar_style(state)
    if not p.total_known:  # no total, no share of it to draw: the bar stays empty, the counts speak
        return Bar(0, 0, 1, style)
    if p.total_symbols == 0:
        return Bar(1 if ended else 0, 0, 1, style)
    failed = min(p.errors_count, p.completed_symbols)
    return Bar(p.completed_symbols - failed, failed, p.total_symbols, style)


def _name(symbol: Any) -> str:
    """A symbol as shown in a list: one clean line, ``''`` when nothing printable is left of it."""
    return clean_text(symbol, 40) or "''"


def _symbols(symbols: Sequence[Any], shown: int) -> str:
    if not symbols:
        return ""
    names = ", ".join(_name(s) for s in list(symbols)[:shown])
    return names + (", …" if len(symbols) > shown else "")


def _stalled(stalled: Sequence[tuple[Any, float]]) -> str:
    if not stalled:
        return ""
    items = list(stalled)
    text = ", ".join(f"{_name(symbol)} (running {format_duration(_ms(seconds))})"
                     for symbol, seconds in items[:SHOWN_STALLED])
    more = len(items) - SHOWN_STALLED
    return f"{text}, +{more} more" if more > 0 else text


def _ms(seconds: Any) -> float | None:
    try:
        value = float(seconds) * 1000.0
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _failures_html(facts: JobFacts) -> str:
    """Counts grouped by exception type and message, each opening to its latest traceback; then (while
    running) the latest failures."""
    groups = list(facts.groups)
    if not groups:
        return ""
    lines = []
    for group in groups[:SHOWN_GROUPS]:
        message = f": {html_text(group.message, 120)}" if group.message else " (various messages)"
        head = f"{group.count} x {html_text(group.kind, 80)}{message}"
        trace = bound_traceback(group.traceback)
        if trace:
            lines.append(f'<details class="procengine-group"><summary>{head}</summary>'
                         f'<pre class="procengine-traceback">{_escape_block(trace)}</pre></details>')
        else:
            lines.append(f'<div class="procengine-group">{head}</div>')
    if len(groups) > SHOWN_GROUPS:
        lines.append(f"<div>+{sum(g.count for g in groups[SHOWN_GROUPS:])} more failures of other kinds</div>")
    latest = [] if facts.ended else list(facts.latest)
    if latest:
        items = "".join(
            f"<li>{html_text(f.symbol, 40)}: {html_text(f.kind, 60)}: {html_text(f.message, 160)}</li>"
            for f in latest
        )
        lines.append(f"<div>latest:</div><ul>{items}</ul>")
    return "".join(lines)


def _escape_block(text: str) -> str:
    """Multi-line user text for a ``<pre>``: each line cleaned (no control or bidi characters), escaped."""
    return "\n".join(html_text(line, 1000) for line in text.split("\n"))


def _table_html(failed: Sequence[Any], max_rows: int) -> str:
    if not failed:
        return ""
    rows = []
    for r in list(failed[:max_rows]):
        kind, message = describe_error(getattr(r, "error", None))
        rows.append(
            f"<tr><td>{html_text(getattr(r, 'symbol', '?'), 80)}</td><td>{html_text(kind, 80)}</td>"
            f"<td>{html_text(message, 300)}</td></tr>"
        )
    more = len(failed) - max_rows
    extra = f'<div class="procengine-more">+{more} more (see result.errors)</div>' if more > 0 else ""
    noun = "symbol" if len(failed) == 1 else "symbols"
    return (
        f"<details><summary>{len(failed)} failed {noun}</summary>"
        "<table><thead><tr><th>symbol</th><th>error</th><th>message</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{extra}</details>"
    )
