"""The benchmark suite's helpers and runners (no timing assertions: speed is bench/RESULTS.md's business)."""

from __future__ import annotations

import statistics

import pytest

from bench import aio
from bench.__main__ import main
from bench.baselines import RUNNERS
from bench.common import Table, percentile
from bench.workloads import w0


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_every_runner_processes_every_symbol(name):
    assert RUNNERS[name](w0, [f"S{i}" for i in range(37)], 4) == 37


def test_percentile_matches_the_inclusive_method():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in (1, 25, 50, 90, 99):
        assert percentile(values, q) == pytest.approx(cuts[q - 1])
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_table_renders_markdown_and_checks_its_width():
    table = Table("a", "b")
    table.add(1, "x")
    assert table.render() == "| a | b |\n|---|---|\n| 1 | x |"
    with pytest.raises(ValueError):
        table.add(1)


def test_smoke_run_of_one_part_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report.md"
    assert main(["--smoke", "cancel", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## cancel" in text and "Machine:" in text and "p99" in text
    assert "p99" in capsys.readouterr().out
    # a smoke run prints no verdicts (a passing CI log must not say MISSED)
    assert "MISSED" not in text and "Targets:" not in text and "→ met" not in text


@pytest.mark.parametrize("name", sorted(aio.RUNNERS))
def test_every_async_runner_processes_every_symbol(name):
    assert aio.RUNNERS[name](aio.aw0, [f"S{i}" for i in range(37)], 4) == 37


def test_smoke_run_of_the_async_part_prints_figures_and_no_verdicts(tmp_path):
    out = tmp_path / "report.md"
    assert main(["--smoke", "async", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## async" in text and "bare asyncio.gather" in text and "tqdm.asyncio" in text and "p99" in text
    assert "MISSED" not in text and "Targets:" not in text and "→ met" not in text


def test_smoke_run_of_the_store_part_prints_figures_and_no_verdicts(tmp_path):
    out = tmp_path / "report.md"
    assert main(["--smoke", "store", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## store" in text and "no store" in text and "rerun: all from the store" in text
    assert "MISSED" not in text and "Targets:" not in text and "→ met" not in text


def test_the_results_page_gets_each_parts_tables_between_its_markers_and_keeps_its_prose():
    from bench.__main__ import replace_tables

    page = "# Results\nprose\n<!-- bench:cancel -->\nold cancel\n<!-- /bench:cancel -->\nmore prose\n" \
           "<!-- bench:store -->\nold store\n<!-- /bench:store -->\n"
    new = replace_tables(page, {"cancel": "new cancel\n| a |"})
    assert new == page.replace("old cancel", "new cancel\n| a |")
    with pytest.raises(ValueError, match="bench:memory"):
        replace_tables(page, {"memory": "x"})


def test_the_results_page_is_never_written_by_a_smoke_run_and_must_have_the_parts_markers(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("no markers here\n")
    with pytest.raises(SystemExit):
        main(["--smoke", "cancel", "--results", str(page)])
    with pytest.raises(SystemExit):
        main(["cancel", "--results", str(page)])  # refused before measuring anything
    assert page.read_text() == "no markers here\n"


def test_the_committed_results_page_has_markers_for_every_part():
    from pathlib import Path

    from bench.__main__ import PARTS, replace_tables

    page = (Path(__file__).resolve().parents[1] / "bench" / "RESULTS.md").read_text()
    replace_tables(page, dict.fromkeys(PARTS, ""))
