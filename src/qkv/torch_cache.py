"""A static KV cache in PyTorch (chapter 8): allocated once, written in place at positions given as data.

The NumPy ``KVCache`` of chapter 5 shows the idea; this one is shaped for speed. Every layer ℓ owns two
preallocated tensors, cache_ℓ = (K, V), each laid out as

    (batch, heads, max_positions, head_dim)

where heads is τ for GPT-2 and n_kv_heads for a Llama-shaped model. After step i the first i slots of
the positions axis hold k_1 … k_i and v_1 … v_i (slot j−1 holds position j, since Python counts from
0); the rest is spare room. Nothing is reallocated or concatenated while decoding, so the tensors
keep the same storage (the same ``data_ptr``) from the first step to the last.

As in gpt-fast's ``KVCache.update(input_pos, k, v)``, the slots a step writes are a tensor, not a
Python int: the same step then runs eagerly on a CPU and replays as a CUDA graph on a GPU, where
nothing about the kernels may change from one token to the next. The length is an explicit counter
that the decoder moves after each step (``StaticDecoderCache.advance``), never inferred from the
contents (Xiao & Zhu 2025, §2.3.2, §5.1).
"""

from __future__ import annotations

import torch

from qkv import checks
from qkv.reference.cache import DecoderCache


class StaticKVCache:
    """cache_ℓ: the keys and values of one layer, in two (batch, heads, max_positions, head_dim)
    tensors. A batch smaller than the one it was built for uses its first rows."""

    def __init__(self, batch: int, heads: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, heads, max_positions, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._length = 0  # i: positions written so far
        self._batch = 0  # the batch in use, fixed by the first step after a reset

    @property
    def length(self) -> int:
        return self._length

    @property
    def max_positions(self) -> int:
        return self.k.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k and v, each (batch, heads, n, head_dim), in place at the slots
        ``input_pos`` (n,), counted from 0; return the whole K and V, each
        (batch, heads, max_positions, head_dim). Attention masks the slots past the
        ones written; the decoder moves the counter (``advance``)."""
        b = k.shape[0]
        self.k[:b].index_copy_(2, input_pos, k)
        self.v[:b].index_copy_(2, input_pos, v)
        return self.k[:b], self.v[:b]

    @property
    def keys(self) -> torch.Tensor:
        """K_{≤i}: (batch, heads, i, head_dim), a view."""
        return self.k[: self._batch, :, : self._length]

    @property
    def values(self) -> torch.Tensor:
        """V_{≤i}: (batch, heads, i, head_dim), a view."""
        return self.v[: self._batch, :, : self._length]

    def advance(self, n: int, batch: int) -> None:
        """Count n positions of ``batch`` sequences written by ``update``."""
        self._length += n
        self._batch = batch

    def reset(self) -> None:
        """Forget every position. The storage is kept (not zeroed): slots past ``length`` are
        masked."""
        self._length = self._batch = 0

    def truncate(self, length: int) -> None:
        """Keep positions 1…``length`` and forget the rest (to redo a step, or time one)."""
        self._length = checks.truncated_length(length, self._length)
        if self._length == 0:
            self._batch = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K and V (all max_positions slots, the whole batch it was built for),
        as for every cache in ``qkv``."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class StaticDecoderCache(DecoderCache):
    """The cache of a whole decoder: one ``StaticKVCache`` per layer, all of one shape and length.

    Layout of each layer's K and V: (batch, heads, max_positions, head_dim). Memory:
    ``nbytes`` = 2 · layers · batch · heads · max_positions · head_dim · bytes per element.
    """

    def __init__(self, n_layer: int, batch: int, heads: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        n_layer, batch, heads, max_positions, head_dim = (
            checks.positive_int(f"StaticDecoderCache: {name}", value) for name, value in (
                ("n_layer", n_layer), ("batch", batch), ("heads", heads),
                ("max_positions", max_positions), ("head_dim", head_dim)))
        layers = [StaticKVCache(batch, heads, max_positions, head_dim, dtype, device)
                  for _ in range(n_layer)]
        super().__init__(layers, batch)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].k.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].k.device

    def slots(self, n: int) -> torch.Tensor:
        """The slots the next n positions go to, (n,), counted from 0: what ``update`` takes."""
        return torch.arange(self.length, self.length + n, device=self.device)

    def advance(self, n: int, batch: int) -> None:
        """Count n positions of ``batch`` sequences that a step wrote into every layer."""
        for c in self.layers:
            c.advance(n, batch)

    def check_place(self, dtype: torch.dtype, device: torch.device) -> None:
        """The cache must hold what the decoder computes, where it computes it."""
        if self.dtype != dtype or self.device != device:
            raise ValueError(f"the cache holds {self.dtype} on {self.device} but this decoder "
                             f"computes in {dtype} on {device}; use decoder.new_cache(batch)")

    def check_fits(self, batch: int, n: int, total: int) -> None:
        """Before generating into this cache: will the whole run fit? (Else it fails part-way.)"""
        short = []
        if self.max_positions < total:
            short.append(f"{total} positions (prompt {n} + {total - n} new tokens) but it has room "
                         f"for {self.max_positions}")
        if self.max_batch < batch:
            short.append(f"a batch of {batch} sequences but it was built for {self.max_batch}")
        if short:
            raise ValueError(f"the cache is too small for this generation: it needs "
                             f"{' and '.join(short)}; use decoder.new_cache({batch}, {total})")


# The old names (kept for one release): the layer's cache was LayerKVCache.
LayerKVCache = StaticKVCache
