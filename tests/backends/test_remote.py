"""The per-symbol result transport of the out-of-process backends (no pool needed)."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from procengine_nb import ProcessingCancelledException
from procengine_nb.backends._marker import MarkerToken
from procengine_nb.backends._wire import RemoteSerializationError, decode_results, encode_results
from procengine_nb.backends._worker import run_columns
from procengine_nb.backends.runner import run_chunk
from procengine_nb.models import ResultStatus, SymbolResult

OK, ERR = ResultStatus.SUCCESS, ResultStatus.ERROR


def _ok(symbol, value):
    return SymbolResult(symbol, OK, value, None, 0.5)


def test_plain_values_travel_as_one_pickle_and_come_back_with_the_callers_symbols():
    values = [1, 2.5, "s", b"b", None, True, (1, "x"), [2, 3]]
    head, rest = run_columns(lambda i: values[i], tuple(range(len(values))), MarkerToken(None), False)
    assert rest == [] and list(head[0]) == values  # all plain: the head columns, no result object
    payload = encode_results(rest, head)
    assert payload[0] != b"" and payload[1:] == (b"", [])
    symbols = tuple(object() for _ in values)
    back = decode_results(symbols, payload, {})
    assert [r.symbol for r in back] == list(symbols)
    assert [r.value for r in back] == values
    assert all(r.status is OK for r in back)


@pytest.mark.parametrize("seed", range(20))
def test_what_follows_the_head_never_starts_with_a_plain_success(seed):
    """Why results after the head need no format of their own for plain values: the worker's loop puts
    a result there only from the first symbol that failed or returned a value that is not plain."""
    rng = random.Random(seed)
    outcomes = [rng.choice([1, "s", None, {"d": 1}, ValueError("x")]) for _ in range(12)]

    def processor(i):
        if isinstance(outcomes[i], Exception):
            raise outcomes[i]
        return outcomes[i]

    head, rest = run_columns(processor, tuple(range(12)), MarkerToken(None), False)
    assert len(head[0]) + len(rest) == 12
    if rest:
        first = rest[0]
        assert first.status is ERR or type(first.value) is dict


def test_anything_else_goes_one_pickle_per_result_and_a_bad_one_costs_only_its_symbol():
    boom = ValueError("boom")
    results = [_ok("a", {"k": 1}), SymbolResult("b", ERR, None, boom, 1.0, traceback="tb"),
               _ok("c", threading.Lock()), _ok("d", 4)]
    payload = encode_results(results)
    assert payload[2] is not None and len(payload[2]) == 4
    back = decode_results(("a", "b", "c", "d"), payload, {})
    assert back[0].value == {"k": 1}
    assert isinstance(back[1].error, ValueError) and back[1].traceback == "tb"
    assert back[2].status is ERR and isinstance(back[2].error, RemoteSerializationError)
    assert back[3].value == 4


def test_results_made_here_keep_their_place_and_a_stopped_chunk_gives_a_prefix():
    local = {1: SymbolResult("b", ERR, None, RemoteSerializationError("cannot be sent"), 0.0)}
    for plain, values in ((True, [1, 3]), (False, [{"x": 1}, {"y": 3}])):  # the head, one pickle per result
        if plain:
            payload = encode_results([], (values, [0.5, 0.5]))
            alone = encode_results([], (values[:1], [0.5]))
        else:
            payload = encode_results([_ok("a", values[0]), _ok("c", values[1])])
            alone = encode_results([_ok("a", values[0])])
        back = decode_results(("a", "b", "c"), payload, local)
        assert [r.symbol for r in back] == ["a", "b", "c"] and back[1] is local[1]
        stopped = decode_results(("a", "b", "c", "d"), alone, local)
        assert [r.symbol for r in stopped] == ["a", "b"]  # the worker ran "a" only: a prefix


    for values in ([1, 3], [{"x": 1}, {"y": 3}]):  # a head of plain values, then the rest
        head = ([values[0]], [0.5])
        payload = encode_results([_ok("c", values[1])], head)
        back = decode_results(("a", "b", "c"), payload, local)
        assert [r.symbol for r in back] == ["a", "b", "c"] and back[1] is local[1]
        assert [r.value for r in back] == [values[0], None, values[1]]


# -- the worker's loop: run_columns gives what run_chunk gives, cheaper -----------------------------
class _Stop(Exception):
    pass


def _mixed(symbol):
    """A processor whose outcomes cover every path: plain values, other values, errors, a cancel, an
    awaitable, plain-looking containers that are not plain."""
    kind = symbol % 11
    if kind == 1:
        raise ValueError(f"bad {symbol}")
    if kind == 2:
        return {"n": symbol}
    if kind == 3:
        raise ProcessingCancelledException(f"stopped {symbol}")
    if kind == 4:
        return asyncio.sleep(0)  # a coroutine from a sync callable: an ERROR where nothing awaits it
    if kind == 5:
        return (symbol, "x", 2.5, None)
    if kind == 6:
        return [symbol] * 17  # too long to be "plain": pickled on its own
    if kind == 7:
        return (symbol, [1])  # a tuple holding a list: not plain
    if kind == 8:
        raise KeyboardInterrupt  # every exception is that symbol's ERROR
    return symbol * symbol


def _view(results):
    out = []
    for r in results:
        error = None if r.error is None else (type(r.error).__name__, str(r.error))
        out.append((r.symbol, r.status, r.value, error, r.traceback is not None))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_run_columns_plus_the_transport_give_what_run_chunk_gives(seed):
    rng = random.Random(seed)
    symbols = tuple(rng.choice([0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
                    for _ in range(rng.randint(0, 40)))
    expected = run_chunk(_mixed, symbols, MarkerToken(None), False)
    head, rest = run_columns(_mixed, symbols, MarkerToken(None), False)
    back = decode_results(symbols, encode_results(rest, head), {})
    for r in back:
        if r.error is not None:
            assert r.error.__traceback__ is None  # no frames kept, as run_chunk
            assert bool(r.traceback) == (r.status is ResultStatus.ERROR), r
    assert _view(back) == _view(expected)
    assert all(r.duration_ms >= 0.0 for r in back)
    assert len(head[0]) == len(head[1])
    if symbols and symbols[0] % 11 in (0, 9, 10):  # a plain first value
        assert head[0], "plain leading values travel as columns"


def test_run_columns_stops_between_symbols_when_its_token_is_cancelled(tmp_path):
    marker = tmp_path / "stopped"
    token = MarkerToken(("" if False else __import__("socket").gethostname(), str(marker)))
    seen = []

    def processor(symbol, cancellation_token):
        seen.append(symbol)
        if symbol == 3:
            cancellation_token.cancel()  # the worker's own flag: seen before the next symbol
        return symbol

    head, rest = run_columns(processor, tuple(range(10)), token, True)
    assert head[0] == [0, 1, 2, 3] and rest == [] and seen == [0, 1, 2, 3]
    # a processor's cancel() asks the whole batch to stop: the stop marker (for the other workers) and
    # the token's ``requested`` (for the chunk's result) say so
    assert token.requested == (None,) and marker.read_bytes() == b"N"

    marker = tmp_path / "stopped-by-the-parent"
    token = MarkerToken((__import__("socket").gethostname(), str(marker)))
    seen.clear()

    def marks(symbol, cancellation_token):
        seen.append(symbol)
        if symbol == 2:
            marker.touch()  # the parent's Stop: seen within 5 ms
        if symbol > 2:
            __import__("time").sleep(0.003)
        return symbol

    head, rest = run_columns(marks, tuple(range(50)), token, True)
    assert 3 <= len(seen) <= 6 and head[0] == seen and rest == []
    assert token.requested is None and token.reason == "the batch was stopped"  # a Stop, not a request
