"""Multi-head attention (chapter 3): τ heads, each attending in its own slice of the model width.

Head h (h = 1…τ) has its own queries, keys and values q_i^{[h]}, K^{[h]}, V^{[h]}, each of width d/τ;
the heads' outputs are concatenated and mixed by an output matrix (Xiao & Zhu 2025, eq. 2.9–2.11).
"""

from __future__ import annotations

import numpy as np

from qkv.reference._checks import as_float_array, positive_int, require_ndim
from qkv.reference.attention import attention


def split_heads(x, tau: int) -> np.ndarray:
    """(..., n, d) -> (..., τ, n, d/τ): head h gets columns (h−1)·d/τ to h·d/τ of every row."""
    x = as_float_array("x", x)
    require_ndim("x", x, 2, "(..., n, d)")
    tau = positive_int("tau (the number of heads)", tau)
    *lead, n, d = x.shape
    if d % tau:
        raise ValueError(f"the width d={d} of x (shape {x.shape}) is not divisible by tau={tau} heads")
    x = x.reshape(*lead, n, tau, d // tau)  # (..., n, τ, d/τ)
    return np.swapaxes(x, -3, -2)  # (..., τ, n, d/τ)


def merge_heads(x) -> np.ndarray:
    """(..., τ, n, d/τ) -> (..., n, d): concatenate the heads' rows side by side (the inverse of split_heads)."""
    x = as_float_array("x", x)
    require_ndim("x", x, 3, "(..., τ, n, d/τ)")
    *lead, tau, n, dh = x.shape
    x = np.swapaxes(x, -3, -2)  # (..., n, τ, d/τ)
    return x.reshape(*lead, n, tau * dh)


def multi_head_attention(x, W_q, W_k, W_v, W_o, tau: int, mask=None) -> np.ndarray:
    """Self-attention with τ heads over the rows of x.

    x: (..., n, d); W_q, W_k, W_v: (d, d), each the τ heads' projections side by side (W^q_h is the h-th
    block of d/τ columns); W_o: (d, d). Returns (..., n, d).
    """
    x = as_float_array("x", x)
    require_ndim("x", x, 2, "(..., n, d)")
    d = x.shape[-1]
    tau = positive_int("tau (the number of heads)", tau)
    if d % tau:
        raise ValueError(f"tau={tau} heads do not divide the model width d={d} of x (shape {x.shape}); "
                         "each head needs an equal slice of d/τ columns")
    for name, w in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v), ("W_o", W_o)):
        if np.shape(w) != (d, d):
            raise ValueError(f"{name} must have shape (d, d) = {(d, d)} for x of width d={d}; got {np.shape(w)}")
    q = split_heads(x @ W_q, tau)  # (..., τ, n, d/τ)
    k = split_heads(x @ W_k, tau)
    v = split_heads(x @ W_v, tau)
    heads = attention(q, k, v, mask)  # (..., τ, n, d/τ)
    return merge_heads(heads) @ W_o
