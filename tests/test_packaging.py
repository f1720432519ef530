"""The project's packaging stays true: pyproject.toml and environment.yml list the same dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# PyPI names whose conda-forge package is named or split differently
CONDA_NAMES = {"dask[distributed]": ["dask", "distributed"], "playwright": ["playwright-python"]}


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    found = {"python": project["requires-python"]}
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(extra)
    for spec in specs:
        req = Requirement(spec)
        key = f"{req.name}[{','.join(sorted(req.extras))}]" if req.extras else req.name
        for name in CONDA_NAMES.get(key, [req.name]):
            previous = found.setdefault(name.lower(), str(req.specifier))
            assert previous == str(req.specifier), f"{name} has two different ranges in pyproject.toml"
    return found


def environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for item in env["dependencies"]:
        if isinstance(item, dict) or item == "pip":  # the pip section installs the project itself
            continue
        req = Requirement(item)
        found[req.name.lower()] = str(req.specifier)
    return found


def test_environment_yml_matches_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_environment_yml_installs_the_project_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict)]
    assert pip_sections == [["-e ."]]
    assert env["channels"] == ["conda-forge"]


def test_ipykernel_7_0_is_excluded():
    """ipykernel 7.0.x breaks widget updates from threads (LookupError on shell_parent)."""
    reqs = pyproject_requirements()
    assert Requirement(f"ipykernel{reqs['ipykernel']}").specifier.contains("7.0.1") is False
    assert Requirement(f"ipykernel{reqs['ipykernel']}").specifier.contains("7.4.0") is True


def test_engine_imports_without_jupyter():
    """The engine must import and run with no ipywidgets/IPython imported (they are only for views)."""
    code = (
        "import sys\n"
        "import procengine_nb\n"
        "from procengine_nb import ProcessingEngine\n"
        "r = ProcessingEngine(str.upper, max_workers=2).process_batch(['a', 'b'])\n"
        "assert sorted(x.value for x in r) == ['A', 'B']\n"
        "bad = [m for m in ('ipywidgets', 'IPython', 'ipykernel') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_engine_side_imports_nothing_from_the_views():
    """The import graph reads top-down: the engine, the handle, the backends and the models never import a
    view (views import them, not the other way round). Only the notebook one-liner joins the two."""
    package = ROOT / "procengine_nb"
    joiners = {package / "one_liner.py", package / "__init__.py", package / "__main__.py"}
    for path in package.rglob("*.py"):
        if path.is_relative_to(package / "views") or path in joiners:
            continue
        bad = {m for m in _imports(path) if m.startswith(("procengine_nb.views", "ipywidgets", "IPython"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_package_is_typed():
    assert (ROOT / "procengine_nb" / "py.typed").exists()


def test_the_pythons_claimed_are_the_pythons_ci_runs():
    """requires-python, the classifiers, ruff's target and the versions CI insists on say the same thing."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    claimed = sorted(
        c.rsplit(" :: ", 1)[1] for c in data["project"]["classifiers"]
        if c.startswith("Programming Language :: Python :: 3.")
    )
    script = (ROOT / "scripts" / "test.sh").read_text()
    required = script.split('REQUIRED_IN_CI="', 1)[1].split('"', 1)[0].split()
    assert claimed == required == ["3.11", "3.12", "3.13"]
    assert data["project"]["requires-python"] == ">=3.11"
    assert data["tool"]["ruff"]["target-version"] == "py311"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python>=3.11" in env["dependencies"]
