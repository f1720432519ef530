"""ProgressTracker.record_group: a chunk of symbols that completed together, one snapshot per symbol."""

from __future__ import annotations

import dataclasses

import pytest

from procengine_nb import ProcessingEngine, ProcessingProgress, ProgressTracker


class CountingClock:
    def __init__(self, times):
        self.times = list(times)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.times.pop(0)


def test_one_snapshot_per_symbol_in_order_with_counts_and_errors():
    clock = CountingClock([0.0, 2.0])
    tracker = ProgressTracker(10, clock=clock)
    snapshots = list(tracker.record_group(["A", "B", "C", "D"], [False, True, False, True]))
    assert [s.completed_symbols for s in snapshots] == [1, 2, 3, 4]
    assert [s.current_symbol for s in snapshots] == ["A", "B", "C", "D"]
    assert [s.errors_count for s in snapshots] == [0, 1, 1, 2]
    assert all(s.elapsed_time_ms == pytest.approx(2000) for s in snapshots)
    # plain average rate: 2 s for n completions -> ETA (10 - n) * 2 / n s
    assert [s.estimated_remaining_ms for s in snapshots] == pytest.approx([18000, 8000, 14000 / 3, 3000])
    assert snapshots[-1].rate_per_second == pytest.approx(2.0)
    assert clock.calls == 2  # one reading at construction, one for the whole group
    assert tracker.snapshot is snapshots[-1]
    assert (tracker.completed, tracker.errors, tracker.current_symbol) == (4, 2, "D")


def test_group_snapshots_are_valid_frozen_snapshots(fake_clock):
    tracker = ProgressTracker(3, clock=fake_clock)
    tracker.running = 1
    fake_clock.advance(0.25)
    for snapshot in tracker.record_group(["x", "y", "z"], [True, False, False]):
        assert snapshot == ProcessingProgress(**dataclasses.asdict(snapshot))
        assert snapshot.running_symbols == 1 and not snapshot.finished
        with pytest.raises(dataclasses.FrozenInstanceError):
            snapshot.completed_symbols = 0  # type: ignore[misc]
    assert snapshot.estimated_remaining_ms == 0 and snapshot.percentage == 100.0


def test_smoothing_uses_the_groups_time_per_symbol(fake_clock):
    """A chunk of 100 symbols that took 1 s is 10 ms a symbol, not 1 s then 99 instant ones."""
    tracker = ProgressTracker(1000, clock=fake_clock, smoothing=0.3)
    fake_clock.advance(1.0)
    last = list(tracker.record_group(["s"] * 100, [False] * 100))[-1]
    assert last.estimated_remaining_ms == pytest.approx(9000)  # 900 left x 10 ms
    assert last.rate_per_second == pytest.approx(100.0)
    fake_clock.advance(1.0)
    last = list(tracker.record_group(["s"] * 100, [False] * 100))[-1]
    assert last.estimated_remaining_ms == pytest.approx(8000)


def test_bad_groups_are_refused_before_anything_is_recorded(fake_clock):
    tracker = ProgressTracker(2, clock=fake_clock)
    with pytest.raises(ValueError, match="3 completions for 2 symbols"):
        tracker.record_group(["a", "b", "c"], [False, False, False])
    with pytest.raises(ValueError, match="one error flag per symbol"):
        tracker.record_group(["a", "b"], [False])
    assert tracker.completed == 0 and tracker.snapshot.completed_symbols == 0


def test_an_empty_group_records_nothing():
    clock = CountingClock([0.0])
    tracker = ProgressTracker(2, clock=clock)
    assert list(tracker.record_group([], [])) == []
    assert clock.calls == 1 and tracker.completed == 0


def test_a_chunked_batch_calls_back_once_per_symbol_with_increasing_counts():
    seen: list[ProcessingProgress] = []
    result = ProcessingEngine(lambda s: s, max_workers=2, chunk_size=7).process_batch(
        range(50), progress_callback=seen.append)
    assert len(result) == 50
    assert [s.completed_symbols for s in seen[:-1]] == list(range(1, 51))
    assert seen[-1].finished and seen[-1].completed_symbols == 50
    assert sorted(s.current_symbol for s in seen[:-1]) == list(range(50))


def test_a_group_recorded_without_each_snapshot_ends_in_the_same_state():
    each = ProgressTracker(10, clock=iter([0.0, 0.5]).__next__)
    last_only = ProgressTracker(10, clock=iter([0.0, 0.5]).__next__)
    symbols, errors = ["a", "b", "c", "d"], [False, True, False, True]
    full = list(each.record_group(symbols, errors))
    quick = list(last_only.record_group(symbols, errors, each=False))
    assert len(full) == 4 and len(quick) == 1
    assert quick[0] == full[-1] and last_only.snapshot == each.snapshot
    assert (last_only.completed, last_only.errors) == (4, 2)
