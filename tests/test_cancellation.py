"""CancellationToken: the flag, callbacks exactly once, deadlines, linking, thread safety."""

from __future__ import annotations

import logging
import threading

import pytest

from procengine_nb import CancellationToken, ProcessingCancelledException


def test_new_token_is_not_cancelled():
    token = CancellationToken()
    assert token.is_cancelled is False
    assert token.reason is None
    token.throw_if_cancelled()  # no-op
    assert "active" in repr(token)


def test_is_cancelled_is_a_read_only_property():
    token = CancellationToken()
    with pytest.raises(AttributeError):
        token.is_cancelled = True  # type: ignore[misc]
    assert isinstance(type(token).is_cancelled, property)


def test_cancel_is_idempotent_and_keeps_first_reason():
    token = CancellationToken()
    assert token.cancel("first") is True
    assert token.cancel("second") is False
    assert token.is_cancelled and token.reason == "first"
    assert "cancelled" in repr(token) and "first" in repr(token)


def test_throw_if_cancelled_raises_with_reason():
    token = CancellationToken()
    token.cancel("user pressed Stop")
    with pytest.raises(ProcessingCancelledException, match="user pressed Stop") as info:
        token.throw_if_cancelled()
    assert info.value.reason == "user pressed Stop"
    assert info.value.partial_results is None


def test_exception_carries_partial_results():
    exc = ProcessingCancelledException("stopped", partial_results=[1, 2], reason="r")
    assert exc.partial_results == [1, 2] and exc.reason == "r" and str(exc) == "stopped"


def test_cancel_reason_must_be_text():
    with pytest.raises(TypeError, match="reason"):
        CancellationToken().cancel(42)  # type: ignore[arg-type]


def test_register_runs_once_on_cancel_in_order():
    token = CancellationToken()
    calls: list[str] = []
    token.register(lambda: calls.append("a"))
    token.register(lambda: calls.append("b"))
    assert calls == []
    token.cancel()
    token.cancel()
    assert calls == ["a", "b"]


def test_register_after_cancel_runs_at_once():
    token = CancellationToken()
    token.cancel()
    calls = []
    registration = token.register(lambda: calls.append(1))
    assert calls == [1]
    assert registration.unregister() is False


def test_unregister_prevents_the_call():
    token = CancellationToken()
    calls = []
    registration = token.register(lambda: calls.append(1))
    assert registration.unregister() is True
    assert registration.unregister() is False
    token.cancel()
    assert calls == []


def test_registration_as_context_manager():
    token = CancellationToken()
    calls = []
    with token.register(lambda: calls.append(1)):
        pass
    token.cancel()
    assert calls == []


def test_register_needs_a_callable():
    with pytest.raises(TypeError, match="callback must be callable"):
        CancellationToken().register("not callable")  # type: ignore[arg-type]


def test_failing_callback_is_logged_and_others_still_run(caplog):
    token = CancellationToken()
    calls = []

    def boom():
        raise RuntimeError("callback broke")

    token.register(boom)
    token.register(lambda: calls.append("after"))
    with caplog.at_level(logging.ERROR):
        assert token.cancel() is True
    assert calls == ["after"]
    assert "callback broke" in caplog.text


def test_wait_returns_when_cancelled_from_another_thread():
    token = CancellationToken()
    started = threading.Event()

    def canceller():
        started.wait()
        token.cancel()

    thread = threading.Thread(target=canceller)
    thread.start()
    assert token.wait(0) is False
    started.set()
    assert token.wait(10) is True
    thread.join()


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True])
def test_wait_and_deadline_validate_seconds(bad):
    token = CancellationToken()
    with pytest.raises((TypeError, ValueError)):
        token.wait(bad)
    with pytest.raises((TypeError, ValueError)):
        token.cancel_after(bad)


def test_cancel_after_sets_a_deadline(no_thread_leak):
    token = CancellationToken()
    token.cancel_after(0.01)
    assert token.wait(10)
    assert token.reason == "deadline of 0.01s reached"


def test_cancel_after_with_reason_and_replacement(no_thread_leak):
    token = CancellationToken()
    token.cancel_after(60)  # replaced by the next deadline, whose timer is what fires
    token.cancel_after(0, reason="too slow")
    assert token.wait(10)
    assert token.reason == "too slow"


def test_deadline_timer_is_dropped_by_cancel_and_close(no_thread_leak):
    token = CancellationToken()
    token.cancel_after(3600)
    token.cancel("manual")
    assert token.reason == "manual"
    other = CancellationToken()
    other.cancel_after(3600)
    other.close()
    assert not other.is_cancelled
    token.cancel_after(1)  # no effect on a cancelled token, and no timer left behind


def test_linked_token_follows_any_parent():
    a, b = CancellationToken(), CancellationToken()
    child = CancellationToken.linked(a, b)
    assert not child.is_cancelled
    b.cancel("from b")
    assert child.is_cancelled and child.reason == "from b"
    assert not a.is_cancelled
    # the child dropped its link to a: a's callbacks list holds nothing for it any more
    assert a._callbacks == []


def test_linked_to_already_cancelled_parent():
    a = CancellationToken()
    a.cancel("early")
    child = CancellationToken.linked(a, CancellationToken())
    assert child.is_cancelled and child.reason == "early"


def test_cancelling_child_does_not_cancel_parent():
    parent = CancellationToken()
    child = CancellationToken.linked(parent)
    child.cancel()
    assert not parent.is_cancelled
    assert parent._callbacks == []


def test_close_unlinks_from_parents():
    parent = CancellationToken()
    child = CancellationToken.linked(parent)
    child.close()
    parent.cancel()
    assert not child.is_cancelled


def test_linked_refuses_other_types():
    with pytest.raises(TypeError, match=r"parents\[1\] must be a CancellationToken"):
        CancellationToken.linked(CancellationToken(), threading.Event())  # type: ignore[arg-type]


def test_concurrent_cancellation():
    """Many threads cancel at once: exactly one wins, every callback runs exactly once."""
    for _ in range(50):
        token = CancellationToken()
        counts = [0] * 20
        lock = threading.Lock()

        def bump(i: int) -> None:
            with lock:
                counts[i] += 1

        for i in range(10):
            token.register(lambda i=i: bump(i))
        barrier = threading.Barrier(8)
        wins = []

        def racer() -> None:
            barrier.wait()
            wins.append(token.cancel())
            token.register(lambda: bump(19))  # registering during/after the cancel still runs once

        threads = [threading.Thread(target=racer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1
        assert counts[:10] == [1] * 10
        assert counts[19] == 8
