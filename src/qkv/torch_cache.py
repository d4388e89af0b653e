"""A static KV cache in PyTorch (chapter 6): allocated once, written in place at the current position.

The NumPy ``KVCache`` of chapter 4 shows the idea; this one is shaped for speed. Every layer ℓ owns two
preallocated tensors, cache_ℓ = (K, V), each laid out as

    (batch, τ, max_positions, head_dim)

After step i the first i slots of the positions axis hold k_1 … k_i and v_1 … v_i (slot j−1 holds
position j, since Python counts from 0); the rest is spare room. Nothing is reallocated or concatenated
while decoding, so the tensors keep the same storage (the same ``data_ptr``) from the first step to the
last, which is also what lets a CUDA graph replay the decode step. The length is an explicit counter
that only the cache moves, never inferred from the contents (Xiao & Zhu 2025, §2.3.2, §5.1).
"""

from __future__ import annotations

import torch

from qkv import checks
from qkv.reference.cache import DecoderCache


class LayerKVCache:
    """cache_ℓ: the keys and values of one layer, in two (batch, τ, max_positions, head_dim) tensors.

    ``update(k, v)`` writes n_new positions at slots ``length … length+n_new−1`` and returns
    (K_{≤i}, V_{≤i}), views of shape (batch, τ, i, head_dim) with i the new length: exactly what
    attention at the new positions reads. A batch smaller than the one the cache was built for uses
    its first rows.
    """

    def __init__(self, batch: int, tau: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, tau, max_positions, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._length = 0  # i: positions written so far
        self._batch = 0  # the batch in use, fixed by the first update after a reset

    @property
    def length(self) -> int:
        return self._length

    @property
    def max_positions(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Write k and v, each (batch, τ, n_new, head_dim), in place; return
        (K_{≤i}, V_{≤i}), each (batch, τ, i, head_dim)."""
        checks.static_cache_update(self, k, v)
        b, start, end = k.shape[0], self.length, self.length + k.shape[2]
        self.k[:b, :, start:end] = k
        self.v[:b, :, start:end] = v
        self._length, self._batch = end, b
        return self.k[:b, :, :end], self.v[:b, :, :end]

    @property
    def keys(self) -> torch.Tensor:
        """K_{≤i}: (batch, τ, i, head_dim), a view."""
        return self.k[: self._batch, :, : self._length]

    @property
    def values(self) -> torch.Tensor:
        """V_{≤i}: (batch, τ, i, head_dim), a view."""
        return self.v[: self._batch, :, : self._length]

    def write_at(self, position: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write one position given as a tensor (shape (1,), counted from 0); return the whole buffers.

        The form a CUDA graph can replay: the slot is data, not a Python int, so nothing about the
        kernels changes from step to step. A replay runs no Python, so the counter moves afterwards,
        in ``count_replayed``; the caller masks the slots past ``position``.
        """
        b = k.shape[0]
        self.k[:b].index_copy_(2, position, k)
        self.v[:b].index_copy_(2, position, v)
        return self.k[:b], self.v[:b]

    def count_replayed(self, n: int, batch: int) -> None:
        """Count n positions that a replayed graph wrote with ``write_at``."""
        self._length += n
        self._batch = batch

    def reset(self) -> None:
        """Forget every position. The storage is kept (not zeroed): slots past ``length`` are never read."""
        self._length = self._batch = 0

    def truncate(self, length: int) -> None:
        """Keep positions 1…``length`` and forget the rest (to redo a step, or time one)."""
        self._length = checks.truncated_length(length, self._length)
        if self._length == 0:
            self._batch = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K and V (all max_positions slots, the whole batch it was built for)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class StaticKVCache(DecoderCache):
    """The cache of a whole decoder: one ``LayerKVCache`` per layer, all of one shape and one length.

    Layout of each layer's K and V: (batch, τ, max_positions, head_dim). Memory:
    ``nbytes`` = 2 · layers · batch · τ · max_positions · head_dim · bytes per element.
    """

    def __init__(self, n_layer: int, batch: int, tau: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        n_layer, batch, tau, max_positions, head_dim = (
            checks.positive_int(f"StaticKVCache: {name}", value) for name, value in (
                ("n_layer", n_layer), ("batch", batch), ("tau", tau),
                ("max_positions", max_positions), ("head_dim", head_dim)))
        layers = [LayerKVCache(batch, tau, max_positions, head_dim, dtype, device)
                  for _ in range(n_layer)]
        super().__init__(layers, batch)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].k.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].k.device

    def count_replayed(self, n: int, batch: int) -> None:
        """Count n positions that a replayed CUDA graph wrote into every layer."""
        for c in self.layers:
            c.count_replayed(n, batch)
