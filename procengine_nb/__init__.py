"""procengine_nb: run a batch of symbols through your function, with live progress and a real Stop.

>>> from procengine_nb import ProcessingEngine
>>> result = ProcessingEngine(lambda s: s * 2, max_workers=2).process_batch([1, 2, 3])
>>> result.summary()
'3 of 3 processed: 3 ok, 0 failed'

Supports ipywidgets 8 only (the notebook panel); the engine itself needs nothing but the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from procengine_nb._registry import JobList, jobs
from procengine_nb.cancellation import (
    CancellationRegistration,
    CancellationToken,
    ProcessingCancelledException,
)
from procengine_nb.engine import IProcessingEngine, ProcessingEngine
from procengine_nb.handle import JobHandle
from procengine_nb.models import (
    BatchResult,
    JobType,
    ProcessingJob,
    ResultStatus,
    SymbolResult,
    UnprocessedView,
)
from procengine_nb.observe import JobView
from procengine_nb.progress import ProcessingProgress, ProgressCallback, ProgressTracker
from procengine_nb.store import ResultStore, load_results

if TYPE_CHECKING:  # pragma: no cover
    from procengine_nb.one_liner import run
    from procengine_nb.views.console import ConsoleProgress
    from procengine_nb.views.panel import ProgressPanel

# The views and the notebook one-liner are imported on first use, so ``import procengine_nb`` and the
# engine never import ipywidgets or IPython.
_LAZY = {
    "ConsoleProgress": "procengine_nb.views.console",
    "ProgressPanel": "procengine_nb.views.panel",
    "run": "procengine_nb.one_liner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BatchResult",
    "CancellationRegistration",
    "CancellationToken",
    "ConsoleProgress",
    "IProcessingEngine",
    "JobHandle",
    "JobList",
    "JobType",
    "JobView",
    "ProcessingCancelledException",
    "ProcessingEngine",
    "ProcessingJob",
    "ProcessingProgress",
    "ProgressCallback",
    "ProgressPanel",
    "ProgressTracker",
    "ResultStatus",
    "ResultStore",
    "SymbolResult",
    "UnprocessedView",
    "jobs",
    "load_results",
    "run",
]

__version__ = "0.1.0"
