"""What a KV cache costs: its size in bytes, the work it saves, heads that share keys
and values, and bounded memories built from averages (chapters 4–5).

A cache stores, for every layer ℓ, every key/value head and every position it holds,
one key and one value vector of head_dim numbers. So its size is

    bytes = 2 · n_layer · n_kv_heads · positions_held · head_dim · bytes_per_number · batch

and the four caches of chapter 5 differ only in two factors:

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

from qkv.reference._checks import as_float_array, require_ndim
from qkv.reference.attention import attention
from qkv.reference.cache import WindowKVCache

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


def cache_bytes(kind: str, i: int, *, n_layer: int, tau: int, head_dim: int,
                bytes_per_number: int = 4, batch: int = 1, n_c: int | None = None,
                groups: int | None = None) -> int:
    """Bytes a cache of ``kind`` holds after step i (see the module docstring)."""
    return (2 * _positive_int("n_layer", n_layer)
            * kv_heads(kind, tau, groups)
            * positions_held(kind, i, n_c)
            * _positive_int("head_dim", head_dim)
            * _positive_int("bytes_per_number", bytes_per_number)
            * _positive_int("batch", batch))


def kv_projections(i: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """How many key/value projections step i computes, counting every layer and head: one for each key
    vector k_j^{[h]} and one for each value vector v_j^{[h]} (keys plus values, as exercise 4 counts).

    Without a cache step i recomputes (k_j^{[h]}, v_j^{[h]}) for every j = 1…i: 2·i per layer and head;
    with one it computes (k_i^{[h]}, v_i^{[h]}) only: 2 per layer and head.
    """
    i = _positive_int("i", i)
    per = 2 * _positive_int("n_layer", n_layer) * _positive_int("tau", tau)
    return (1 if cached else i) * per


def total_kv_projections(n: int, *, cached: bool, n_layer: int = 1, tau: int = 1) -> int:
    """Key/value projections over steps 1…n (keys plus values): 2n per layer and head with a cache,
    2 · n(n+1)/2 = n(n+1) without."""
    n = _positive_int("n", n)
    per = 2 * _positive_int("n_layer", n_layer) * _positive_int("tau", tau)
    return (n if cached else n * (n + 1) // 2) * per


def gpt2_parameter_count(config) -> int:
    """Parameters of a GPT-2-shaped model (a ``qkv.config.DecoderConfig``), output layer tied to the
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
    head_dim = _positive_int("d", d) // _positive_int("tau", tau)
    attn = d * d + 2 * d * _positive_int("n_kv_heads", n_kv_heads) * head_dim + d * d  # W_q, W_k, W_v, W_o
    per_layer = attn + 3 * d * _positive_int("d_ff", d_ff) + 2 * d  # gate, up, down; two RMSNorm gains
    embeddings = (1 if tied else 2) * _positive_int("vocab_size", vocab_size) * d
    return embeddings + _positive_int("n_layer", n_layer) * per_layer + d


def crossover_positions(weight_bytes: int, *, n_layer: int, n_kv_heads: int, head_dim: int,
                        bytes_per_number: int) -> int:
    """The smallest batch × length (positions held, summed over the sequences of a batch) at which a
    full cache holds at least ``weight_bytes``: the point where the cache outgrows the weights."""
    per_position = cache_bytes("full", 1, n_layer=n_layer, tau=n_kv_heads, head_dim=head_dim,
                               bytes_per_number=bytes_per_number)
    return -(-_positive_int("weight_bytes", weight_bytes) // per_position)  # ceiling division


def window_plus_average(k, v, n_c: int) -> tuple[np.ndarray, np.ndarray]:
    """A bounded memory that keeps a window and an average beside it: the last n_c keys and values as
    they are, and everything older than the window as one averaged pair (k̄, v̄).

    k, v: (i, d) for positions 1…i. Returns (K_mem, V_mem), each (n_mem, d): while i ≤ n_c, the i rows
    themselves; after that, the mean of positions 1…i−n_c first, then positions i−n_c+1…i.
    """
    k = as_float_array("k", k)
    v = as_float_array("v", v)
    require_ndim("k", k, 2, "(positions, d)")
    require_ndim("v", v, 2, "(positions, d)")
    n_c = _positive_int("n_c", n_c)
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
    x = as_float_array("x", x)
    require_ndim("x", x, 2, "(positions, d)")
    size = _positive_int("size", size)
    return np.stack([x[s:s + size].mean(axis=0) for s in range(0, x.shape[0], size)])


def windowed_next_logits(decoder, ids, n_c: int) -> np.ndarray:
    """Next-token logits (batch, vocab) after ``ids`` (batch, n) or (n,), when every attention layer of
    the NumPy ``decoder`` sees only the last n_c positions: one WindowKVCache per layer, the tokens fed
    one at a time as in decoding. With several layers, a token more than n_c − 1 positions back can
    still reach the output through the keys and values of higher layers, up to n_layer·(n_c − 1)."""
    ids = np.asarray(ids)
    ids = ids[None, :] if ids.ndim == 1 else ids
    caches = [WindowKVCache(_positive_int("n_c", n_c)) for _ in range(decoder.config.n_layer)]
    logits = decoder.prefill(ids[:, :1], caches)[:, -1]
    for t in range(1, ids.shape[1]):  # Python column t is position t + 1
        logits = decoder.decode_step(ids[:, t], caches)
    return logits


def grouped_query_attention(q, k, v, mask=None) -> np.ndarray:
    """Attention where τ query heads share g key/value heads: query head h reads
    key/value head γ(h) = ⌈h·g/τ⌉ (heads counted from 1), i.e. each run of τ/g
    consecutive query heads forms one group. g = τ is ordinary multi-head attention,
    g = 1 is multi-query attention (§2.3.4, eq. 2.71–2.73).

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
        raise ValueError(
            f"the {g} key/value heads must divide the {tau} query heads evenly")
    # Python counts from 0: query head h (0-based) reads key/value head h // (τ/g).
    k = np.repeat(k, tau // g, axis=-3)  # (..., τ, n, d_h): a copy for each head
    v = np.repeat(v, tau // g, axis=-3)
    return attention(q, k, v, mask)
