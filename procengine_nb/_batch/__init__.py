"""One run of one batch (``BatchRun``), as a package of its parts: one concept a module.

``run.py`` holds :class:`BatchRun`, whose loop reads as the parts; ``settings.py`` the engine's knobs
(:class:`BatchSettings`); ``task.py`` the record of a task in flight and the hooks that mark it;
``pause.py`` the pause flag.
"""

from procengine_nb._batch.run import BatchRun
from procengine_nb._batch.settings import BatchSettings

__all__ = ["BatchRun", "BatchSettings"]
