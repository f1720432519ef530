"""Mutation check (marker ``slow``): the property tests catch a broken engine accounting.

Each case runs ``tests/test_properties.py`` in a subprocess with one piece of the accounting broken at
run time (drop an unprocessed symbol, count an error twice, lose a finished result, ...): it must fail.
A control run without a mutation must pass, so a failure is the mutation's doing.

Mutations patch the engine's objects at their seams (the result list, the unprocessed view, the
tracker, the publisher) from a pytest plugin loaded in the subprocess, never the source text, so a
refactor of the code does not break them. Each mutated seam leaves a marker file when it runs: a case
whose seam the engine no longer uses fails with "mutation never ran" instead of passing vacuously.
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

# The plugin applies the mutation named by PROCENGINE_MUTATION and touches PROCENGINE_MUTATION_RAN
# the first time the mutated code runs.
PLUGIN = """
import os
from pathlib import Path

from procengine_nb import models, observe, progress
from procengine_nb._batch import retries, source

NAME = os.environ.get("PROCENGINE_MUTATION", "")
RAN = Path(os.environ.get("PROCENGINE_MUTATION_RAN", os.devnull))
MUTATED = []  # the batches' parts already mutated (once each; they have __slots__: no flag on them)


def ran():
    if str(RAN) != os.devnull:
        RAN.touch()


def patch(owner, attribute, make):
    original = getattr(owner, attribute)
    setattr(owner, attribute, make(original))


if NAME == "drop one never-started unprocessed symbol":
    def make(init):
        def mutated(self, source, head_indices=(), tail_start=None):
            init(self, source, head_indices, tail_start)
            if self._tail_start < len(source):
                ran()
                self._tail_start += 1
        return mutated
    patch(models.UnprocessedView, "__init__", make)
elif NAME == "drop one in-flight unprocessed symbol":
    def make(init):
        def mutated(self, source, head_indices=(), tail_start=None):
            head = sorted(head_indices)
            if head:
                ran()
            init(self, source, head[1:], tail_start)
        return mutated
    patch(models.UnprocessedView, "__init__", make)
elif NAME == "count an error twice":
    def make(record_group):
        def mutated(self, symbols, errors, **options):
            for snapshot in record_group(self, symbols, errors, **options):
                yield snapshot
            if any(errors):
                ran()
                self.errors += 1
        return mutated
    patch(progress.ProgressTracker, "record_group", make)
elif NAME in ("lose one finished result", "count a finished result twice"):
    def make(extend):
        def mutated(self, items):
            items = list(items)
            if items and not getattr(self, "_mutated", False):
                ran()
                self._mutated = True
                items = items[1:] if NAME.startswith("lose") else [*items, items[0]]
            extend(self, items)
        return mutated
    patch(models.BatchResult, "extend", make)
elif NAME == "skip the final callback":
    def make(finish):
        def mutated(self, result, error):
            if self._callback is not None:
                ran()
                self._listeners = tuple(x for x in self._listeners if x is not self._callback)
            finish(self, result, error)
        return mutated
    patch(observe.Publisher, "finish", make)
elif NAME == "keep a failed attempt that is retried":
    def make(sift):
        def mutated(self, results, start, attempts):
            finals = sift(self, results, start, attempts)
            kept = [r for r in results if not any(r is f for f in finals)]  # scheduled for another attempt
            if kept and self not in MUTATED:
                ran()
                MUTATED.append(self)
                return [*finals, kept[0]]  # ...and recorded as final too
            return finals
        return mutated
    patch(retries.RetryQueue, "sift", make)
elif NAME == "draw one symbol the batch never accounts for":
    def make(draw):
        def mutated(self, size):
            chunk = draw(self, size)
            if len(chunk) > 1 and self not in MUTATED:
                ran()
                MUTATED.append(self)
                return chunk[1:]
            return chunk
        return mutated
    patch(source.LazySource, "draw", make)
elif NAME:
    raise RuntimeError(f"unknown mutation {NAME!r}")
"""

MUTATIONS = [
    "drop one never-started unprocessed symbol",
    "drop one in-flight unprocessed symbol",
    "count an error twice",
    "lose one finished result",
    "count a finished result twice",
    "skip the final callback",
    "keep a failed attempt that is retried",
    "draw one symbol the batch never accounts for",
]


def _copy_tests(dest: Path) -> None:
    for name in ("conftest.py", "threadcheck.py", "test_properties.py"):
        shutil.copy(ROOT / "tests" / name, dest / name)
    (dest / "mutation_plugin.py").write_text(PLUGIN)


def _run_properties(where: Path, mutation: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        "PROCENGINE_PROPERTY_EXAMPLES": "40",
        "PROCENGINE_PROPERTY_NO_SHRINK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PROCENGINE_MUTATION": mutation,
        "PROCENGINE_MUTATION_RAN": str(where / "mutation-ran"),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "-p", "mutation_plugin",
         "--timeout=120", "test_properties.py"],
        cwd=where, env=env, capture_output=True, text=True, timeout=600,
    )


def test_control_the_unmutated_run_passes(tmp_path):
    _copy_tests(tmp_path)
    run = _run_properties(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert not (tmp_path / "mutation-ran").exists()


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_property_tests_catch_the_mutation(name, tmp_path):
    _copy_tests(tmp_path)
    run = _run_properties(tmp_path, name)
    output = run.stdout + run.stderr
    assert (tmp_path / "mutation-ran").exists(), f"mutation never ran: update the seam of {name!r}\n{output[-2000:]}"
    # 1 = tests failed (not 2 = interrupted, 3 = internal error, 4 = usage error, 5 = no tests)
    assert run.returncode == 1, f"the mutation {name!r} was not caught:\n{output[-3000:]}"
    caught_by = re.findall(r"^FAILED test_properties\.py::(test_\w+)", output, re.MULTILINE)
    assert caught_by and "test_assert_accounted_rejects_a_lost_symbol" not in caught_by, output[-3000:]
