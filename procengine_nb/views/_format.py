"""Pure formatting shared by the views (notebook panel, terminal line): no state, no widgets.

Like rich's progress columns, each function turns one figure of a :class:`ProcessingProgress` into
text. Views decide where the text goes; everything that may contain user data (symbols, exception
messages, job names) goes through :func:`clean_text` (terminal) or :func:`html_text` (HTML).

>>> format_duration(65_000), format_duration(400), format_duration(None)
('1m 05s', '0.4s', '—')
>>> format_counts(ProcessingProgress(total_symbols=100, completed_symbols=37))
'37 / 100 (37%)'
>>> html_text("<script>alert(1)</script>")
'&lt;script&gt;alert(1)&lt;/script&gt;'
"""

from __future__ import annotations

import enum
import html
import math
import re
from typing import Any

from procengine_nb._safe import safe_str, type_name
from procengine_nb._validation import check_int
from procengine_nb.progress import ProcessingProgress

__all__ = [
    "JobState",
    "bar_style",
    "clean_text",
    "describe_error",
    "format_counts",
    "format_duration",
    "format_rate",
    "html_text",
    "job_state",
    "safe_str",
    "status_text",
    "truncate",
]

UNKNOWN = "—"
"""Shown for a figure that is not known yet (the ETA before the first completion)."""

# CSI sequences (colours, cursor moves), OSC sequences (titles, hyperlinks), other two-byte escapes,
# then any remaining C0/C1 control character (\r, \b, \x07, ...).
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Unicode bidirectional controls (embeddings, overrides such as U+202E, isolates, marks): invisible
# characters that reorder what follows them ("Trojan Source"), so a symbol could show as another one.
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def format_duration(ms: float | None) -> str:
    """A human duration from milliseconds: ``0.4s``, ``12.0s``, ``1m 05s``, ``2h 03m 09s``; ``—`` for None.

    Under 10 s one decimal is shown (short batches move visibly); above, whole seconds.

    >>> [format_duration(x) for x in (0, 950, 9_960, 10_000, 3_600_000 + 185_000)]
    ['0.0s', '0.9s', '9.9s', '10s', '1h 03m 05s']
    """
    if ms is None:
        return UNKNOWN
    if isinstance(ms, bool) or not isinstance(ms, (int, float)):
        raise TypeError(f"ms must be a number or None, not {type(ms).__name__}")
    if ms != ms or ms == math.inf:
        return UNKNOWN
    whole_ms = max(0, round(ms))  # float drift (2599.9999 ms) must not lose a tenth
    if whole_ms < 10_000:
        tenths = whole_ms // 100  # floor: never show 10.0s for 9.96s
        return f"{tenths // 10}.{tenths % 10}s"
    seconds = whole_ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_rate(per_second: float) -> str:
    """Completions per second: ``1234/s``, ``12.3/s``, ``0.25/s``, ``1.2/min`` when slower; ``—`` for 0.

    >>> [format_rate(x) for x in (0.0, 0.02, 0.5, 12.34, 4321.0)]
    ['—', '1.2/min', '0.50/s', '12.3/s', '4321/s']
    """
    if isinstance(per_second, bool) or not isinstance(per_second, (int, float)):
        raise TypeError(f"per_second must be a number, not {type(per_second).__name__}")
    if not per_second > 0 or per_second == math.inf:
        return UNKNOWN
    if per_second < 0.1:
        return f"{per_second * 60:.1f}/min"
    if per_second < 1:
        return f"{per_second:.2f}/s"
    if per_second < 100:
        return f"{per_second:.1f}/s"
    return f"{per_second:.0f}/s"


def format_counts(progress: ProcessingProgress) -> str:
    """``completed / total (pct%)``; the percentage is floored so 100% means really finished.

    >>> format_counts(ProcessingProgress(total_symbols=3, completed_symbols=2))
    '2 / 3 (66%)'
    >>> format_counts(ProcessingProgress(total_symbols=0))
    '0 / 0 (100%)'

    A lazy input whose total is not known shows no percentage; symbols waiting to retry are counted:

    >>> format_counts(ProcessingProgress(total_symbols=40, completed_symbols=37, total_known=False, retrying=2))
    '37 done (total unknown), 2 waiting to retry'

    A rerun with ``store=`` says how many came from the store without running:

    >>> format_counts(ProcessingProgress(total_symbols=10, completed_symbols=8, from_store=6))
    '8 / 10 (80%), 6 from the store'
    """
    if progress.total_known:
        text = f"{progress.completed_symbols} / {progress.total_symbols} ({math.floor(progress.percentage)}%)"
    else:
        text = f"{progress.completed_symbols} done (total unknown)"
    if progress.retrying:
        text += f", {progress.retrying} waiting to retry"
    if progress.from_store:
        text += f", {progress.from_store} from the store"
    return text


def truncate(text: str, limit: int = 200) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending with ``…`` when something was cut.

    >>> truncate("abcdef", 4)
    'abc…'
    """
    check_int(limit, "limit", minimum=1)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_text(value: Any, limit: int = 200) -> str:
    """User data made safe for one line of a terminal or a ``text/plain`` output: the one sanitiser
    every view passes symbols, job names and exception types/messages through.

    ``str(value)`` (never raises, see :func:`safe_str`) with ANSI CSI/OSC/C1 escape sequences and
    Unicode bidi controls (U+202E, ...) removed, every other control character (newlines, ``\\r``,
    bells, C1, U+2028/U+2029) turned into a space, then cut to ``limit`` characters by :func:`truncate`.

    >>> clean_text("\\x1b[31mred\\x1b[0m\\r\\nnext")
    'red  next'
    >>> clean_text("invoice\\u202eexe.pdf"), clean_text("x" * 500, 10)
    ('invoiceexe.pdf', 'xxxxxxxxx…')
    """
    # cut first (generously: escape sequences are removed after), so a 10 MB text costs no more
    text = _BIDI.sub("", _ANSI.sub("", safe_str(value, 4 * limit + 256 if type(limit) is int and limit > 0 else None)))
    return truncate(_CONTROL.sub(" ", text), limit)


def html_text(value: Any, limit: int = 200) -> str:
    """:func:`clean_text`, then ``html.escape``\\ d (quotes too): user data safe in HTML text and attributes.

    >>> html_text('\\x1b[1m<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    """
    return html.escape(clean_text(value, limit), quote=True)


def describe_error(error: BaseException | None, limit: int | None = None) -> tuple[str, str]:
    """``(exception type name, message)`` of ``error``: raw user data, pass it through :func:`clean_text`
    or :func:`html_text` where it is shown."""
    if error is None:
        return ("", "")
    return (type_name(error), safe_str(error, limit))


class JobState(enum.Enum):
    """What a view shows a job as; the value is the start of the status text."""

    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPING = "Stopping…"
    DONE = "Done"
    DONE_WITH_ERRORS = "Done with errors"
    CANCELLED = "Cancelled"
    FAILED = "Failed"


_BAR_STYLES = {
    JobState.RUNNING: "info",
    JobState.PAUSED: "info",
    JobState.STOPPING: "warning",
    JobState.DONE: "success",
    JobState.DONE_WITH_ERRORS: "warning",
    JobState.CANCELLED: "warning",
    JobState.FAILED: "danger",
}


def bar_style(state: JobState) -> str:
    """The ipywidgets ``bar_style`` for a state (success, warning, danger or info)."""
    return _BAR_STYLES[state]


def job_state(
    progress: ProcessingProgress, *, cancel_requested: bool = False, ended: bool = False,
    cancelled: bool | None = None, error: BaseException | None = None, paused: bool | None = None,
) -> JobState:
    """The state of a job from its latest snapshot and what the view knows about its end.

    ``cancel_requested``: the token is cancelled; ``ended``: the job returned (or crashed with
    ``error``); ``cancelled``: the result's ``cancelled`` flag (defaults to the snapshot's); ``paused``:
    the handle says it is paused (defaults to the snapshot's ``paused``). A Stop while paused is a Stop.

    >>> job_state(ProcessingProgress(total_symbols=4), paused=True)
    <JobState.PAUSED: 'Paused'>
    """
    if error is not None:
        return JobState.FAILED
    if not ended:
        if cancel_requested or progress.cancelled:
            return JobState.STOPPING
        if getattr(progress, "paused", False) if paused is None else paused:
            return JobState.PAUSED
        return JobState.RUNNING
    if progress.cancelled if cancelled is None else cancelled:
        return JobState.CANCELLED
    return JobState.DONE_WITH_ERRORS if progress.errors_count else JobState.DONE


def status_text(state: JobState, progress: ProcessingProgress, *, error: BaseException | None = None) -> str:
    """The status line; it always starts with the state's name.

    One clean line: the FAILED state's exception type name and message are user data and go through
    :func:`clean_text` (no control/ANSI sequences, bounded length); escape the line for HTML
    (``html.escape``) like any text.

    >>> p = ProcessingProgress(total_symbols=100, completed_symbols=37, cancelled=True, finished=True)
    >>> status_text(JobState.CANCELLED, p)
    'Cancelled: 37 of 100 processed, 63 not processed'
    >>> status_text(JobState.STOPPING, ProcessingProgress(total_symbols=9, running_symbols=2))
    'Stopping… 2 still running'
    >>> status_text(JobState.PAUSED, ProcessingProgress(total_symbols=9))
    'Paused'
    """
    done, total = progress.completed_symbols, progress.total_symbols
    if state is JobState.FAILED:
        kind, message = describe_error(error)
        kind, message = clean_text(kind, 80), clean_text(message, 300)
        return f"Failed: {kind}: {message}" if message else f"Failed: {kind}"
    if state is JobState.STOPPING:
        return f"Stopping… {progress.running_symbols} still running"
    if state is JobState.PAUSED:  # those running finish; nothing new starts until Continue
        running = progress.running_symbols
        return f"Paused: {running} still running" if running else "Paused"
    if state is JobState.CANCELLED:
        return f"Cancelled: {done} of {total} processed, {total - done} not processed"
    if state is JobState.DONE_WITH_ERRORS:
        return f"Done with errors: {progress.errors_count} of {total} failed"
    if state is JobState.DONE:
        return f"Done: {total} processed"
    return "Running"
