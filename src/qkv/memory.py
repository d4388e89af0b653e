"""What a KV cache costs (chapters 4–5): its size in bytes, the work it saves, heads that share it.

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

from qkv import checks
from qkv.reference.qkv_attention import attend

CACHE_KINDS = ("full", "window", "multi-query", "grouped-query")


def kv_heads(kind: str, tau: int, groups: int | None = None) -> int:
    """How many distinct key/value heads a cache of this kind stores per layer."""
    tau = checks.positive_int("tau", tau)
    if kind in ("full", "window"):
        return tau
    if kind == "multi-query":
        return 1
    if kind == "grouped-query":
        if groups is None:
            raise ValueError("a grouped-query cache needs its number of groups")
        groups = checks.positive_int("groups", groups)
        if tau % groups:
            raise ValueError(f"groups={groups} must divide the number of heads tau={tau}")
        return groups
    raise ValueError(f"unknown cache kind {kind!r}; choose one of {CACHE_KINDS}")


def positions_held(kind: str, i: int, n_c: int | None = None) -> int:
    """How many positions the cache holds after step i: i, or min(i, n_c) for a window of n_c."""
    i = checks.non_negative_int("i (the step)", i)
    if kind == "window":
        if n_c is None:
            raise ValueError("a window cache needs its size n_c")
        return min(i, checks.positive_int("n_c", n_c))
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; choose one of {CACHE_KINDS}")
    return i


def cache_bytes(kind: str, i: int, *, n_layer: int, tau: int, head_dim: int,
                bytes_per_number: int = 4, batch: int = 1, n_c: int | None = None,
                groups: int | None = None) -> int:
    """Bytes a cache of ``kind`` holds after step i (see the module's table)."""
    n_layer, head_dim, bytes_per_number, batch = (
        checks.positive_int(name, value) for name, value in (
            ("n_layer", n_layer), ("head_dim", head_dim),
            ("bytes_per_number", bytes_per_number), ("batch", batch)))
    heads, positions = kv_heads(kind, tau, groups), positions_held(kind, i, n_c)
    return 2 * n_layer * heads * positions * head_dim * bytes_per_number * batch


def kv_projections(i: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """How many key vectors (and as many value vectors) step i computes, counting every layer and head.

    Without a cache step i recomputes k_j^{[h]} for every j = 1…i; with one it computes k_i^{[h]} only.
    """
    i = checks.positive_int("i", i)
    n_layer, tau = checks.positive_int("n_layer", n_layer), checks.positive_int("tau", tau)
    return (1 if cached else i) * n_layer * tau


def total_kv_projections(n: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """Key vectors computed over steps 1…n: n·(layers·τ) with a cache, n(n+1)/2·(layers·τ) without."""
    n = checks.positive_int("n", n)
    per = checks.positive_int("n_layer", n_layer) * checks.positive_int("tau", tau)
    return (n if cached else n * (n + 1) // 2) * per


def grouped_query_attention(q, k, v, mask=None) -> np.ndarray:
    """Attention where τ query heads share g key/value heads: query head h reads
    key/value head ⌈h·g/τ⌉ (heads counted from 1), so each run of τ/g consecutive query
    heads forms one group. g = τ is multi-head attention, g = 1 multi-query attention
    (§2.3.4, eq. 2.71–2.73).

    q: (..., τ, m, head_dim); k, v: (..., g, n, head_dim). Returns like q.
    """
    q, k, v, mask = checks.grouped_heads(q, k, v, mask)
    tau, g = q.shape[-3], k.shape[-3]
    # Python counts from 0: query head h reads key/value head h // (τ/g).
    k = np.repeat(k, tau // g, axis=-3)  # (..., τ, n, head_dim): one copy per member
    v = np.repeat(v, tau // g, axis=-3)
    return attend(q, k, v, mask)
