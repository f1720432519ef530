"""How many symbols go into one task (procengine_nb._chunking), alone, without a batch."""

from __future__ import annotations

from procengine_nb import ResultStatus, SymbolResult
from procengine_nb._chunking import MAX_CHUNK, ChunkSizer


def _results(duration_ms: float, count: int) -> list[SymbolResult]:
    return [SymbolResult(i, ResultStatus.SUCCESS, i, None, duration_ms) for i in range(count)]


def test_one_symbol_a_task_until_something_is_measured_or_when_symbols_are_slow():
    sizer = ChunkSizer(target_seconds=0.05, workers=2)
    assert sizer.size(10_000) == 1
    sizer.measured(_results(80.0, 3))  # slower than the target: no chunking
    assert sizer.size(10_000) == 1


def test_tiny_symbols_fill_the_target_up_to_the_cap_and_keep_every_worker_busy_at_the_end():
    sizer = ChunkSizer(target_seconds=0.05, workers=2)
    sizer.measured(_results(0.0001, 100))  # 0.1 µs a symbol: 500,000 would fill 50 ms
    assert sizer.size(1_000_000) == MAX_CHUNK
    # never below a quarter of the target in time (capped): the end of a batch of tiny symbols stays
    # in big chunks, since a hand-off costs more than the imbalance it saves
    assert sizer.size(20_000) == MAX_CHUNK
    assert sizer.size(100) == 100


def test_symbols_of_microseconds_are_balanced_across_workers_at_the_end():
    sizer = ChunkSizer(target_seconds=0.05, workers=2)
    sizer.measured(_results(0.01, 10))  # 10 µs: 5,000 fill 50 ms, capped at 4,096
    assert sizer.size(100_000) == MAX_CHUNK
    assert sizer.size(20_000) == 20_000 // 8  # 4 tasks per worker for what is left
    assert sizer.size(4_000) == 5_000 // 4  # a quarter of the target


def test_slower_symbols_shrink_at_the_end_to_a_quarter_of_the_target():
    sizer = ChunkSizer(target_seconds=0.05, workers=2)
    sizer.measured(_results(5.0, 4))  # 5 ms: 10 fill the target
    assert sizer.size(400) == 10
    assert sizer.size(40) == 5
    assert sizer.size(8) == 2  # a quarter of the target
    assert sizer.size(1) == 1


def test_the_mean_is_smoothed_and_sampled():
    sizer = ChunkSizer(target_seconds=0.01, workers=1)
    sizer.measured(_results(1.0, 10))
    sizer.measured(_results(3.0, 10_000))  # a strided sample of 64 of these
    assert abs(sizer.mean_seconds - 0.002) < 1e-12
    sizer.measured([])  # nothing to learn
    assert abs(sizer.mean_seconds - 0.002) < 1e-12


def test_a_fixed_chunk_size_and_timed_batches_override_the_measurement():
    fixed = ChunkSizer(target_seconds=0.05, workers=2, fixed=7)
    assert fixed.size(100) == 7 and fixed.size(3) == 3
    timed = ChunkSizer(target_seconds=0.05, workers=2, fixed=7, timed=True)
    timed.measured(_results(0.001, 10))
    assert timed.size(100) == 1
