"""Attention as a weighted average of value vectors (chapters 1–3).

Vectors are rows. A query matrix Q stacks m query rows, K and V stack n key and value rows, and

    Att_qkv(Q, K, V) = Softmax(Q Kᵀ / √d + Mask) V        (Xiao & Zhu 2025, §2.1.1, eq. 2.6)

Every function accepts extra leading axes (batch, heads, …) in front of the last two, and those axes must
agree exactly between the arguments.
"""

from __future__ import annotations

import numpy as np

from qkv.reference._checks import as_float_array, positive_int, require_ndim, require_same_leading

WEIGHT_SUM_TOLERANCE = 1e-6


def softmax(x, axis: int = -1) -> np.ndarray:
    """exp(x) / Σ exp(x) along ``axis``, computed after subtracting the row maximum so that large scores do
    not overflow; the shift does not change the result because it cancels between numerator and denominator.

    −inf is allowed (a masked score: its weight is 0); NaN, +inf and a row that is −inf everywhere raise."""
    x = as_float_array("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis to normalise over; got a scalar")
    if np.isposinf(x).any():  # exp(+inf − +inf) would be NaN
        raise ValueError("softmax: x contains +inf; scores must be finite or -inf (a masked key)")
    top = np.max(x, axis=axis, keepdims=True)
    if np.isneginf(top).any():
        raise ValueError("softmax: a row of x is -inf everywhere (a mask that hides every key?); nothing to normalise")
    e = np.exp(x - top)
    return e / np.sum(e, axis=axis, keepdims=True)


def weighted_average(values, weights) -> np.ndarray:
    """Σ_j α_j v_j: the weighted average of the value rows (eq. 2.40 with given weights α).

    values: (..., n, d_v), one value vector per row; weights: (..., n), non-negative, summing to 1.
    Returns (..., d_v).
    """
    values = as_float_array("values", values)
    weights = as_float_array("weights", weights)
    require_ndim("values", values, 2, "(..., n, d_v): one value vector per row")
    require_ndim("weights", weights, 1, "(..., n): one weight per value vector")
    if weights.shape[-1] != values.shape[-2]:
        raise ValueError(
            f"weights has {weights.shape[-1]} entries on its last axis but values has {values.shape[-2]} rows "
            f"(weights shape {weights.shape}, values shape {values.shape})"
        )
    require_same_leading(("weights", "values"), weights, values, 1, 2)
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative; smallest weight seen is {weights.min():g}")
    sums = weights.sum(axis=-1)
    if not np.allclose(sums, 1.0, rtol=0, atol=WEIGHT_SUM_TOLERANCE):
        worst = sums.flat[np.argmax(np.abs(sums - 1.0))]
        raise ValueError(f"weights must sum to 1 along their last axis; a row sums to {worst:g}")
    return np.einsum("...n,...nd->...d", weights, values)


def causal_mask(n: int, n_keys: int | None = None) -> np.ndarray:
    """The additive mask of eq. 2.6 as the course writes it: Mask(i, j) = 0 if j ≤ i, −∞ otherwise.

    Returns (n, n_keys). The n queries are the *last* n of n_keys positions, so while decoding with a cache
    (one new query, i keys) ``causal_mask(1, i)`` lets the query see every key. Python indices count from 0:
    row r is the query at position n_keys − n + r + 1, column c is the key at position c + 1.
    """
    n = positive_int("causal_mask: n", n)
    n_keys = n if n_keys is None else positive_int("causal_mask: n_keys", n_keys)
    if n_keys < n:
        raise ValueError(f"causal_mask: n_keys={n_keys} is smaller than the number of queries n={n}")
    query_pos = np.arange(n_keys - n + 1, n_keys + 1)[:, None]  # positions counted from 1
    key_pos = np.arange(1, n_keys + 1)[None, :]
    return np.where(key_pos <= query_pos, 0.0, -np.inf)


def _as_additive_mask(mask, scores_shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:  # True means "may attend"
        mask = np.where(mask, 0.0, -np.inf)
    else:
        mask = as_float_array("mask", mask)
    if np.isposinf(mask).any():
        raise ValueError("mask contains +inf; an additive mask holds 0 (may attend) and -inf (hidden)")
    if mask.shape != scores_shape[-2:] and mask.shape != scores_shape:
        raise ValueError(
            f"mask has shape {mask.shape}; it must be (m, n) = {scores_shape[-2:]} (queries × keys) "
            f"or match the scores exactly, {scores_shape}"
        )
    return mask


def attention_weights(q, k, mask=None) -> np.ndarray:
    """α = Softmax(Q Kᵀ/√d + Mask): how much each query attends to each key.

    q: (..., m, d) queries, k: (..., n, d) keys, mask: additive (0 / −∞) of shape (m, n) or (..., m, n), or
    boolean with True where a query may attend. Returns (..., m, n); each row sums to 1.
    """
    q = as_float_array("q", q, finite=True)
    k = as_float_array("k", k, finite=True)
    require_ndim("q", q, 2, "(..., m, d): one query per row")
    require_ndim("k", k, 2, "(..., n, d): one key per row")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same vector size d to be compared: q has shape {q.shape}, k has shape {k.shape}"
        )
    require_same_leading(("q", "k"), q, k, 2, 2)
    d = q.shape[-1]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)  # (..., m, n)
    if mask is not None:
        scores = scores + _as_additive_mask(mask, scores.shape)
    return softmax(scores, axis=-1)


def attention(q, k, v, mask=None) -> np.ndarray:
    """Att_qkv(Q, K, V) = Softmax(Q Kᵀ/√d + Mask) V (eq. 2.6): each output row is a weighted average of
    the value rows, weighted by how well its query matches each key.

    q: (..., m, d), k: (..., n, d), v: (..., n, d_v). Returns (..., m, d_v).
    """
    v = as_float_array("v", v, finite=True)
    require_ndim("v", v, 2, "(..., n, d_v): one value vector per row")
    k_arr = np.asarray(k)
    if k_arr.ndim >= 2 and v.shape[-2] != k_arr.shape[-2]:
        raise ValueError(
            f"k and v must hold one row per position: k has {k_arr.shape[-2]} rows (shape {k_arr.shape}), "
            f"v has {v.shape[-2]} (shape {v.shape})"
        )
    alpha = attention_weights(q, k, mask)
    require_same_leading(("k", "v"), k_arr, v, 2, 2)
    return alpha @ v
