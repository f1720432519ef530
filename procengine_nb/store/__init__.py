"""Durable results: an SQLite file that keeps every completed symbol, so a rerun skips what is done.

A :class:`ResultStore` is a path to an SQLite file (standard library ``sqlite3``, WAL mode) holding
results keyed by the batch's ``name`` and each symbol's ``key`` (its type and ``str(symbol)``, a ``str``
symbol itself, unless ``key=`` is given), with the code fingerprint of the processor that made them. A
background writer thread per batch writes each completed result in batched transactions, at most
``commit_seconds`` (0.5 s) or ``commit_results`` (1,000 results) behind; a locked file delays only the
writer (it retries), never the batch, its callbacks or its Stop, so it works the same with every backend.
A rerun of the same batch with the same store does not run again a symbol whose key already has a
SUCCESS there made by the same processor code (``ResultStore(..., reuse="any")``: by any code): that
symbol comes back with ``from_store=True``.

What is kept for each result: its status, the symbol and the value (pickled), the duration and, for a
failure, the exception's type, message and formatted traceback (text: never live frames). A value that
cannot be pickled is kept in memory for this run; the store records why it could not keep it, and a
rerun computes that symbol again. :func:`load_results` reads a store back as a
:class:`~procengine_nb.BatchResult`.

The parts: :mod:`~procengine_nb.store.keys` (names and keys), :mod:`~procengine_nb.store.fingerprint`
(the processor's code), :mod:`~procengine_nb.store.schema` (the file, its format, transactions),
:mod:`~procengine_nb.store.codec` (rows <-> results), :mod:`~procengine_nb.store.writer` (the background
writer), :mod:`~procengine_nb.store.session` (a batch's link to its store),
:mod:`~procengine_nb.store.reader` (reading back) and :mod:`~procengine_nb.store.resultstore`.

A store file is as trusted as a pickle file: open only stores you (or code you trust) wrote.

>>> import os, tempfile
>>> from procengine_nb import ProcessingEngine, ProcessingJob
>>> path = os.path.join(tempfile.mkdtemp(), "results.db")
>>> engine = ProcessingEngine(str.upper, max_workers=2)
>>> first = engine.process_batch(ProcessingJob(["a", "b"], name="letters"), store=path)
>>> again = engine.process_batch(ProcessingJob(["a", "b", "c"], name="letters"), store=path)
>>> sorted((r.value, r.from_store) for r in again), again.progress.from_store
([('A', True), ('B', True), ('C', False)], 2)
>>> sorted(r.value for r in load_results(path, "letters"))
['A', 'B', 'C']
"""

from __future__ import annotations

import os

from procengine_nb.store.codec import NotStored, StoredError, StoreLoadError
from procengine_nb.store.fingerprint import code_fingerprint
from procengine_nb.store.keys import KeyFunction, default_batch_name, default_key, make_key_function, storable
from procengine_nb.store.reader import load_results
from procengine_nb.store.resultstore import REUSE, ResultStore
from procengine_nb.store.schema import FORMAT_VERSION, StoreVersionError
from procengine_nb.store.session import StoreSession

__all__ = [
    "FORMAT_VERSION",
    "REUSE",
    "KeyFunction",
    "NotStored",
    "ResultStore",
    "StoreLoadError",
    "StoreSession",
    "StoreVersionError",
    "StoredError",
    "code_fingerprint",
    "default_batch_name",
    "default_key",
    "load_results",
    "make_key_function",
    "resolve_store",
    "storable",
]


def resolve_store(store: object) -> ResultStore | None:
    """``store=`` as a :class:`ResultStore` (a path is opened and checked now), or None."""
    if store is None or isinstance(store, ResultStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return ResultStore._for_batch(store)  # never waits for a lock (a locked file: run without reuse)
    raise TypeError(f"store must be a path (str or os.PathLike) or a ResultStore, not {type(store).__name__}")
