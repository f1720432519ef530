"""What a worker process runs for a chunk: the runner's rules with a cheap collection of the outcomes.

:func:`run_columns` is :func:`~procengine_nb.backends.runner.run_chunk` for another process (loky or
Dask): the same rules, the values kept as columns while they are plain. :func:`run_encoded` is the
whole task of a processes worker (and of a non-sharing ``executor=``'s): unpickle
(:mod:`~procengine_nb.backends._chunk_codec`), run under a
:class:`~procengine_nb.backends._marker.MarkerToken`, mark the start and the running symbol in the
chunk's started file (:mod:`~procengine_nb.backends._started_file`), encode the results
(:mod:`~procengine_nb.backends._wire`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from procengine_nb.backends._chunk_codec import load_task
from procengine_nb.backends._marker import CHECK_EVERY_MS, HOSTNAME, MarkerToken
from procengine_nb.backends._started_file import StartedFile
from procengine_nb.backends._wire import PLAIN, Columns, Payload, encode_results, plain
from procengine_nb.backends.runner import call_symbol
from procengine_nb.cancellation import CancellationToken
from procengine_nb.models import ResultStatus, SymbolResult

__all__ = ["run_columns", "run_encoded"]


def run_columns(processor: Callable[..., Any], symbols: Sequence[Any], token: CancellationToken,
                pass_token: bool, progress: Any = None, stamped: bool = False) -> tuple[Columns, list[SymbolResult]]:
    """:func:`~procengine_nb.backends.runner.run_chunk` for a worker process: the same rules (each symbol
    is :func:`~procengine_nb.backends.runner.call_symbol`, the token is checked between two symbols), a
    cheaper collection: while the values are plain, keep only ``(values, durations_ms)``; from the first
    symbol that raises or returns anything else on, the :class:`SymbolResult` objects.

    The runner's ``on_symbol(i)`` report, as a plain store (a call would cost more than a tiny symbol's
    own bookkeeping): ``progress`` (a writable sequence, e.g. a memory-mapped file) gets ``i`` in its
    slot 0 just before symbol ``i`` runs, and ``len(symbols)`` once none runs any more, so the parent can
    tell, if this process dies, which symbol was running, which had run and which never started — or
    that the chunk had ended and only its result was lost. ``stamped``: ``progress`` also gets, in its
    slot 2, ``time.monotonic_ns()`` at each look at the token (before the first symbol, then once ~5 ms
    of symbols ran; written before the index): the running symbol started at that time or less than
    ~5 ms of symbols' durations (plus their overhead) later, so the parent can tell a stalled symbol
    and for how long it has run, at no cost per symbol (a clock read per symbol cost ~80 ns, a quarter
    of the loop's own cost for the tiniest symbols).
    """
    values: list[Any] = []
    durations: list[float] = []
    rest: list[SymbolResult] = []
    add_value, add_duration, add_result = values.append, durations.append, rest.append
    plain_types = PLAIN
    success = ResultStatus.SUCCESS
    call = call_symbol
    now_ns = time.monotonic_ns
    is_set = token._event.is_set  # the token's own flag: every time; its full check (a marker file's
    since_check = CHECK_EVERY_MS  # stat) once ~5 ms of symbols ran since the last one
    columns = True
    for index, symbol in enumerate(symbols):
        if since_check >= CHECK_EVERY_MS:
            if token.is_cancelled:
                break
            since_check = 0.0
            if stamped:
                progress[2] = now_ns()
        elif is_set():
            break
        if progress is not None:
            progress[0] = index
        value, duration_ms, failed = call(processor, symbol, token, pass_token)
        since_check += duration_ms
        if failed is None:
            if columns and (type(value) in plain_types or plain(value)):
                add_value(value)
                add_duration(duration_ms)
                continue
            add_result(SymbolResult(symbol, success, value, None, duration_ms))
        else:
            add_result(failed)
        columns = False
    if progress is not None:
        progress[0] = len(symbols)  # no symbol of this chunk runs any more (its result is on its way)
    return (values, durations), rest


def run_encoded(
    processor_blob: bytes,
    symbols_blob: bytes,
    pass_token: bool,
    marker: tuple[str, str] | None,
    started_file: str | None = None,
) -> Payload:
    """The task a worker process (processes) runs: unpickle, :func:`run_columns`, :func:`encode_results`.

    With ``started_file`` (a path next to the marker, on the engine's machine), the chunk creates that
    file as it starts (memory-mapped, see :class:`~procengine_nb.backends._started_file.StartedFile`)
    and leaves it there (the parent removes it once it has the result, or with the batch's directory),
    so the engine can tell a chunk that started from one still queued in the pool — also after a pool
    broke and lost both. Whoever creates it first owns the chunk: when the parent did (it sent the chunk
    again elsewhere), this runs no symbol. When a processor cancelled its token (or saw another's
    request in the stop marker), a fourth element carries that request's reason to the parent.
    """
    if started_file is not None and (marker is None or marker[0] != HOSTNAME):
        started_file = None
    progress = None
    if started_file is not None:
        try:
            progress = StartedFile(started_file)
        except FileExistsError:  # the parent claimed it (its pool broke, it was sent again): not ours
            return encode_results([])
        except OSError:  # the batch is over (no directory): the token stops the chunk anyway
            pass
    try:
        processor, symbols = load_task(processor_blob, symbols_blob)
        slots = None if progress is None else progress.view
        token = MarkerToken(marker)
        head, rest = run_columns(processor, symbols, token, pass_token, slots, slots is not None)
        payload = encode_results(rest, head)
        if token.requested is not None:  # a processor asked the batch to stop: the parent hears it
            return (*payload, token.requested[0])  # type: ignore[return-value]
        return payload
    finally:
        if progress is not None:
            progress.close()

