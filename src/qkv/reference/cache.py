"""Caches of keys and values for autoregressive decoding (chapter 5).

At step i a decoder needs the keys and values of positions 1…i. Without a cache it recomputes them all;
with one it computes k_i and v_i for the new position only and appends them (Xiao & Zhu 2025, §2.3.2, §5.1).
After step i with τ heads a full cache holds { (K_{≤i}^{[1]}, V_{≤i}^{[1]}), …, (K_{≤i}^{[τ]}, V_{≤i}^{[τ]}) }.

Layout of everything stored and returned: (..., τ, positions, head_dim), where ``...`` is an optional batch
axis. Every cache keeps an explicit counter of positions seen; it never infers its length from its contents.
"""

from __future__ import annotations

import numpy as np

from qkv import checks


class _PositionStore:
    """Shared checks for caches that take (..., τ, n_new, head_dim) keys and values."""

    def __init__(self) -> None:
        self._length = 0  # i: positions seen so far; only the cache moves it
        self._frame: tuple[tuple[int, ...], np.dtype] | None = None  # shape without the positions axis

    @property
    def length(self) -> int:
        """i: the positions seen so far (an explicit counter, never read off the contents)."""
        return self._length

    def _check(self, k, v) -> tuple[np.ndarray, np.ndarray]:
        k, v = checks.new_keys_and_values(k, v)
        frame = k.shape[:-2] + k.shape[-1:]
        if self._frame is None:
            self._frame = (frame, np.result_type(k, v))
        elif frame != self._frame[0]:
            expected = self._frame[0][:-1] + ("n_new",) + self._frame[0][-1:]
            raise ValueError(f"this cache holds keys of shape {expected}; got k of shape {k.shape}")
        return k, v

    @property
    def heads(self) -> int:
        """The key/value heads stored: τ for multi-head attention, g for grouped-query."""
        if self._frame is None:
            raise ValueError("the cache is empty; its heads are known after the first update")
        return self._frame[0][-2]

    @property
    def tau(self) -> int:
        """The old name of ``heads`` (kept for one release): it is g, not τ, in a grouped cache."""
        return self.heads

    def reset(self) -> None:
        """Forget every position (the counter goes back to 0)."""
        self._length = 0
        self._frame = None


class KVCache(_PositionStore):
    """The full cache: keeps the keys and values of every position seen.

    ``update(k, v)`` appends n_new positions and returns (K_{≤i}, V_{≤i}), which is exactly what attention
    at the new positions reads. Storage is allocated once for ``max_positions`` when that is given (as a
    decoder does), else it grows by doubling.
    """

    def __init__(self, max_positions: int | None = None) -> None:
        super().__init__()
        if max_positions is not None:
            max_positions = checks.positive_int("max_positions", max_positions)
        self.max_positions = max_positions
        self._k: np.ndarray | None = None
        self._v: np.ndarray | None = None

    def _grow(self, end: int) -> None:
        """Room for positions 1…end: max_positions at once, else by doubling."""
        frame, dtype = self._frame
        held = 0 if self._k is None else self._k.shape[-2]
        capacity = self.max_positions or max(end, 2 * held, 16)
        shape = frame[:-1] + (capacity,) + frame[-1:]  # (..., τ, capacity, head_dim)
        k, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
        if self._k is not None:
            k[..., : self.length, :] = self._k[..., : self.length, :]
            v[..., : self.length, :] = self._v[..., : self.length, :]
        self._k, self._v = k, v

    def update(self, k, v) -> tuple[np.ndarray, np.ndarray]:
        """Append k and v, each (..., τ, n_new, head_dim); return (K_{≤i}, V_{≤i}), each
        (..., τ, i, head_dim), where i is the new length."""
        k, v = self._check(k, v)
        start, end = self.length, self.length + k.shape[-2]
        self._check_room(k.shape[-2])
        if self._k is None or end > self._k.shape[-2]:
            self._grow(end)
        self._k[..., start:end, :] = k
        self._v[..., start:end, :] = v
        self._length = end
        return self.keys, self.values

    def _check_room(self, n_new: int) -> None:
        if self.max_positions is not None and self.length + n_new > self.max_positions:
            raise ValueError(f"KVCache is full: it holds {self.length} of max_positions="
                             f"{self.max_positions} positions and cannot take {n_new} more")

    def truncate(self, length: int) -> None:
        """Keep positions 1…``length`` and forget the rest (to redo a step, or time one)."""
        self._length = checks.truncated_length(length, self.length)

    @property
    def keys(self) -> np.ndarray:
        """K_{≤i}: (..., τ, i, head_dim), a view of the stored keys."""
        if self._k is None:
            raise ValueError("the cache is empty")
        return self._k[..., : self.length, :]

    @property
    def values(self) -> np.ndarray:
        """V_{≤i}: (..., τ, i, head_dim), a view of the stored values."""
        if self._v is None:
            raise ValueError("the cache is empty")
        return self._v[..., : self.length, :]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values, as for every cache in ``qkv``: max_positions
        slots when given, else the storage grown so far (spare slots included)."""
        return 0 if self._k is None else int(self._k.nbytes + self._v.nbytes)

    def pairs(self) -> set[tuple[int, int]]:
        """The (position, head) pairs whose (k_j^{[h]}, v_j^{[h]}) are stored:
        j = 1…i, h = 1…τ."""
        if self.length == 0:
            return set()
        i, tau = self.length, self.heads
        return {(j, h) for j in range(1, i + 1) for h in range(1, tau + 1)}

    def reset(self) -> None:
        super().reset()
        self._k = self._v = None


class WindowKVCache(_PositionStore):
    """A cache that keeps only the last n_c positions: K_{[i−n_c+1, i]} = [k_{i−n_c+1}; …; k_i]
    (Xiao & Zhu 2025, §2.3.3.1, eq. 2.52–2.53). Its memory stays bounded however long the text grows;
    the price is that attention can no longer see positions before the window."""

    max_positions = None  # any length: older positions are dropped, not refused

    def __init__(self, n_c: int) -> None:
        super().__init__()
        self.n_c = checks.positive_int("n_c (the window size)", n_c)
        self._k: np.ndarray | None = None
        self._v: np.ndarray | None = None

    def update(self, k, v) -> tuple[np.ndarray, np.ndarray]:
        """Append k and v, each (..., τ, n_new, head_dim); return the window
        (K_{[i−n_c+1, i]}, V_{[i−n_c+1, i]})."""
        k, v = self._check(k, v)
        self._length += k.shape[-2]
        if self._k is not None:  # the window so far, then the new positions
            k = np.concatenate([self._k, k], axis=-2)
            v = np.concatenate([self._v, v], axis=-2)
        self._k, self._v = k[..., -self.n_c :, :].copy(), v[..., -self.n_c :, :].copy()
        return self._k, self._v

    @property
    def keys(self) -> np.ndarray:
        if self._k is None:
            raise ValueError("the cache is empty")
        return self._k

    @property
    def values(self) -> np.ndarray:
        if self._v is None:
            raise ValueError("the cache is empty")
        return self._v

    @property
    def positions(self) -> list[int]:
        """The positions (counted from 1) held now: i−n_c+1 … i, or 1 … i while i ≤ n_c."""
        return list(range(max(1, self.length - self.n_c + 1), self.length + 1))

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values: the window of n_c positions (fewer at first)."""
        return 0 if self._k is None else int(self._k.nbytes + self._v.nbytes)

    def pairs(self) -> set[tuple[int, int]]:
        if self.length == 0:
            return set()
        return {(j, h) for j in self.positions for h in range(1, self.heads + 1)}

    def reset(self) -> None:
        super().reset()
        self._k = self._v = None


class CumulativeAverageMemory:
    """A fixed-size memory that keeps the running mean of all keys and values seen:
    k̄_i = (1/i) Σ_{j≤i} k_j, updated as k̄_i = (k_i + (i−1) k̄_{i−1}) / i (Xiao & Zhu 2025, eq. 2.56–2.57).

    Whatever the length, it stores one key and one value (of whatever shape the first update has). Every
    k_j still contributes to k̄_i, so an outcome computed from the averages can depend on every past step.
    """

    def __init__(self) -> None:
        self._length = 0
        self.keys: np.ndarray | None = None  # k̄_i
        self.values: np.ndarray | None = None  # v̄_i

    def update(self, k, v) -> tuple[np.ndarray, np.ndarray]:
        """Take the key and value of one new position; return (k̄_i, v̄_i)."""
        k, v = checks.averaged(k, v, self.keys, self.values)
        i = self.length + 1
        if self.keys is None:
            self.keys, self.values = k.copy(), v.copy()
        else:
            self.keys = (k + (i - 1) * self.keys) / i
            self.values = (v + (i - 1) * self.values) / i
        self._length = i
        return self.keys, self.values

    @property
    def length(self) -> int:
        """i: the positions averaged so far."""
        return self._length

    def reset(self) -> None:
        self._length = 0
        self.keys = self.values = None


class DecoderCache:
    """The cache of a whole decoder: cache_ℓ for every layer ℓ, all for one batch and one length.

    ``layers[ℓ]`` is layer ℓ's cache, laid out as (batch, heads, positions, head_dim). The NumPy
    decoder's layers are ``KVCache``s (``update(k, v) -> (K, V)``); the torch decoder's
    ``StaticDecoderCache`` is this class over ``StaticKVCache``s. Each layer counts its own
    positions; ``length`` says how many all of them hold. Built by the decoders'
    ``new_cache(batch, max_positions)``.
    """

    def __init__(self, layers: list, batch: int) -> None:
        self.layers = layers
        self.max_batch = checks.positive_int("batch", batch)  # a smaller batch uses part of it

    @property
    def batch(self) -> int | None:
        """The batch in use: None while empty, else fixed by the first prefill after a reset."""
        return None if self.length == 0 else self.layers[0].keys.shape[0]

    def __getitem__(self, layer: int):
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """i: the positions held, the same in every layer (a mismatch is a bug, and says so)."""
        lengths = {c.length for c in self.layers}
        if len(lengths) != 1:
            raise ValueError(f"the per-layer caches disagree on their length: {sorted(lengths)}")
        return lengths.pop()

    @property
    def max_positions(self) -> int:
        return self.layers[0].max_positions

    def reset(self) -> None:
        for c in self.layers:
            c.reset()

    def truncate(self, length: int) -> None:
        """Keep positions 1…``length`` in every layer (to redo a step at a chosen position)."""
        for c in self.layers:
            c.truncate(length)

    def check_room(self, batch: int, n: int) -> None:
        """Can this cache take n more positions of ``batch`` sequences? A ValueError that says
        why not: a batch larger than it was built for, another batch than the one it holds, or
        no room left."""
        if batch > self.max_batch:
            raise ValueError(f"a batch of {batch} sequences is larger than the batch of "
                             f"{self.max_batch} this cache was built for")
        if self.length and self.batch != batch:
            raise ValueError(f"the cache holds a batch of {self.batch} sequences; got {batch}")
        checks.room(self.length, n, self.max_positions,
                    f"the cache's max_positions={self.max_positions}")

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values, every layer's."""
        return sum(c.nbytes for c in self.layers)


def start_position(cache: DecoderCache | None, cache_type: type, n_layer: int, n_positions: int,
                   batch: int, n: int) -> int:
    """Where n new positions of ``batch`` sequences start in a decoder of ``n_layer`` layers and
    ``n_positions`` positions: 0 without a cache, else the length of ``cache``, once it is known to
    be a ``cache_type`` of one cache per layer with room for them (the decoders' one check)."""
    start = 0
    if cache is not None:
        checks.layer_caches(cache, cache_type, n_layer)
        start = cache.length
    checks.room(start, n, n_positions, f"the maximum length n_positions={n_positions} of this model")
    if cache is not None:
        cache.check_room(batch, n)
    return start
