"""The data a learner's kernel hands back to the grader, and nothing else.

Whatever the learner's code returns crosses from the kernel to the grader as plain data: JSON for numbers,
strings, lists, tuples, dicts and sets, and NumPy's ``.npy`` format (read with ``allow_pickle=False``) for
arrays. The grader never unpickles or evaluates anything a kernel sends. A value of any other type travels
as its type's name only (``Opaque``), so a check can say "got a Foo" and award nothing.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import numpy as np

MAX_BYTES = 20_000_000  # one test cell's records; more is refused as a whole
MAX_DEPTH = 20
MAX_ITEMS = 2_000_000  # values in one test cell's records (an array counts one per 64 numbers)
MAX_KEYS = 100_000  # items of one set, keys of one dict
MAX_SAME_HASH = 8  # keys of one set or dict that may share a hash (-1 and -2 do; more is an attack)
MAX_DIGITS = 4300  # of an int: Python's own limit on converting text to int
MAX_DIMS = 32  # of an array: NumPy's own limit is 64


@dataclass(frozen=True)
class Opaque:
    """A value that is not plain data (a function, an object of a class of the learner's): its type's name."""

    type_name: str


class WireError(ValueError):
    """Text from a kernel that is not well-formed data."""


def _encode(value, depth: int):
    if depth > MAX_DEPTH:
        return {"opaque": "a structure nested too deeply"}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float):
            return {"float": repr(float(value))}
        try:
            return {"int": str(int(value))}
        except ValueError:  # more digits than Python converts to text
            return {"opaque": "an int with too many digits"}
    if isinstance(value, np.generic):
        return _encode(value.item(), depth)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            return {"opaque": f"an array of {value.dtype}"}
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)  # not ascontiguousarray: it makes a 0-d array 1-d
        return {"ndarray": base64.b64encode(buf.getvalue()).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"set": [_encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
    return {"opaque": type(value).__name__}


def dumps(value) -> str:
    """Encode ``value`` (kernel side). Never fails: what is not data becomes an ``Opaque`` marker."""
    return json.dumps(_encode(value, 0))


class _Budget:
    """How many more values one ``loads`` may build: judging stays linear in the size of the text."""

    def __init__(self, items: int):
        self.left = items

    def take(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise WireError(f"more than {MAX_ITEMS} values")


def _array(body: str) -> np.ndarray:
    """A ``.npy`` file, read without pickle and without trusting its header: the header must describe
    exactly the bytes that follow it before anything is allocated. ``.npz`` and pickles are refused."""
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raise WireError("an array that is not base64") from None
    if not raw.startswith(b"\x93NUMPY"):
        raise WireError("an array that is not in .npy format")
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise WireError(f".npy version {version}")
    except WireError:
        raise
    except Exception as exc:  # numpy's header parser says ValueError, but takes any text it is given
        raise WireError(f"a bad .npy header ({type(exc).__name__})") from None
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype:
        raise WireError(f"an array of {dtype}, not of numbers")
    if len(shape) > MAX_DIMS:
        raise WireError(f"an array of more than {MAX_DIMS} dimensions")
    count = 1
    for n in shape:
        count *= n  # Python ints: a header cannot overflow the product
    data = raw[buf.tell():]
    if count * dtype.itemsize != len(data):
        raise WireError(f"an array whose header claims {count} values of {dtype} but carries "
                        f"{len(data)} bytes")
    flat = np.frombuffer(data, dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def _distinct_hashes(items: list, what: str) -> None:
    """Refuse a set or dict whose keys share hashes: Python would compare each such key with every other
    (keys that all hash alike make one set quadratic in its size)."""
    seen: dict[int, int] = {}
    for item in items:
        h = hash(item)
        seen[h] = seen.get(h, 0) + 1
        if seen[h] > MAX_SAME_HASH:
            raise WireError(f"a {what} whose keys share one hash")


def _decode(obj, depth: int, budget: _Budget):
    budget.take()
    if depth > MAX_DEPTH + 1:
        raise WireError("nested too deeply")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if not (isinstance(obj, dict) and len(obj) == 1):
        raise WireError(f"unexpected {type(obj).__name__}")
    (kind, body), = obj.items()
    if kind == "int" and isinstance(body, str) and len(body) <= MAX_DIGITS:
        return int(body)  # ValueError for what is no int: a WireError below
    if kind == "float" and isinstance(body, str) and len(body) <= 40:
        return float(body)
    if kind == "ndarray" and isinstance(body, str):
        arr = _array(body)
        budget.take(arr.size // 64)  # arrays are linear to judge: counted, cheaply
        return arr
    if kind in ("list", "tuple", "set") and isinstance(body, list):
        if kind == "set" and len(body) > MAX_KEYS:
            raise WireError(f"a set of more than {MAX_KEYS} items")
        items = [_decode(v, depth + 1, budget) for v in body]
        if kind == "set":
            try:
                _distinct_hashes(items, "set")
            except TypeError:
                return Opaque("a set of unhashable items")
            return frozenset(items)
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(body, list):
        if len(body) > MAX_KEYS:
            raise WireError(f"a dict of more than {MAX_KEYS} keys")
        pairs = []
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise WireError("bad dict entry")
            pairs.append((_decode(pair[0], depth + 1, budget), _decode(pair[1], depth + 1, budget)))
        try:
            _distinct_hashes([k for k, _ in pairs], "dict")
        except TypeError:
            return Opaque("a dict with unhashable keys")
        return dict(pairs)
    if kind == "opaque" and isinstance(body, str):
        return Opaque(body[:200])
    raise WireError(f"unknown kind {str(kind)[:40]!r}")


def loads(text: str):
    """Decode what a kernel sent (grader side): plain data, arrays without pickle, ``Opaque`` markers.
    Total: whatever the text, raises nothing but ``WireError``, and takes time and memory linear in the
    text's length (an array's header is checked against its bytes before anything is allocated, and
    sets and dicts whose keys share hashes are refused)."""
    if not isinstance(text, str) or len(text) > MAX_BYTES:
        raise WireError("not text, or too large")
    try:
        return _decode(json.loads(text), 0, _Budget(MAX_ITEMS))
    except WireError:
        raise
    except RecursionError:
        raise WireError("nested too deeply") from None
    except Exception as exc:  # whatever else the text makes a parser raise: still the kernel's fault
        raise WireError(f"{type(exc).__name__}") from None
