"""What a KV cache costs: its size in bytes, the work it saves, and heads that share keys and values
(chapters 4–5).

A cache stores, for every layer ℓ, every key/value head and every position it holds, one key and one value
vector of head_dim numbers. So its size is

    bytes = 2 · n_layer · n_kv_heads · positions_held · head_dim · bytes_per_number · batch

and the four caches of chapter 5 differ only in two factors:

===============  ======================  =================================================
cache            n_kv_heads              positions_held after step i
===============  ======================  =================================================
full             τ                       i                       (§2.3.2)
window of n_c    τ                       min(i, n_c)             (§2.3.3.1, eq. 2.52–2.53)
multi-query      1                       i                       (§2.3.4, eq. 2.71–2.72)
grouped-query    g groups (g divides τ)  i                       (§2.3.4, eq. 2.73)
===============  ======================  =================================================

Positions count from 1, as in the course.
"""

from __future__ import annotations

import numpy as np

from qkv.reference._checks import as_float_array, require_ndim
from qkv.reference.attention import attention

CACHE_KINDS = ("full", "window", "multi-query", "grouped-query")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def kv_heads(kind: str, tau: int, groups: int | None = None) -> int:
    """How many distinct key/value heads a cache of this kind stores per layer."""
    tau = _positive_int("tau", tau)
    if kind in ("full", "window"):
        return tau
    if kind == "multi-query":
        return 1
    if kind == "grouped-query":
        groups = _positive_int("groups", groups)
        if tau % groups:
            raise ValueError(f"groups={groups} must divide the number of heads tau={tau}")
        return groups
    raise ValueError(f"unknown cache kind {kind!r}; choose one of {CACHE_KINDS}")


def positions_held(kind: str, i: int, n_c: int | None = None) -> int:
    """How many positions the cache holds after step i: i, or min(i, n_c) for a window of n_c."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
        raise ValueError(f"i (the step) must be a non-negative int, got {i!r}")
    if kind == "window":
        return min(int(i), _positive_int("n_c", n_c))
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; choose one of {CACHE_KINDS}")
    return int(i)


def cache_bytes(kind: str, i: int, *, n_layer: int, tau: int, head_dim: int, bytes_per_number: int = 4,
                batch: int = 1, n_c: int | None = None, groups: int | None = None) -> int:
    """Bytes a cache of ``kind`` holds after step i (see the table in the module docstring)."""
    return (2 * _positive_int("n_layer", n_layer) * kv_heads(kind, tau, groups) * positions_held(kind, i, n_c)
            * _positive_int("head_dim", head_dim) * _positive_int("bytes_per_number", bytes_per_number)
            * _positive_int("batch", batch))


def kv_projections(i: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """How many key vectors (and as many value vectors) step i computes, counting every layer and head.

    Without a cache step i recomputes k_j^{[h]} for every j = 1…i; with one it computes k_i^{[h]} only.
    """
    i = _positive_int("i", i)
    return (1 if cached else i) * _positive_int("n_layer", n_layer) * _positive_int("tau", tau)


def total_kv_projections(n: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """Key vectors computed over steps 1…n: n·(layers·τ) with a cache, n(n+1)/2·(layers·τ) without."""
    n = _positive_int("n", n)
    per = _positive_int("n_layer", n_layer) * _positive_int("tau", tau)
    return (n if cached else n * (n + 1) // 2) * per


def grouped_query_attention(q, k, v, mask=None) -> np.ndarray:
    """Attention where τ query heads share g key/value heads: query head h reads key/value head
    ⌈h·g/τ⌉ (heads counted from 1), i.e. each run of τ/g consecutive query heads forms one group.
    g = τ is ordinary multi-head attention, g = 1 is multi-query attention (§2.3.4, eq. 2.71–2.73).

    q: (..., τ, m, d_h); k, v: (..., g, n, d_h). Returns (..., τ, m, d_h).
    """
    q = as_float_array("q", q)
    k = as_float_array("k", k)
    v = as_float_array("v", v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        require_ndim(name, x, 3, "(..., heads, positions, head_dim)")
    tau, g = q.shape[-3], k.shape[-3]
    if v.shape[-3] != g:
        raise ValueError(f"k has {g} heads but v has {v.shape[-3]}; they must match")
    if tau % g:
        raise ValueError(f"the {g} key/value heads must divide the {tau} query heads evenly")
    # Python indices count from 0: query head h (0-based) reads key/value head h // (τ/g).
    k = np.repeat(k, tau // g, axis=-3)  # (..., τ, n, d_h): each shared head copied for its group
    v = np.repeat(v, tau // g, axis=-3)
    return attention(q, k, v, mask)
