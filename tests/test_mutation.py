"""Mutation check (marker ``slow``): the property tests catch a broken engine accounting.

Each case copies the package into a temporary directory, breaks one piece of the accounting there (drop
an unprocessed symbol, count an error twice, lose a finished result...), and runs
``tests/test_properties.py`` against the copy in a subprocess: it must fail. A control run on the
unmutated copy must pass, so a failure is the mutation's doing, not the harness's. Only the copy is
ever mutated; the real code is never touched.

When the engine's code changes so much that a mutation's target text is gone, the case fails with
"mutation target not found": update ``MUTATIONS`` to break the same accounting in the new code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "procengine_nb"

# name -> (file in the package, [(text, replacement), ...]); every text found is replaced, at least one
# must be found. Several alternatives keep a mutation alive across refactors of the hot path.
MUTATIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "drop one never-started unprocessed symbol": (
        "models.py",
        [("self._tail_start = len(source) if tail_start is None else tail_start",
          "self._tail_start = len(source) if tail_start is None else min(len(source), tail_start + 1)")],
    ),
    "drop one in-flight unprocessed symbol": (
        "models.py",
        [("self._head = tuple(sorted(head_indices))", "self._head = tuple(sorted(head_indices))[1:]")],
    ),
    "count an error twice": (
        "progress.py",
        [("failed += 1", "failed += 2"), ("self.errors += count", "self.errors += 2 * count")],
    ),
    "lose one finished result": (
        "_batch.py",
        [("self._results.extend(chunk)", "self._results.extend(chunk[1:])"),
         ("append(result)", "append(result) if result is not chunk[0] else None")],
    ),
    "forget a symbol a stopped chunk never ran": (
        "_batch.py",
        [("self._dropped.extend(range(start + len(chunk), stop))",
          "self._dropped.extend(range(start + len(chunk) + 1, stop))"),
         ("dropped.extend(range(start + len(chunk), stop))", "dropped.extend(range(start + len(chunk) + 1, stop))")],
    ),
    "skip the final callback": (
        "_batch.py",
        [("callback(final)", "None")],
    ),
}


def _copy_project(dest: Path) -> None:
    shutil.copytree(PACKAGE, dest / "procengine_nb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conftest.py", "threadcheck.py", "test_properties.py"):
        shutil.copy(ROOT / "tests" / name, dest / name)


def _run_properties(where: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(where),
        "PROCENGINE_PROPERTY_EXAMPLES": "40",
        "PROCENGINE_PROPERTY_NO_SHRINK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "--timeout=120",
         "test_properties.py"],
        cwd=where, env=env, capture_output=True, text=True, timeout=600,
    )


def test_control_the_unmutated_copy_passes_and_is_the_one_imported(tmp_path):
    _copy_project(tmp_path)
    where = subprocess.run(
        [sys.executable, "-c", "import procengine_nb; print(procengine_nb.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(tmp_path.resolve()), where
    run = _run_properties(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_property_tests_catch_the_mutation(name, tmp_path):
    _copy_project(tmp_path)
    filename, alternatives = MUTATIONS[name]
    target = tmp_path / "procengine_nb" / filename
    assert target.resolve().is_relative_to(tmp_path.resolve())  # only ever the copy is mutated
    source = target.read_text()
    mutated = source
    for text, replacement in alternatives:
        mutated = mutated.replace(text, replacement)
    assert mutated != source, f"mutation target not found in {filename}: update MUTATIONS[{name!r}]"
    target.write_text(mutated)
    run = _run_properties(tmp_path)
    output = run.stdout + run.stderr
    # 1 = tests failed (not 2 = interrupted, 3 = internal error, 4 = usage error, 5 = no tests)
    assert run.returncode == 1, f"the mutation {name!r} was not caught:\n{output[-3000:]}"
    caught_by = re.findall(r"^FAILED test_properties\.py::(test_\w+)", output, re.MULTILINE)
    assert caught_by and "test_assert_accounted_rejects_a_lost_symbol" not in caught_by, output[-3000:]
    assert (PACKAGE / filename).read_text() != mutated, "the real package was mutated"

