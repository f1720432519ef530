"""ProcessingProgress (the snapshot) and ProgressTracker (counts, rate, ETA) with a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from procengine_nb import ProcessingProgress, ProgressTracker


def test_progress_percentage_calculation():
    assert ProcessingProgress(total_symbols=4, completed_symbols=1).percentage == 25.0
    assert ProcessingProgress(total_symbols=3, completed_symbols=3).percentage == 100.0
    assert ProcessingProgress(total_symbols=10, completed_symbols=0).percentage == 0.0
    assert ProcessingProgress(total_symbols=0, completed_symbols=0).percentage == 100.0
    assert ProcessingProgress(total_symbols=7, completed_symbols=2).remaining_symbols == 5


def test_snapshot_is_frozen():
    p = ProcessingProgress(total_symbols=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.completed_symbols = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.percentage = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "error", "needle"),
    [
        ({"total_symbols": -1}, ValueError, "total_symbols"),
        ({"total_symbols": 2, "completed_symbols": 3}, ValueError, "cannot exceed"),
        ({"total_symbols": 2, "completed_symbols": -1}, ValueError, "completed_symbols"),
        ({"total_symbols": 2, "completed_symbols": 1, "errors_count": 2}, ValueError, "errors_count"),
        ({"total_symbols": 2.0}, TypeError, "total_symbols"),
        ({"total_symbols": True}, TypeError, "total_symbols"),
        ({"total_symbols": 2, "estimated_remaining_ms": -5}, ValueError, "estimated_remaining_ms"),
        ({"total_symbols": 2, "estimated_remaining_ms": float("nan")}, ValueError, "estimated_remaining_ms"),
        ({"total_symbols": 2, "estimated_remaining_ms": float("inf")}, ValueError, "estimated_remaining_ms"),
        ({"total_symbols": 2, "estimated_remaining_ms": True}, TypeError, "estimated_remaining_ms"),
        ({"total_symbols": 2, "estimated_remaining_ms": "5"}, TypeError, "estimated_remaining_ms"),
        ({"total_symbols": 2, "elapsed_time_ms": None}, TypeError, "elapsed_time_ms"),
        ({"total_symbols": 2, "elapsed_time_ms": False}, TypeError, "elapsed_time_ms"),
        ({"total_symbols": 2, "elapsed_time_ms": float("nan")}, ValueError, "elapsed_time_ms"),
        ({"total_symbols": 2, "elapsed_time_ms": float("-inf")}, ValueError, "elapsed_time_ms"),
        ({"total_symbols": 2, "elapsed_time_ms": -0.5}, ValueError, "elapsed_time_ms"),
        ({"total_symbols": 2, "rate_per_second": float("nan")}, ValueError, "rate_per_second"),
        ({"total_symbols": 2, "cancelled": 1}, TypeError, "cancelled"),
        ({"total_symbols": 2, "elapsed_time_ms": -1}, ValueError, "elapsed_time_ms"),
    ],
)
def test_snapshot_validates_fields(fields, error, needle):
    with pytest.raises(error, match=needle):
        ProcessingProgress(**fields)


def test_tracker_snapshots_equal_validated_snapshots(fake_clock):
    tracker = ProgressTracker(3, clock=fake_clock)
    fake_clock.advance(0.5)
    fast = tracker.record("A", error=True)
    checked = ProcessingProgress(**dataclasses.asdict(fast))
    assert fast == checked
    assert (fast.completed_symbols, fast.errors_count, fast.current_symbol) == (1, 1, "A")


def test_eta_calculation_accuracy(fake_clock):
    """The spec's check: 10 symbols at ~100 ms on one worker, 3 done at ~300 ms -> ~700 ms left."""
    tracker = ProgressTracker(10, clock=fake_clock)
    assert tracker.snapshot.estimated_remaining_ms is None  # unknown before the first completion
    for _ in range(3):
        fake_clock.advance(0.1)
        snapshot = tracker.record("S")
    assert snapshot.elapsed_time_ms == pytest.approx(300)
    assert snapshot.estimated_remaining_ms == pytest.approx(700)
    assert snapshot.rate_per_second == pytest.approx(10.0)


def test_eta_is_concurrency_aware(fake_clock):
    """4 workers finishing 4 symbols every 100 ms: the rate is 40/s, so 36 left take ~900 ms."""
    tracker = ProgressTracker(40, clock=fake_clock)
    fake_clock.advance(0.1)
    snapshot = tracker.record("x", count=4)
    assert snapshot.estimated_remaining_ms == pytest.approx(900)


def test_eta_zero_at_end_and_never_negative(fake_clock):
    tracker = ProgressTracker(2, clock=fake_clock)
    tracker.record("a")
    last = tracker.record("b")
    assert last.estimated_remaining_ms == 0
    final = tracker.refresh(finished=True)
    assert final.finished and final.estimated_remaining_ms == 0 and final.percentage == 100.0


def test_eta_finished_early_is_zero(fake_clock):
    tracker = ProgressTracker(5, clock=fake_clock)
    fake_clock.advance(1)
    tracker.record("a")
    assert tracker.refresh(finished=True).estimated_remaining_ms == 0


def test_clock_going_backwards_never_gives_negative_values():
    times = iter([10.0, 9.0, 8.0, 7.0])
    tracker = ProgressTracker(5, clock=lambda: next(times))
    snapshot = tracker.record("a")
    assert snapshot.elapsed_time_ms == 0
    assert snapshot.estimated_remaining_ms == 0 or snapshot.estimated_remaining_ms >= 0


def test_smoothed_eta_follows_a_change_of_speed(fake_clock):
    plain = ProgressTracker(100, clock=fake_clock)
    smooth_clock = type(fake_clock)(fake_clock.now)
    smooth = ProgressTracker(100, clock=smooth_clock, smoothing=0.3)
    for _ in range(10):  # slow phase: 1 s per symbol
        fake_clock.advance(1.0)
        smooth_clock.advance(1.0)
        plain.record("s")
        smooth.record("s")
    for _ in range(10):  # fast phase: 0.1 s per symbol
        fake_clock.advance(0.1)
        smooth_clock.advance(0.1)
        p = plain.record("f")
        s = smooth.record("f")
    # 80 left: the plain average (0.55 s/symbol) says 44 s; the smoothed rate is near the new 0.1 s.
    assert p.estimated_remaining_ms == pytest.approx(44000)
    assert s.estimated_remaining_ms < 12000
    assert s.estimated_remaining_ms >= 8000


def test_smoothing_bias_correction_first_update(fake_clock):
    tracker = ProgressTracker(11, clock=fake_clock, smoothing=0.3)
    fake_clock.advance(0.2)
    snapshot = tracker.record("a")
    # with bias correction the first estimate equals the first observation: 10 * 0.2 s
    assert snapshot.estimated_remaining_ms == pytest.approx(2000)


def test_empty_batch_tracker():
    tracker = ProgressTracker(0)
    assert tracker.snapshot.percentage == 100.0
    assert tracker.snapshot.estimated_remaining_ms == 0


def test_tracker_refuses_more_completions_than_symbols(fake_clock):
    tracker = ProgressTracker(1, clock=fake_clock)
    tracker.record("a")
    with pytest.raises(ValueError, match="2 completions for 1 symbols"):
        tracker.record("b")


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"total": -1}, ValueError, "total"),
        ({"total": "3"}, TypeError, "total"),
        ({"total": 3, "smoothing": 0}, ValueError, "eta_smoothing"),
        ({"total": 3, "smoothing": 1.5}, ValueError, "eta_smoothing"),
        ({"total": 3, "smoothing": "fast"}, TypeError, "eta_smoothing"),
        ({"total": 3, "clock": 5}, TypeError, "clock"),
    ],
)
def test_tracker_bad_arguments(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        ProgressTracker(**kwargs)


def test_refresh_reports_running_and_cancelled(fake_clock):
    tracker = ProgressTracker(5, clock=fake_clock)
    tracker.running = 3
    tracker.cancelled = True
    fake_clock.advance(0.25)
    snapshot = tracker.refresh()
    assert (snapshot.running_symbols, snapshot.cancelled, snapshot.elapsed_time_ms) == (3, True, 250)
    assert not snapshot.finished


def test_a_snapshot_has_no_dict_to_write_through():
    """A callback could corrupt ``result.progress`` through ``__dict__``: snapshots have none, every
    assignment or deletion is refused, and the tracker's own snapshots are the same immutable type."""
    tracker = ProgressTracker(2)
    for snapshot in (ProcessingProgress(total_symbols=2, completed_symbols=1), tracker.record("A"),
                     next(iter(tracker.record_group(["B"], [True]))), tracker.refresh(finished=True)):
        assert not hasattr(snapshot, "__dict__")
        for name in ("completed_symbols", "percentage", "extra"):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(snapshot, name, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            del snapshot.total_symbols
        assert type(snapshot) is ProcessingProgress


def test_a_callback_cannot_corrupt_the_final_snapshot():
    from procengine_nb import ProcessingEngine

    def vandal(progress):
        try:
            vars(progress)["completed_symbols"] = -7
        except TypeError:
            pass

    result = ProcessingEngine(str, max_workers=2).process_batch(["a", "b", "c"], progress_callback=vandal)
    assert result.progress.completed_symbols == 3 and result.progress.percentage == 100.0


def test_times_are_floats_and_user_snapshots_take_ints_or_floats():
    built = ProcessingProgress(total_symbols=3, elapsed_time_ms=1500, estimated_remaining_ms=250)
    assert (built.elapsed_time_ms, built.estimated_remaining_ms) == (1500.0, 250.0)
    assert type(built.elapsed_time_ms) is float and type(built.estimated_remaining_ms) is float
    assert ProcessingProgress(total_symbols=3, elapsed_time_ms=0.25).elapsed_time_ms == 0.25
    assert ProcessingProgress(total_symbols=3).estimated_remaining_ms is None
    tracker = ProgressTracker(2)
    for snapshot in (tracker.snapshot, tracker.record("A"), tracker.refresh(finished=True)):
        assert type(snapshot.elapsed_time_ms) is float
        assert snapshot.estimated_remaining_ms is None or type(snapshot.estimated_remaining_ms) is float
    assert tracker.refresh(finished=True).estimated_remaining_ms == 0.0


def test_snapshots_pickle_copy_and_replace():
    import copy
    import pickle

    snapshot = ProgressTracker(4).record("A")
    for twin in (pickle.loads(pickle.dumps(snapshot)), copy.copy(snapshot), copy.deepcopy(snapshot)):
        assert twin == snapshot
    assert dataclasses.replace(snapshot, completed_symbols=2).completed_symbols == 2
