"""The engine's knobs for a batch: validated by ``ProcessingEngine``, shared by its batches, read only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procengine_nb.backends.base import Backend

__all__ = ["BatchSettings"]


class BatchSettings:
    """The engine's knobs, validated by ``ProcessingEngine`` and shared by its batches (never written by a
    batch)."""

    __slots__ = ("processor", "pass_token", "backend", "clock", "eta_smoothing", "max_errors",
                 "timeout", "chunk_size", "target_chunk_seconds", "window_per_worker",
                 "retries", "retry_on", "backoff", "stall_after")

    def __init__(self, processor: Callable[..., Any], pass_token: bool, backend: Backend,
                 clock: Callable[[], float], eta_smoothing: float | None, max_errors: int | None,
                 timeout: float | None, chunk_size: int | None, target_chunk_seconds: float = 0.002,
                 window_per_worker: int = 2, retries: int = 0,
                 retry_on: tuple[type[BaseException], ...] = (Exception,), backoff: float = 0.0,
                 stall_after: float | None = None) -> None:
        self.processor = processor
        self.pass_token = pass_token
        self.backend = backend
        self.clock = clock
        self.eta_smoothing = eta_smoothing
        self.max_errors = max_errors
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.target_chunk_seconds = target_chunk_seconds
        self.window_per_worker = window_per_worker
        self.retries = retries
        self.retry_on = retry_on
        self.backoff = backoff
        self.stall_after = stall_after
        """Seconds after which a running symbol counts as stalled (None: from the median duration)."""
