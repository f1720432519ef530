"""The README stays true: the tests its "Guarantees" section names exist."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path


def test_readme_guarantees_point_at_existing_tests():
    """Every test the README's "Guarantees" section names exists (a glob ``*`` matches a prefix)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert "## Guarantees" in readme
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    current = None
    checked = 0
    for file, name in re.findall(r"`(tests/(?:\w+/)*test_\w+\.py)?(?:::(test_[\w*]+))?`", section):
        if file:
            current = root / file
            assert current.is_file(), file
        if name:
            assert current is not None, name
            defined = re.findall(r"^def (test_\w+)", current.read_text(), re.MULTILINE)
            assert fnmatch.filter(defined, name), f"{current.name}::{name} is named in the README but missing"
            checked += 1
    assert checked >= 20


def test_readme_pictures_and_links_exist():
    """Every local picture or file the README points at is in the repository (the screenshots of each
    front-end, retaken by the browser tests, included)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    targets = re.findall(r"\]\(((?:docs|notebooks)/[^)#\s]+)\)", readme)
    assert any(t.startswith("docs/img/") for t in targets)
    missing = [t for t in targets if not (root / t).is_file()]
    assert not missing, f"the README points at missing files: {missing}"
