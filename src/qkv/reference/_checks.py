"""Input checks shared by the reference: each raises an error that names the argument and what it saw.

The reference never broadcasts silently: a learner who passes (3, 2) values with (2,) weights should hear
about the mismatch, not get a plausible-looking wrong answer.
"""

from __future__ import annotations

import numpy as np

from qkv.config import positive_int  # noqa: F401  (re-exported: the reference's own integer check)


def as_float_array(name: str, x, finite: bool = False) -> np.ndarray:
    """``x`` as a floating-point array (integers become float64); rejects non-numeric input and NaN, and with
    ``finite`` also ±inf (an infinite query, key or value turns a weighted average into inf − inf = NaN)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of numbers, could not convert it: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be an array of numbers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    ok = np.isfinite(arr).all() if finite else not np.isnan(arr).any()  # one pass over the data
    if not ok:
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        raise ValueError(f"{name} contains {'+inf' if np.isposinf(arr).any() else '-inf'}; it must be finite")
    return arr


def require_ndim(name: str, arr: np.ndarray, at_least: int, layout: str) -> None:
    if arr.ndim < at_least:
        raise ValueError(f"{name} must have at least {at_least} axes, laid out as {layout}; got shape {arr.shape}")


def require_same_leading(names: tuple[str, str], a: np.ndarray, b: np.ndarray, a_tail: int, b_tail: int) -> None:
    """The axes in front of the last ``a_tail`` / ``b_tail`` axes must match exactly (no broadcasting)."""
    lead_a, lead_b = a.shape[: a.ndim - a_tail], b.shape[: b.ndim - b_tail]
    if lead_a != lead_b:
        raise ValueError(
            f"{names[0]} and {names[1]} must agree on their leading (batch/head) axes: "
            f"{names[0]} has shape {a.shape}, {names[1]} has shape {b.shape} ({lead_a} vs {lead_b})"
        )
