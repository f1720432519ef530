"""The terminal view: one progress line on stderr with the panel's figures.

On a TTY the line is redrawn in place (``\\r``) at most every ``min_interval`` (0.1 s); on anything else
(a log file, CI) a plain line is written every ``min_interval`` (5 s by default) so logs stay short.
The end of the job always prints the final line and the summary; user data (symbols, messages, the
job name) is stripped of control and ANSI sequences so it cannot move the cursor or recolour the terminal.
While the line is shown on a TTY, log records written to the same terminal appear on their own lines
with the progress line redrawn below them (see :mod:`procengine_nb.views._loglines`).
A ``KeyboardInterrupt`` while waiting in ``handle.result()`` cancels the job (see ``JobHandle``), and
:meth:`ConsoleProgress.finish` then prints the partial summary.

>>> import io
>>> from procengine_nb import ProcessingEngine
>>> out = io.StringIO()
>>> handle = ProcessingEngine(str.upper).start(["a", "b"])
>>> handle.attach(ConsoleProgress(name="demo", stream=out, tty=False))
>>> _ = handle.result(timeout=10)
>>> print(out.getvalue().splitlines()[-1])
demo: Done: 2 processed
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from procengine_nb.models import BatchResult
from procengine_nb.progress import ProcessingProgress
from procengine_nb.views._format import JobState, clean_text, describe_error, job_state, status_text
from procengine_nb.views._live import Throttle, check_interval, read_handle, shown_times
from procengine_nb.views._loglines import LogLineGuard
from procengine_nb.views._render import JobFacts, render

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.cancellation import CancellationToken
    from procengine_nb.handle import JobHandle

__all__ = ["ConsoleProgress", "progress_line"]

_SHOWN_ERRORS = 5


def progress_line(name: str, progress: ProcessingProgress, *, status: str = "",
                  elapsed_ms: float | None = None, eta_ms: float | None = None) -> str:
    """The figures of one snapshot as one plain line (no control characters), from the renderer every
    view shares (:func:`procengine_nb.views._render.render`).

    >>> p = ProcessingProgress(total_symbols=10, completed_symbols=4, errors_count=1, elapsed_time_ms=2000,
    ...                        estimated_remaining_ms=3000, rate_per_second=2.0)
    >>> progress_line("prices", p)
    'prices: 4 / 10 (40%) | errors 1 | elapsed 2.0s | ETA 3.0s | 2.0/s'
    """
    eta = progress.estimated_remaining_ms if eta_ms is None else eta_ms
    text = render(JobFacts(name, progress, JobState.RUNNING, elapsed_ms=elapsed_ms, eta_ms=eta))
    line = f"{text.name}: {text.counts} | errors {text.errors} | {text.elapsed} | {text.eta} | {text.rate}"
    return f"{line} | {clean_text(status, 500)}" if status else line


class ConsoleProgress:
    """A ``JobView`` that writes the job's progress to a text stream (stderr by default).

    Args:
        token: the job's token, to show "Stopping…" as soon as a cancel is asked for (optional).
        name: the job name at the start of each line.
        stream: where to write (default ``sys.stderr`` at the time of each write).
        tty: redraw in place; default ``stream.isatty()``.
        min_interval: seconds between two lines (default 0.1 on a TTY, 5.0 otherwise).
        clock: the time source in seconds (injectable for tests).
        ticker: on a TTY, redraw every ``min_interval`` while nothing completes (elapsed moves).
        redirect_logging: on a TTY, keep log records written to the same terminal off the line.
        handle: the job's handle, to show "Paused" at once and the stalled symbols (optional).
    """

    def __init__(
        self,
        token: CancellationToken | None = None,
        *,
        name: str = "batch",
        stream: TextIO | None = None,
        tty: bool | None = None,
        min_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
        redirect_logging: bool = True,
        handle: JobHandle | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if stream is not None and not callable(getattr(stream, "write", None)):
            raise TypeError(f"stream must be a text stream with write() or None (sys.stderr), "
                            f"not {type(stream).__name__}")
        if min_interval is not None:
            min_interval = check_interval(min_interval, "min_interval")
        self._token = token
        self._handle = handle
        self._name = name
        self._stream = stream
        self._tty = self._isatty() if tty is None else bool(tty)
        self._min_interval = float(min_interval) if min_interval is not None else (0.1 if self._tty else 5.0)
        self._clock = clock
        self._throttle = Throttle(self._write_progress, min_interval=self._min_interval, clock=clock,
                                  ticker_name="procengine-console-ticker" if ticker and self._tty else None)
        self._lock = self._throttle.lock
        self._latest: ProcessingProgress | None = None
        self._received_at = 0.0
        self._width = 0
        self._line = ""
        self._ended = False
        self._guard: LogLineGuard | None = None
        self._redirect_logging = bool(redirect_logging) and self._tty
        self.lines_written = 0
        """How many progress lines (or in-place redraws) were written."""

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except Exception:
            return False

    # -- JobView ------------------------------------------------------------------------------------
    def update(self, progress: ProcessingProgress) -> None:
        """Take a snapshot; write a line if the last one is ``min_interval`` old."""
        with self._lock:
            if self._ended:
                return
            self._latest = progress
            self._received_at = self._clock()
        self._throttle.offer()

    def finish(self, result: BatchResult | None, error: BaseException | None) -> None:
        """Write the final line, then the summary (and the first failed symbols)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._throttle.end()
        with self._lock:
            guard, self._guard = self._guard, None
            if guard is not None:
                guard.remove()
            progress = result.progress if result is not None else self._latest
            if progress is None:
                progress = ProcessingProgress(total_symbols=0)
            state = job_state(progress, ended=True, error=error,
                              cancelled=None if result is None else result.cancelled)
            lines = [f"{clean_text(self._name, 60)}: {status_text(state, progress, error=error)}"]
            if result is not None:
                if result.cancelled or result.errors:
                    lines.append(f"  {result.summary()}")
                for r in result.errors[:_SHOWN_ERRORS]:
                    kind, message = describe_error(r.error)
                    lines.append(f"  {clean_text(r.symbol, 60)}: {clean_text(kind, 60)}: {clean_text(message)}")
                if len(result.errors) > _SHOWN_ERRORS:
                    lines.append(f"  +{len(result.errors) - _SHOWN_ERRORS} more failed (see result.errors)")
            stream = self.stream
            _, eta_ms = shown_times(progress, state, since_snapshot=0.0, ended=True)
            line = progress_line(self._name, dataclasses.replace(progress, estimated_remaining_ms=eta_ms))
            if self._tty and self._width:
                self._redraw(line)
                stream.write("\n")
            else:
                stream.write(line + "\n")
            self._width = 0
            self.lines_written += 1
            stream.write("\n".join(lines) + "\n")
            stream.flush()

    # -- time passing ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Redraw with the elapsed time moved on, if ``min_interval`` passed (the TTY ticker calls it)."""
        self._throttle.tick()

    # -- writing ---------------------------------------------------------------------------------------
    def _write_progress(self, now: float) -> None:
        p = self._latest
        if p is None or self._ended:
            return
        cancelling = self._token is not None and self._token.is_cancelled
        state = job_state(p, cancel_requested=cancelling, paused=self._paused(p))
        elapsed, eta = shown_times(p, state, since_snapshot=now - self._received_at, ended=False)
        stalled = read_handle(self._handle, "stalled")
        line = render(JobFacts(self._name, p, state, elapsed_ms=elapsed, eta_ms=eta, stalled=stalled)).line()
        self.lines_written += 1
        if self._tty:
            if self._redirect_logging and self._guard is None:
                self._guard = LogLineGuard(self.stream, self._write_around)
                self._guard.install()
            self._redraw(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _paused(self, progress: ProcessingProgress) -> bool:
        try:
            paused = getattr(self._handle, "paused", None)
        except Exception:  # read racily from the job: never let it break a line
            paused = None
        return bool(getattr(progress, "paused", False) if paused is None else paused)

    def _redraw(self, line: str) -> None:
        columns = shutil.get_terminal_size((100, 20)).columns
        line = line[: max(10, columns - 1)]
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self._width = len(line)
        self._line = line

    def _write_around(self, target: TextIO, text: str) -> int:
        """A log record for the same terminal: erase the line, write the record, redraw the line."""
        with self._lock:
            shown = self._width > 0 and not self._ended
            if shown:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            written = target.write(text)
            if shown:
                target.flush()
                if text.endswith("\n"):
                    self._width = 0
                    self._redraw(self._line)
                    self.stream.flush()
                else:  # the record's end is still to come: the next redraw starts a fresh line
                    self._width = 0
            return written

    def __repr__(self) -> str:
        return f"ConsoleProgress(name={clean_text(self._name)!r})"
