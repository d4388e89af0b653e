"""Attention as a weighted average of value vectors (chapters 1–3): Att_qkv(Q, K, V).

Vectors are rows. A query matrix Q stacks m query rows, K and V stack n key and value rows, and

    Att_qkv(Q, K, V) = Softmax(Q Kᵀ / √d + Mask) V        (Xiao & Zhu 2025, §2.1.1, eq. 2.6)

Every function accepts extra leading axes (batch, heads, …) in front of the last two, and those axes must
agree exactly between the arguments. Each public function checks its arguments in one call to
``qkv.checks``, then computes the formula; ``attend`` is the formula alone, for the decoders' inner loops.
"""

from __future__ import annotations

import math

import numpy as np

from qkv import checks


def weighted_average(values, weights) -> np.ndarray:
    """Σ_j α_j v_j: the weighted average of the value rows (eq. 2.40, weights α given).

    values: (..., n, d_v), one value vector per row; weights: (..., n), non-negative,
    summing to 1. Returns (..., d_v).
    """
    values, weights = checks.weights_and_values(values, weights)
    return np.einsum("...n,...nd->...d", weights, values)


def softmax(x, axis: int = -1) -> np.ndarray:
    """exp(x) / Σ exp(x) along ``axis``; a masked score, −inf, gets weight 0."""
    x = checks.scores(x, axis)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))  # the shift cancels out
    return e / np.sum(e, axis=axis, keepdims=True)


def causal_mask(n: int, n_keys: int | None = None) -> np.ndarray:
    """The additive mask of eq. 2.6: Mask(i, j) = 0 if j ≤ i, −∞ otherwise.

    Returns (n, n_keys). The n queries are the *last* n of n_keys positions, so while
    decoding with a cache (one new query, i keys) ``causal_mask(1, i)`` lets it see
    every key. Python counts from 0: row r is the query at position n_keys − n + r + 1,
    column c the key at position c + 1.
    """
    n = checks.positive_int("causal_mask: n", n)
    n_keys = n if n_keys is None else checks.positive_int("causal_mask: n_keys", n_keys)
    if n_keys < n:
        raise ValueError(f"causal_mask: n_keys={n_keys} is smaller than the number of "
                         f"queries n={n}")
    query_pos = np.arange(n_keys - n + 1, n_keys + 1)[:, None]  # positions, from 1
    key_pos = np.arange(1, n_keys + 1)[None, :]
    return np.where(key_pos <= query_pos, 0.0, -np.inf)


def attention_weights(q, k, mask=None) -> np.ndarray:
    """α = Softmax(Q Kᵀ/√d + Mask): how much each query attends to each key.

    q: (..., m, d) queries, k: (..., n, d) keys, mask: additive (0 / −∞) of shape (m, n)
    or (..., m, n), or boolean, True where a query may attend. Returns (..., m, n).
    """
    q, k, mask = checks.attention_inputs(q, k, mask=mask)
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., m, n)
    if mask is not None:
        scores = scores + mask
    return _softmax(scores)


def attention(q, k, v, mask=None) -> np.ndarray:
    """Att_qkv(Q, K, V) = Softmax(Q Kᵀ/√d + Mask) V (eq. 2.6): each output row is a
    weighted average of the value rows, weighted by how well its query matches each key.

    q: (..., m, d), k: (..., n, d), v: (..., n, d_v). Returns (..., m, d_v).
    """
    q, k, v, mask = checks.attention_inputs(q, k, v, mask)
    return attend(q, k, v, mask)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask=None) -> np.ndarray:
    """Softmax(Q Kᵀ/√d + Mask) V, unchecked: for arrays known to fit (decoder loops)."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., m, n)
    if mask is not None:
        scores = scores + mask
    return _softmax(scores) @ v  # (..., m, d_v)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)
