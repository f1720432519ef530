"""Benchmarks for procengine_nb: overhead against the usual baselines, memory, cancel latency, widget traffic.

Run ``python -m bench`` (everything, a few minutes) or ``python -m bench --smoke`` (tiny N, seconds, no
timing assertion: CI runs it so the suite never rots). ``python -m bench --help`` lists the parts.
Every comparison runs side by side in one process, repeated in rotating order; reports give medians and
ratios to the bare ``ThreadPoolExecutor`` measured in the same run (absolute times drift on shared machines,
ratios hold). Latest results with the machine description: ``bench/RESULTS.md``.
"""
