"""What a KV cache costs: its size in bytes, the work it saves, heads that share keys
and values, and bounded memories built from averages (chapters 5–7).

A cache stores, for every layer ℓ, every key/value head and every position it holds,
one key and one value vector of head_dim numbers. So its size is

    bytes = 2 · n_layer · n_kv_heads · positions_held · head_dim · bytes_per_number · batch

and the four caches of chapters 5–7 differ only in two factors:

===============  ======================  ===========================  ==========
cache            n_kv_heads              positions_held after step i  textbook
===============  ======================  ===========================  ==========
full             τ                       i                            §2.3.2
window of n_c    τ                       min(i, n_c)                  §2.3.3.1
multi-query      1                       i                            §2.3.4
grouped-query    g groups (g divides τ)  i                            §2.3.4
===============  ======================  ===========================  ==========

Positions count from 1, as in the course.
"""

from __future__ import annotations

import numpy as np

from qkv import checks
from qkv.reference.cache import DecoderCache, WindowKVCache
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
    """Bytes a cache of ``kind`` holds after step i (see the module docstring)."""
    return (2 * checks.positive_int("n_layer", n_layer)
            * kv_heads(kind, tau, groups)
            * positions_held(kind, i, n_c)
            * checks.positive_int("head_dim", head_dim)
            * checks.positive_int("bytes_per_number", bytes_per_number)
            * checks.positive_int("batch", batch))


def kv_projections(i: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """How many key/value projections step i computes, counting every layer and head: one for each key
    vector k_j^{[h]} and one for each value vector v_j^{[h]} (keys plus values, as exercise 4 counts).

    Without a cache step i recomputes (k_j^{[h]}, v_j^{[h]}) for every j = 1…i: 2·i per layer and head;
    with one it computes (k_i^{[h]}, v_i^{[h]}) only: 2 per layer and head.
    """
    i = checks.positive_int("i", i)
    per = 2 * checks.positive_int("n_layer", n_layer) * checks.positive_int("tau", tau)
    return (1 if cached else i) * per


def total_kv_projections(n: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """Key/value projections over steps 1…n (keys plus values): 2n per layer and head with a cache,
    2 · n(n+1)/2 = n(n+1) without."""
    n = checks.positive_int("n", n)
    per = 2 * checks.positive_int("n_layer", n_layer) * checks.positive_int("tau", tau)
    return (n if cached else n * (n + 1) // 2) * per


def gpt2_parameter_count(config) -> int:
    """Parameters of a GPT-2-shaped model (a ``qkv.gpt2.GPT2Config``), output layer tied to the
    token embedding as in GPT-2. GPT-2 small: 124,439,808."""
    d, d_ff = config.n_embd, config.d_ff
    per_layer = (2 * 2 * d            # two LayerNorms: gain and bias
                 + d * 3 * d + 3 * d  # W_q, W_k, W_v and their biases
                 + d * d + d          # W_o
                 + d * d_ff + d_ff    # MLP in
                 + d_ff * d + d)      # MLP out
    return (config.vocab_size + config.n_positions) * d + config.n_layer * per_layer + 2 * d


def llama_parameter_count(*, vocab_size: int, d: int, n_layer: int, tau: int, n_kv_heads: int,
                          d_ff: int, tied: bool = False) -> int:
    """Parameters of a Llama-shaped model (RMSNorm, grouped-query attention with n_kv_heads key/value
    heads, SwiGLU MLP of width d_ff, no biases). Llama-3-8B's shape gives 8,030,261,248."""
    head_dim = checks.positive_int("d", d) // checks.positive_int("tau", tau)
    attn = d * d + 2 * d * checks.positive_int("n_kv_heads", n_kv_heads) * head_dim + d * d  # W_q, W_k, W_v, W_o
    per_layer = attn + 3 * d * checks.positive_int("d_ff", d_ff) + 2 * d  # gate, up, down; two RMSNorm gains
    embeddings = (1 if tied else 2) * checks.positive_int("vocab_size", vocab_size) * d
    return embeddings + checks.positive_int("n_layer", n_layer) * per_layer + d


def crossover_positions(weight_bytes: int, *, n_layer: int, n_kv_heads: int, head_dim: int,
                        bytes_per_number: int) -> int:
    """The smallest batch × length (positions held, summed over the sequences of a batch) at which a
    full cache holds at least ``weight_bytes``: the point where the cache outgrows the weights."""
    per_position = cache_bytes("full", 1, n_layer=n_layer, tau=n_kv_heads, head_dim=head_dim,
                               bytes_per_number=bytes_per_number)
    return -(-checks.positive_int("weight_bytes", weight_bytes) // per_position)  # ceiling division


def _rows(name: str, x: np.ndarray) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be laid out as (positions, d); got shape {x.shape}")


def window_plus_average(k, v, n_c: int) -> tuple[np.ndarray, np.ndarray]:
    """A bounded memory that keeps a window and an average beside it: the last n_c keys and values as
    they are, and everything older than the window as one averaged pair (k̄, v̄).

    k, v: (i, d) for positions 1…i. Returns (K_mem, V_mem), each (n_mem, d): while i ≤ n_c, the i rows
    themselves; after that, the mean of positions 1…i−n_c first, then positions i−n_c+1…i.
    """
    k = checks.float_array("k", k)
    v = checks.float_array("v", v)
    _rows("k", k)
    _rows("v", v)
    n_c = checks.positive_int("n_c", n_c)
    i = k.shape[0]
    if i <= n_c:
        return k, v
    old = slice(0, i - n_c)  # positions 1…i−n_c (Python rows 0…i−n_c−1)
    K_mem = np.concatenate([k[old].mean(axis=0, keepdims=True), k[i - n_c:]])
    V_mem = np.concatenate([v[old].mean(axis=0, keepdims=True), v[i - n_c:]])
    return K_mem, V_mem


def segment_averages(x, size: int) -> np.ndarray:
    """One averaged vector per segment of ``size`` consecutive positions: x (i, d) → (⌈i/size⌉, d).

    Row s (from 0) averages positions s·size+1 … min((s+1)·size, i); the last segment may be shorter.
    """
    x = checks.float_array("x", x)
    _rows("x", x)
    size = checks.positive_int("size", size)
    return np.stack([x[s:s + size].mean(axis=0) for s in range(0, x.shape[0], size)])


def windowed_next_logits(decoder, ids, n_c: int) -> np.ndarray:
    """Next-token logits (batch, vocab) after ``ids`` (batch, n) or (n,), when every attention layer of
    the NumPy ``decoder`` sees only the last n_c positions: one WindowKVCache per layer, the tokens fed
    one at a time as in decoding. With several layers, a token more than n_c − 1 positions back can
    still reach the output through the keys and values of higher layers, up to n_layer·(n_c − 1)."""
    ids = np.asarray(ids)
    ids = ids[None, :] if ids.ndim == 1 else ids
    n_c = checks.positive_int("n_c", n_c)
    caches = DecoderCache([WindowKVCache(n_c) for _ in range(decoder.config.n_layer)], len(ids))
    logits = decoder.prefill(ids[:, :1], caches)[:, -1]
    for t in range(1, ids.shape[1]):  # Python column t is position t + 1
        logits = decoder.decode_step(ids[:, t], caches)
    return logits


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
