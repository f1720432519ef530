"""procengine_nb: run a batch of symbols through your function, with live progress and a real Stop.

>>> from procengine_nb import ProcessingEngine
>>> result = ProcessingEngine(lambda s: s * 2, max_workers=2).process_batch([1, 2, 3])
>>> result.summary()
'3 of 3 processed: 3 ok, 0 failed'

Supports ipywidgets 8 only (the notebook panel); the engine itself needs nothing but the standard library.
"""

from __future__ import annotations

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
from procengine_nb.progress import ProcessingProgress, ProgressCallback, ProgressTracker

__all__ = [
    "BatchResult",
    "CancellationRegistration",
    "CancellationToken",
    "IProcessingEngine",
    "JobHandle",
    "JobType",
    "ProcessingCancelledException",
    "ProcessingEngine",
    "ProcessingJob",
    "ProcessingProgress",
    "ProgressCallback",
    "ProgressTracker",
    "ResultStatus",
    "SymbolResult",
    "UnprocessedView",
]

__version__ = "0.1.0"
