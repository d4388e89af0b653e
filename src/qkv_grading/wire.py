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
        return {"int": str(value)} if isinstance(value, int) else {"float": repr(float(value))}
    if isinstance(value, np.generic):
        return _encode(value.item(), depth)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            return {"opaque": f"an array of {value.dtype}"}
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
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


def _decode(obj, depth: int):
    if depth > MAX_DEPTH + 1:
        raise WireError("nested too deeply")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if not (isinstance(obj, dict) and len(obj) == 1):
        raise WireError(f"unexpected {type(obj).__name__}")
    (kind, body), = obj.items()
    if kind == "int" and isinstance(body, str) and len(body) < 5000:
        return int(body)
    if kind == "float" and isinstance(body, str):
        return float(body)
    if kind == "ndarray" and isinstance(body, str):
        arr = np.load(io.BytesIO(base64.b64decode(body, validate=True)), allow_pickle=False)
        if arr.dtype.kind not in "biufc":
            raise WireError("array of a non-numeric type")
        return arr
    if kind in ("list", "tuple", "set") and isinstance(body, list):
        items = [_decode(v, depth + 1) for v in body]
        if kind == "set":
            try:
                return frozenset(items)
            except TypeError:
                return Opaque("a set of unhashable items")
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(body, list):
        out = {}
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise WireError("bad dict entry")
            key = _decode(pair[0], depth + 1)
            try:
                out[key] = _decode(pair[1], depth + 1)
            except TypeError:
                return Opaque("a dict with unhashable keys")
        return out
    if kind == "opaque" and isinstance(body, str):
        return Opaque(body[:200])
    raise WireError(f"unknown kind {kind!r}")


def loads(text: str):
    """Decode what a kernel sent (grader side): plain data, arrays without pickle, ``Opaque`` markers.
    Raises ``WireError`` for anything else."""
    if not isinstance(text, str) or len(text) > MAX_BYTES:
        raise WireError("not text, or too large")
    try:
        return _decode(json.loads(text), 0)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError, OSError) as exc:
        raise WireError(f"{type(exc).__name__}") from None
