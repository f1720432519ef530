"""A backend whose extra is not installed says which extra to install (not a bare ModuleNotFoundError)."""

from __future__ import annotations

import sys

import pytest

from procengine_nb import ProcessingEngine


@pytest.mark.parametrize(
    ("backend", "missing"),
    [("processes", "cloudpickle"), ("processes", "loky"), ("dask", "cloudpickle"), ("dask", "distributed")],
)
def test_a_missing_extra_is_named(monkeypatch, backend, missing):
    # None in sys.modules makes ``import missing`` raise ImportError, as on a machine without it; the
    # backend modules are dropped so they are imported again.
    monkeypatch.setitem(sys.modules, missing, None)
    for name in list(sys.modules):
        if name.startswith("procengine_nb.backends.") and name.rsplit(".", 1)[1] in ("processes", "dask", "_pool"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=rf'pip install "procengine_nb\[{backend}\]"') as info:
        ProcessingEngine(str, backend=backend)
    assert missing in str(info.value)
