"""The record decoder (``qkv_grading.wire.loads``) reads what a kernel sends as hostile data: whatever the
text, it returns plain data or raises ``WireError``, never anything else, and its time and memory stay
linear in the text's length. No kernel: these are cheap."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkv_grading import probe, wire
from qkv_grading.wire import Opaque, WireError, dumps, loads


def _npy(header: dict, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> str:
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    if version == (1, 0):
        raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    else:
        raw = b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(text)) + text
    return json.dumps({"ndarray": base64.b64encode(raw + data).decode()})


# ---- what the kernel sends honestly comes back as it was -------------------------------------------------

HONEST = [None, True, False, 0, -1, 2**200, 1.5, float("inf"), "text", "", [1, 2], (1, "a"), [],
          {1, 2, 3}, frozenset({(1, 2), (3, 4)}), {"a": 1, 2: [3]}, {}, {-1: "a", -2: "b"},
          [[[1]]], {"k": {"nested": (1, 2.0)}}]


@pytest.mark.parametrize("value", HONEST, ids=repr)
def test_plain_data_comes_back_as_sent(value):
    got = loads(dumps(value))
    assert got == (frozenset(value) if isinstance(value, set) else value)
    assert type(got) is (frozenset if isinstance(value, set) else type(value))


@pytest.mark.parametrize("arr", [np.arange(6.0).reshape(2, 3), np.asfortranarray(np.arange(6).reshape(2, 3)),
                                 np.array([], dtype=np.float32), np.array(3 + 4j), np.array([True, False]),
                                 np.zeros((2, 0, 3), dtype=np.int8), np.arange(4, dtype=">i4")],
                         ids=lambda a: f"{a.dtype}{a.shape}")
def test_arrays_come_back_equal_and_writable(arr):
    got = loads(dumps(arr))
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    got[...] = 0  # a check may change its inputs in place: the decoded array is its own
    assert got.flags.writeable


def test_what_is_not_data_travels_as_its_type_name():
    class Mine:
        pass

    assert loads(dumps(Mine())) == Opaque("Mine")
    assert loads(dumps(np.array(["a"]))) == Opaque("an array of <U1")
    assert loads(dumps({np.arange(2).tobytes()})) == frozenset({Opaque("bytes")})
    assert loads(dumps(10**5000)) == Opaque("an int with too many digits")  # no ValueError in the kernel


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=20))
def test_any_plain_value_round_trips(value):
    assert loads(dumps(value)) == value


# ---- whatever else the text is, WireError and nothing else -----------------------------------------------

BAD = {
    "empty array body": '{"ndarray": ""}',  # numpy's EOFError, which once stopped the whole run
    "array not base64": '{"ndarray": "%%%"}',
    "array of garbage": json.dumps({"ndarray": base64.b64encode(b"garbage").decode()}),
    "npz archive": None,  # filled below
    "pickled object array": _npy({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x80\x04N."),
    "structured dtype": _npy({"descr": [("a", "<f8")], "fortran_order": False, "shape": (1,)}, b"\0" * 8),
    "string dtype": _npy({"descr": "<U1", "fortran_order": False, "shape": (1,)}, b"a\0\0\0"),
    "header claims 2**45 floats": _npy({"descr": "<f8", "fortran_order": False, "shape": (2**45,)}),
    "header claims too few": _npy({"descr": "<f8", "fortran_order": False, "shape": (1,)}, b"\0" * 16),
    "header with a negative shape": _npy({"descr": "<f8", "fortran_order": False, "shape": (-1,)}, b"\0" * 8),
    "header that is code": None,  # filled below
    "header of version 9": _npy({"descr": "<f8", "fortran_order": False, "shape": (1,)}, b"\0" * 8, (9, 0)),
    "too many dimensions": _npy({"descr": "<f8", "fortran_order": False, "shape": (1,) * 40}, b"\0" * 8),
    "not JSON": "{",
    "a bare number": "3",
    "a bare list": "[1, 2]",
    "NaN token": "NaN",
    "two keys": '{"int": "1", "float": "2"}',
    "unknown kind": '{"pickle": "gASVAAAA"}',
    "int of words": '{"int": "one"}',
    "int too long": json.dumps({"int": "1" * 5000}),
    "float too long": json.dumps({"float": "1" * 100}),
    "float of words": '{"float": "pi"}',
    "bad dict entry": '{"dict": [[1]]}',
    "list of bare numbers": '{"list": [1]}',
    "nested too deeply": '{"list": [' * 30 + ']}' * 30,
    "nested past the recursion limit": '[' * 100_000 + ']' * 100_000,
    "too large": json.dumps("x" * (wire.MAX_BYTES + 1)),
    "not text": b"{}",
}
_zip = io.BytesIO()
with zipfile.ZipFile(_zip, "w") as z:
    z.writestr("arr_0.npy", b"\x93NUMPY")
BAD["npz archive"] = json.dumps({"ndarray": base64.b64encode(_zip.getvalue()).decode()})
BAD["header that is code"] = json.dumps({"ndarray": base64.b64encode(
    b"\x93NUMPY\x01\x00" + struct.pack("<H", 20) + b"__import__('os')   \n").decode()})


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_anything_else_is_a_wire_error(text):
    with pytest.raises(WireError):
        loads(text)


def test_a_header_claiming_2_45_floats_allocates_nothing():
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(WireError, match="claims"):
        loads(BAD["header claims 2**45 floats"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000, peak


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: json.dumps(
    {"ndarray": base64.b64encode(b"\x93NUMPY\x01\x00" + b).decode()})))
def test_random_text_gives_data_or_a_wire_error(text):
    try:
        loads(text)
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_a_real_array_with_its_bytes_mangled_gives_data_or_a_wire_error(tail):
    raw = base64.b64decode(json.loads(dumps(np.arange(4.0)))["ndarray"])
    for mangled in (raw[:len(raw) // 2] + tail, raw + tail, raw[:20] + tail + raw[20:]):
        try:
            loads(json.dumps({"ndarray": base64.b64encode(mangled).decode()}))
        except WireError:
            pass


def test_records_that_are_not_records_are_a_wire_error():
    for text in ('{"ndarray": ""}', dumps([("ok",)]), dumps([("maybe", 1)]), dumps([("fail", 3)]), dumps(3)):
        with pytest.raises(WireError):
            probe.decode_records(text)


# ---- bounded: sizes and hashes ---------------------------------------------------------------------------

def test_a_set_whose_keys_all_hash_alike_is_refused_quickly():
    modulus = 2**61 - 1  # hash(k * modulus) == 0 for every int k: Python would compare each with each
    colliding = [{"int": str(k * modulus)} for k in range(1, 20_001)]  # as JSON: a Python set of them
    assert len({hash(k * modulus) for k in range(1, 100)}) == 1  # would itself take quadratic time
    for text in (json.dumps({"set": colliding}), json.dumps({"dict": [[k, {"int": "0"}] for k in colliding]}),
                 json.dumps({"list": [{"set": colliding[i:i + 50]} for i in range(0, 20_000, 50)]})):
        start = time.perf_counter()
        with pytest.raises(WireError, match="share one hash"):
            loads(text)
        assert time.perf_counter() - start < 2.0


def test_a_few_keys_that_share_a_hash_are_fine():
    assert hash(-1) == hash(-2)
    assert loads(dumps({-1, -2})) == frozenset({-1, -2})


def test_sizes_are_capped(monkeypatch):
    monkeypatch.setattr(wire, "MAX_KEYS", 1000)
    monkeypatch.setattr(wire, "MAX_ITEMS", 5000)
    assert len(loads(dumps(set(range(1000))))) == 1000
    with pytest.raises(WireError, match="set of more than 1000"):
        loads(dumps(set(range(1001))))
    with pytest.raises(WireError, match="dict of more than 1000"):
        loads(dumps(dict.fromkeys(range(1001), 0)))
    assert len(loads(json.dumps({"list": [None] * 4000}))) == 4000
    for text in (json.dumps({"list": [None] * 5001}), json.dumps({"list": [{"list": [None] * 999}] * 6}),
                 dumps(np.zeros(64 * 5001, dtype=np.int8))):
        with pytest.raises(WireError, match="more than 5000 values"):
            loads(text)
