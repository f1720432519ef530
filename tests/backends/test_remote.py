"""The per-symbol result transport of the out-of-process backends (no pool needed)."""

from __future__ import annotations

import threading

from procengine_nb.backends._remote import RemoteSerializationError, decode_results, encode_results
from procengine_nb.models import ResultStatus, SymbolResult

OK, ERR = ResultStatus.SUCCESS, ResultStatus.ERROR


def _ok(symbol, value):
    return SymbolResult(symbol, OK, value, None, 0.5)


def test_plain_values_travel_as_one_pickle_and_come_back_with_the_callers_symbols():
    results = [_ok(i, v) for i, v in enumerate([1, 2.5, "s", b"b", None, True, (1, "x"), [2, 3]])]
    blob, offsets = encode_results(results)
    assert offsets is None
    symbols = tuple(object() for _ in results)
    back = decode_results(symbols, (blob, offsets), {})
    assert [r.symbol for r in back] == list(symbols)
    assert [r.value for r in back] == [r.value for r in results]
    assert all(r.status is OK and r.duration_ms == 0.5 for r in back)


def test_anything_else_goes_one_pickle_per_result_and_a_bad_one_costs_only_its_symbol():
    boom = ValueError("boom")
    results = [_ok("a", {"k": 1}), SymbolResult("b", ERR, None, boom, 1.0, traceback="tb"),
               _ok("c", threading.Lock()), _ok("d", 4)]
    blob, offsets = encode_results(results)
    assert offsets is not None and len(offsets) == 4
    back = decode_results(("a", "b", "c", "d"), (blob, offsets), {})
    assert back[0].value == {"k": 1}
    assert isinstance(back[1].error, ValueError) and back[1].traceback == "tb"
    assert back[2].status is ERR and isinstance(back[2].error, RemoteSerializationError)
    assert back[3].value == 4


def test_results_made_here_keep_their_place_and_a_stopped_chunk_gives_a_prefix():
    local = {1: SymbolResult("b", ERR, None, RemoteSerializationError("cannot be sent"), 0.0)}
    for values in ([1, 3], [{"x": 1}, {"y": 3}]):  # the plain path and the per-result path
        payload = encode_results([_ok("a", values[0]), _ok("c", values[1])])
        back = decode_results(("a", "b", "c"), payload, local)
        assert [r.symbol for r in back] == ["a", "b", "c"] and back[1] is local[1]
        stopped = decode_results(("a", "b", "c", "d"), encode_results([_ok("a", values[0])]), local)
        assert [r.symbol for r in stopped] == ["a", "b"]  # the worker ran "a" only: a prefix
