"""One run of one batch (``BatchRun``), as a package of its parts: one concept a module.

``run.py`` holds :class:`BatchRun`, whose loop reads as the parts below; each part writes its invariants
next to its fields.

- ``settings.py``: :class:`BatchSettings`, the engine's knobs shared by its batches.
- ``task.py``: ``Task``, the record of a task in flight, and the hooks (``Chunk.on_start``/``on_symbol``)
  that mark it as it runs.
- ``window.py``: ``Window``, the tasks in flight (bounded), the completion queue they report through,
  taking back at a pause, giving up on a timed-out task.
- ``source.py``: the input, ``SizedSource`` (sliced) or ``LazySource`` (drawn a chunk at a time).
- ``retries.py``: ``RetryQueue``, the failed symbols waiting for another attempt, by due time.
- ``timeouts.py``: ``TimeoutWatch``, the next deadline and what expires at it.
- ``reruns.py``: ``Reruns``, what ``store=`` already holds, counted instead of run.
- ``pause.py``: ``Pause``, the flag any thread sets. ``stalls.py``: ``StallWatch``, ``stalled()``.
- ``outcomes.py``: ``Outcomes``, the one way a final outcome is recorded (results, store, tracker,
  publisher) whichever path ends a symbol.
"""

from procengine_nb._batch.run import BatchRun
from procengine_nb._batch.settings import BatchSettings

__all__ = ["BatchRun", "BatchSettings"]
