"""Checks at the edge (every chapter): each public function validates its arguments here, once.

One rule (STYLE rule 11): a **TypeError** when an argument is the wrong *kind* of thing (a string where a
number goes, ``True`` where a count goes, float token ids), a **ValueError** when it is the right kind but
a wrong *value* (a negative size, a shape that does not fit, NaN, a token id outside the vocabulary).
Every message names the argument and what it saw.

A public function calls these once, then computes its formula; loops inside the package call the
unchecked cores, so a decode step never rescans the whole cache.
"""

from __future__ import annotations

import numpy as np


def _count(name: str, value, smallest: int, kind: str) -> int:
    # bools are ints to Python, but `n_head=True` is a slip, not one head; NumPy ints are sizes read
    # from arrays or .npz files, and pass.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a {kind} int, got {value!r} (of type {type(value).__name__})")
    if value < smallest:
        raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    return int(value)


def positive_int(name: str, value) -> int:
    """``value`` as a Python int ≥ 1 (a size: heads, positions, a batch)."""
    return _count(name, value, 1, "positive")


def non_negative_int(name: str, value) -> int:
    """``value`` as a Python int ≥ 0 (a count that may be zero, like ``max_new_tokens``)."""
    return _count(name, value, 0, "non-negative")


def float_array(name: str, x, finite: bool = False) -> np.ndarray:
    """``x`` as a floating-point array (integers become float64). NaN is rejected, and with ``finite``
    ±inf too (an infinite key or value turns a weighted average into inf − inf = NaN)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of numbers, could not convert it: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be an array of numbers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not (np.isfinite(arr).all() if finite else not np.isnan(arr).any()):  # one pass
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        sign = "+inf" if np.isposinf(arr).any() else "-inf"
        raise ValueError(f"{name} contains {sign}; it must be finite")
    return arr


def ndim_at_least(name: str, arr: np.ndarray, at_least: int, layout: str) -> None:
    if arr.ndim < at_least:
        raise ValueError(f"{name} must have at least {at_least} axes, laid out as {layout}; "
                         f"got shape {arr.shape}")


def same_leading(names: tuple[str, str], a, b, a_tail: int, b_tail: int) -> None:
    """The axes in front of the last ``a_tail`` / ``b_tail`` axes must match exactly (no
    broadcasting: (3, 2) values with (2,) weights is a mistake to report, not to guess)."""
    lead_a, lead_b = a.shape[: a.ndim - a_tail], b.shape[: b.ndim - b_tail]
    if lead_a != lead_b:
        raise ValueError(
            f"{names[0]} and {names[1]} must agree on their leading (batch/head) axes: "
            f"{names[0]} has shape {a.shape}, {names[1]} has shape {b.shape} ({lead_a} vs {lead_b})"
        )


def token_ids(ids, vocab_size: int, name: str = "ids"):
    """Token ids as (batch, n) int64, (n,) read as a batch of one; a NumPy array stays an array and a
    torch tensor stays a tensor on its device. Floats that are whole numbers pass (1.0 is token 1)."""
    if hasattr(ids, "detach"):  # a torch tensor: checked without importing torch here
        t = ids.detach()
        whole = t.is_floating_point() and bool((t == t.round()).all())
        if not whole and (t.is_floating_point() or t.is_complex() or str(t.dtype) == "torch.bool"):
            raise TypeError(f"{name} must be integer token ids, got dtype {t.dtype}")
        t = t.long()
    else:
        t = np.asarray(ids)
        if t.dtype == object or not (np.issubdtype(t.dtype, np.integer) or t.size == 0):
            if not (np.issubdtype(t.dtype, np.floating) and np.all(t == np.round(t))):
                raise TypeError(f"{name} must be integer token ids, got dtype {t.dtype}")
        t = t.astype(np.int64, copy=False)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, n) or (n,); got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); give at least one token")
    bad = (t < 0) | (t >= vocab_size)
    if bool(bad.any()):
        bad = bad.cpu().numpy() if hasattr(bad, "cpu") else bad
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds token id {int(t[where])} at index {where}, outside the "
                         f"vocabulary [0, {vocab_size})")
    return t


def one_token_each(token_ids_, vocab_size: int):
    """One new token per sequence, (batch,) or (batch, 1) as sliced off a (batch, n) array; as (batch, 1)."""
    shape = tuple(np.shape(token_ids_))
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ValueError(f"token_ids must hold one token per sequence, shape (batch,) or (batch, 1); "
                         f"got shape {shape}")
    return token_ids(token_ids_.reshape(-1, 1) if hasattr(token_ids_, "reshape") else
                     np.reshape(token_ids_, (-1, 1)), vocab_size, "token_ids")


def room(start: int, n: int, limit: int | None, what: str) -> None:
    """Positions start+1 … start+n must fit within ``limit`` positions (``what`` names the limit;
    None: no limit, as for a window cache, which drops what falls out of it)."""
    if limit is not None and start + n > limit:
        raise ValueError(f"sequence would reach {start + n} positions, past {what}")


# --- the arguments of chapter 1–3's formulas -----------------------------------------------------------
WEIGHT_SUM_TOLERANCE = 1e-6


def weights_and_values(values, weights) -> tuple[np.ndarray, np.ndarray]:
    """values (..., n, d_v) and weights (..., n): non-negative weights that sum to 1, one per value row."""
    values, weights = float_array("values", values), float_array("weights", weights)
    ndim_at_least("values", values, 2, "(..., n, d_v): one value vector per row")
    ndim_at_least("weights", weights, 1, "(..., n): one weight per value vector")
    if weights.shape[-1] != values.shape[-2]:
        raise ValueError(f"weights has {weights.shape[-1]} entries on its last axis but values has "
                         f"{values.shape[-2]} rows (weights shape {weights.shape}, "
                         f"values shape {values.shape})")
    same_leading(("weights", "values"), weights, values, 1, 2)
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative; smallest weight seen is {weights.min():g}")
    sums = weights.sum(axis=-1)
    if not np.allclose(sums, 1.0, rtol=0, atol=WEIGHT_SUM_TOLERANCE):
        worst = sums.flat[np.argmax(np.abs(sums - 1.0))]
        raise ValueError(f"weights must sum to 1 along their last axis; a row sums to {worst:g}")
    return values, weights


def scores(x, axis: int = -1) -> np.ndarray:
    """Scores for a softmax: finite or −inf (a masked key), and no row −inf everywhere."""
    x = float_array("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis to normalise over; got a scalar")
    if np.isposinf(x).any():  # exp(+inf − +inf) would be NaN
        raise ValueError("softmax: x contains +inf; scores must be finite or -inf (a masked key)")
    if np.isneginf(np.max(x, axis=axis)).any():
        raise ValueError("softmax: a row of x is -inf everywhere (a mask that hides every key?); "
                         "nothing to normalise")
    return x


def queries_and_keys(q, k) -> tuple[np.ndarray, np.ndarray]:
    """q (..., m, d) and k (..., n, d): finite, the same d, the same leading axes."""
    q, k = float_array("q", q, finite=True), float_array("k", k, finite=True)
    ndim_at_least("q", q, 2, "(..., m, d): one query per row")
    ndim_at_least("k", k, 2, "(..., n, d): one key per row")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same vector size d to be compared: q has shape "
                         f"{q.shape}, k has shape {k.shape}")
    same_leading(("q", "k"), q, k, 2, 2)
    return q, k


def keys_and_values(k, v) -> np.ndarray:
    """v (..., n, d_v): finite, one row per key row, the same leading axes as k; returns v."""
    v = float_array("v", v, finite=True)
    ndim_at_least("v", v, 2, "(..., n, d_v): one value vector per row")
    k = np.asarray(k)
    if k.ndim >= 2 and v.shape[-2] != k.shape[-2]:
        raise ValueError(f"k and v must hold one row per position: k has {k.shape[-2]} rows "
                         f"(shape {k.shape}), v has {v.shape[-2]} (shape {v.shape})")
    same_leading(("k", "v"), k, v, 2, 2)
    return v


def additive_mask(mask, scores_shape: tuple[int, ...]) -> np.ndarray | None:
    """An additive mask (0 / −inf) of shape (m, n) or the scores' own, or a boolean one (True: may
    attend), as an additive array; None stays None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = np.where(mask, 0.0, -np.inf)
    else:
        mask = float_array("mask", mask)
    if np.isposinf(mask).any():
        raise ValueError("mask contains +inf; an additive mask holds 0 (may attend) and -inf (hidden)")
    if mask.shape != scores_shape[-2:] and mask.shape != scores_shape:
        raise ValueError(f"mask has shape {mask.shape}; it must be (m, n) = {scores_shape[-2:]} "
                         f"(queries × keys) or match the scores exactly, {scores_shape}")
    return mask


def scores_shape(q: np.ndarray, k: np.ndarray) -> tuple[int, ...]:
    return q.shape[:-1] + k.shape[-2:-1]  # (..., m, n)


def attention_inputs(q, k, v=None, mask=None) -> tuple:
    """The arguments of attention (q, k, v, mask) or of attention_weights (q, k, mask), checked."""
    q, k = queries_and_keys(q, k)
    if v is not None:
        v = keys_and_values(k, v)
    mask = additive_mask(mask, scores_shape(q, k))
    return (q, k, mask) if v is None else (q, k, v, mask)


def heads_of(name: str, x, tau) -> tuple[np.ndarray, int]:
    """x (..., n, d) whose width d splits into τ heads of head_dim = d/τ columns."""
    x = float_array(name, x)
    ndim_at_least(name, x, 2, "(..., n, d)")
    tau = positive_int("tau (the number of heads)", tau)
    if x.shape[-1] % tau:
        raise ValueError(f"tau={tau} heads do not divide the width d={x.shape[-1]} of {name} (shape "
                         f"{x.shape}): d is not divisible by tau={tau}, and each head needs an equal "
                         "slice of d/τ columns")
    return x, tau


def square_weights(x: np.ndarray, **weights) -> None:
    d = x.shape[-1]
    for name, w in weights.items():
        if np.shape(w) != (d, d):
            raise ValueError(f"{name} must have shape (d, d) = {(d, d)} for x of width d={d}; "
                             f"got {np.shape(w)}")


def grouped_heads(q, k, v, mask=None) -> tuple:
    """q (..., τ, m, head_dim) and k, v (..., g, n, head_dim), with g dividing τ; and the
    mask as an additive array."""
    q, k, v = (float_array(name, x, finite=True) for name, x in (("q", q), ("k", k), ("v", v)))
    for name, x in (("q", q), ("k", k), ("v", v)):
        ndim_at_least(name, x, 3, "(..., heads, positions, head_dim)")
    tau, g = q.shape[-3], k.shape[-3]
    if v.shape[-3] != g:
        raise ValueError(f"k has {g} heads but v has {v.shape[-3]}; they must match")
    if tau % g:
        raise ValueError(f"the {g} key/value heads must divide the {tau} query heads evenly")
    keys_and_values(k, v)
    q_, k_ = q[..., :1, :, :], k[..., :1, :, :]  # one head each: d and the leading axes agree
    queries_and_keys(q_, k_)
    return q, k, v, additive_mask(mask, q.shape[:-1] + k.shape[-2:-1])


# --- caches (chapters 5–7) ---------------------------------------------------------------------------
CACHE_LAYOUT = "(..., tau, n_new, head_dim)"


def new_keys_and_values(k, v) -> tuple[np.ndarray, np.ndarray]:
    """k and v for a cache: the same shape, laid out as (..., τ, n_new, head_dim)."""
    k, v = float_array("k", k), float_array("v", v)
    ndim_at_least("k", k, 3, CACHE_LAYOUT)
    ndim_at_least("v", v, 3, CACHE_LAYOUT)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape {CACHE_LAYOUT}; got k {k.shape}, v {v.shape}")
    return k, v


def averaged(k, v, keys, values) -> tuple[np.ndarray, np.ndarray]:
    """A key and value for a running average of keys and values of the same shapes."""
    k, v = float_array("k", k), float_array("v", v)
    if keys is not None and (k.shape != keys.shape or v.shape != values.shape):
        raise ValueError(f"this memory averages keys of shape {keys.shape} and values of shape "
                         f"{values.shape}; got k {k.shape}, v {v.shape}")
    return k, v


def truncated_length(length, held: int) -> int:
    """A length to truncate a cache to: an int in [0, held]."""
    length = non_negative_int("length", length)
    if length > held:
        raise ValueError(f"can only truncate to a length in [0, {held}], got {length!r}")
    return length


# --- the decoders (chapters 4, 5 and 8) -------------------------------------------------------------------
def cache_positions(max_positions, n_positions: int) -> int:
    """A cache length: an int in [1, n_positions], n_positions when None."""
    if max_positions is None:
        return n_positions
    max_positions = positive_int("max_positions", max_positions)
    if max_positions > n_positions:
        raise ValueError(f"max_positions must be an int in [1, n_positions={n_positions}], "
                         f"got {max_positions!r}")
    return max_positions


def layer_caches(cache, cache_type: type, n_layer: int) -> None:
    """A decoder's cache: a ``cache_type`` holding one cache per layer, ``n_layer`` of them."""
    what = f"{cache_type.__name__} of {n_layer} layers (one per layer); use decoder.new_cache(batch)"
    if not isinstance(cache, cache_type):
        raise TypeError(f"cache must be a {what}, got {type(cache).__name__}")
    if len(cache) != n_layer:
        raise ValueError(f"cache must be a {what}; it has {len(cache)}")


def attention_mask(mask, shape: tuple[int, int]):
    """A left-padding mask of ``shape`` (batch, length), Hugging Face's convention: 1 for a real
    token, 0 for padding, the padding before a row's real tokens. As int64; a NumPy array stays an
    array and a torch tensor stays a tensor on its device. ``None`` stays None."""
    if mask is None:
        return None
    if hasattr(mask, "detach"):  # a torch tensor: checked without importing torch here
        m = mask.detach()
        if m.is_complex() or (m.is_floating_point() and not bool((m == m.round()).all())):
            raise TypeError(f"attention_mask must hold 0 and 1, got dtype {m.dtype}")
        m = m.long()
        rows = m.cpu().numpy()
    else:
        m = np.asarray(mask)
        numbers = m.dtype != object and (np.issubdtype(m.dtype, np.number) or m.dtype == bool)
        if not numbers or np.iscomplexobj(m) or not np.all(m == np.round(m.real)):
            raise TypeError(f"attention_mask must hold 0 and 1, got dtype {m.dtype}")
        m = m.astype(np.int64)
        rows = m
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have shape (batch, length) = {tuple(shape)}, one entry "
                         f"per token (the cache's and the new ones); got {tuple(m.shape)}")
    if not np.isin(rows, (0, 1)).all():
        raise ValueError("attention_mask must hold only 1 (a real token) and 0 (padding)")
    if (np.diff(rows, axis=-1) < 0).any():
        row = int(np.argwhere(np.diff(rows, axis=-1) < 0)[0, 0])
        raise ValueError(f"attention_mask row {row} is {rows[row].tolist()}: only left padding is "
                         "supported (the 0s before the 1s, Hugging Face's padding_side='left')")
    if (rows[:, -1] == 0).any():
        row = int(np.argwhere(rows[:, -1] == 0)[0, 0])
        raise ValueError(f"attention_mask row {row} has no real token (all 0s)")
    return m


def sampling(temperature, top_k, seed) -> tuple[float, int | None, int | None]:
    """How to pick each new token: a temperature ≥ 0 (0: greedy), ``top_k`` ≥ 1 or None, and an
    int seed or None."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
        raise TypeError(f"temperature must be a number ≥ 0, got {temperature!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be a number ≥ 0, got {temperature!r}")
    top_k = None if top_k is None else positive_int("top_k", top_k)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {seed!r} (of type {type(seed).__name__})")
    return float(temperature), top_k, None if seed is None else int(seed)


# --- rotary positions and Llama-shaped models (chapter 7) ---------------------------------------------
def positions(positions_) -> np.ndarray:
    """Positions counted from 1, as a 1-D int64 array: a sequence of ints ≥ 1 (or one int)."""
    p = np.asarray(positions_)
    if p.dtype == object or p.dtype == bool or not np.issubdtype(p.dtype, np.integer):
        if not (np.issubdtype(p.dtype, np.floating) and p.size and np.all(p == np.round(p))):
            raise TypeError(f"positions must be integers counted from 1, got {positions_!r}")
    p = np.atleast_1d(p).astype(np.int64)
    if p.ndim != 1:
        raise ValueError(f"positions must be one position per row, shape (n,); got shape {p.shape}")
    if p.size and p.min() < 1:
        raise ValueError(f"positions count from 1 in this course; got {int(p.min())}")
    return p


def kv_heads_divide(n_head: int, n_kv_heads: int, where: str) -> None:
    """Grouped-query attention: the τ query heads split into n_kv_heads equal groups."""
    if n_head % n_kv_heads:
        raise ValueError(f"{where}: n_kv_heads={n_kv_heads} must divide n_head={n_head}, "
                         "so that each key/value head serves the same number of query heads")
