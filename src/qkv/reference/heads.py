"""Multi-head attention (chapter 3): τ heads, each attending in its own slice of the model width.

Head h (h = 1…τ) has its own queries, keys and values q_i^{[h]}, K^{[h]}, V^{[h]}, each of width
head_dim = d/τ; the heads' outputs are concatenated and mixed by an output matrix (Xiao & Zhu 2025,
eq. 2.9–2.11).
"""

from __future__ import annotations

import numpy as np

from qkv import checks
from qkv.reference.qkv_attention import attend


def split_heads(x, tau: int) -> np.ndarray:
    """(..., n, d) -> (..., τ, n, head_dim): head h gets columns (h−1)·head_dim to
    h·head_dim of every row."""
    x, tau = checks.heads_of("x", x, tau)
    return _split_heads(x, tau)


def _split_heads(x: np.ndarray, tau: int) -> np.ndarray:
    *lead, n, d = x.shape
    x = x.reshape(*lead, n, tau, d // tau)  # (..., n, τ, head_dim)
    return np.swapaxes(x, -3, -2)  # (..., τ, n, head_dim)


def merge_heads(x) -> np.ndarray:
    """(..., τ, n, head_dim) -> (..., n, d): the heads' rows side by side (split_heads undone)."""
    x = checks.float_array("x", x)
    checks.ndim_at_least("x", x, 3, "(..., τ, n, d/τ)")
    return _merge_heads(x)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    *lead, tau, n, head_dim = x.shape
    x = np.swapaxes(x, -3, -2)  # (..., n, τ, head_dim)
    return x.reshape(*lead, n, tau * head_dim)


def multi_head_attention(x, W_q, W_k, W_v, W_o, tau: int, mask=None) -> np.ndarray:
    """Self-attention with τ heads over the rows of x.

    x: (..., n, d); W_q, W_k, W_v: (d, d), each the τ heads' projections side by side
    (W^q_h is the h-th block of head_dim columns); W_o: (d, d). Returns (..., n, d).
    """
    x, tau = checks.heads_of("x", x, tau)
    checks.square_weights(x, W_q=W_q, W_k=W_k, W_v=W_v, W_o=W_o)
    n = x.shape[-2]
    mask = checks.additive_mask(mask, x.shape[:-2] + (tau, n, n))  # the scores' shape
    q = _split_heads(x @ W_q, tau)  # (..., τ, n, head_dim)
    k = _split_heads(x @ W_k, tau)
    v = _split_heads(x @ W_v, tau)
    return _merge_heads(attend(q, k, v, mask)) @ W_o
