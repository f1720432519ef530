"""``python -m bench [PART ...] [--smoke] [--repeat N] [--output FILE] [--results FILE]``: run the benchmarks,
print Markdown.

Parts: overhead (W0/W1/W2 against the baselines), memory (1M symbols), cancel (latency p99), widgets
(panel traffic and cost in a real kernel), store (``store=`` against no store), backends (threads vs
processes vs Dask, when ``bench/bench_backends.py`` exists), async (async processors against
``asyncio.gather`` and ``tqdm.asyncio``; cancel latency with coroutines). No part given: all of them.
``--smoke`` runs tiny sizes in seconds and asserts nothing about timing (CI runs it so the suite never rots).
``--results bench/RESULTS.md`` writes each part's tables into that page, between its
``<!-- bench:PART -->`` and ``<!-- /bench:PART -->`` markers (the prose around them is the reader's summary
and stays as it is); a smoke run never writes there.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import time
from collections.abc import Callable

from bench.common import machine_description

PARTS = ("overhead", "memory", "cancel", "widgets", "store", "backends", "async")


def _backends(smoke: bool, repeat: int) -> str:
    if importlib.util.find_spec("bench.bench_backends") is None:
        return "pending: `bench/bench_backends.py` does not exist yet."
    module = importlib.import_module("bench.bench_backends")
    report = module.main(smoke=smoke)
    return report if isinstance(report, str) else "(printed above)"


def _part(name: str) -> Callable[..., str]:
    if name == "backends":
        return _backends
    if name == "async":  # a keyword: the module is bench/aio.py
        return importlib.import_module("bench.aio").run  # type: ignore[no-any-return]
    return importlib.import_module(f"bench.{name}").run  # type: ignore[no-any-return]


def without_verdicts(body: str) -> str:
    """A smoke run's report without its "Targets:" section: at tiny sizes "met"/"MISSED" mean nothing,
    and a passing CI log must not print a verdict."""
    head, _, _ = body.partition("\nTargets:")
    return head.rstrip() + "\n\n(smoke run: tiny sizes, figures are not comparable, no verdicts)"


def replace_tables(page: str, tables: dict[str, str]) -> str:
    r"""``page`` with the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` replaced by
    ``tables[NAME]`` for each name given; a name whose markers are missing is an error (the page must say
    where a part's tables go).

    >>> replace_tables("a\n<!-- bench:cancel -->\nold\n<!-- /bench:cancel -->\nb", {"cancel": "new"})
    'a\n<!-- bench:cancel -->\nnew\n<!-- /bench:cancel -->\nb'
    """
    for name, body in tables.items():
        pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(\n<!-- /bench:{re.escape(name)} -->)", re.S)
        if not pattern.search(page):
            raise ValueError(f"the results page has no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
        page = pattern.sub(lambda m, body=body: m.group(1) + body.strip() + m.group(2), page, count=1)
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", choices=[*PARTS, []], metavar="PART",
                        help=f"what to run: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds, no verdicts")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per overhead workload (default 5; smoke 1)")
    parser.add_argument("--output", help="also write the Markdown report to this file")
    parser.add_argument("--results", help="write each part's tables into this results page (bench/RESULTS.md)")
    args = parser.parse_args(argv)
    parts = args.parts or list(PARTS)
    if args.results:
        if args.smoke:
            parser.error("--results takes real runs only: a smoke run's figures mean nothing")
        try:  # checked before hours of measuring, not after
            with open(args.results, encoding="utf-8") as f:
                replace_tables(f.read(), dict.fromkeys(parts, ""))
        except (OSError, ValueError) as exc:
            parser.error(f"--results {args.results}: {exc}")
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 5)
    if repeat < 1:
        parser.error("--repeat must be >= 1")
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    sections = [f"Command: `{command.strip()}`", f"Machine: {machine_description()}",
                f"Started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    print("\n\n".join(sections), flush=True)
    header = f"{sections[1]}; {sections[2].lower()}; `{command.strip()}`"
    tables: dict[str, str] = {}
    for name in parts:
        print(f"== {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        body = _part(name)(smoke=args.smoke, repeat=repeat)
        if args.smoke:
            body = without_verdicts(body)
        section = f"## {name} ({time.perf_counter() - start:.0f} s)\n\n{body}"
        print("\n" + section, flush=True)
        sections.append(section)
        tables[name] = f"{header}\n\n" + re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)  # under the page's ###
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("\n\n".join(sections) + "\n")
    if args.results:
        with open(args.results, encoding="utf-8") as f:
            page = f.read()
        with open(args.results, "w", encoding="utf-8") as f:
            f.write(replace_tables(page, tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
