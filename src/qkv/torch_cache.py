"""A static KV cache in PyTorch (chapter 6): allocated once, written in place at the current position.

The NumPy ``KVCache`` of chapter 4 shows the idea; this one is shaped for speed. Every layer ℓ owns two
preallocated tensors, cache_ℓ = (K, V), each laid out as

    (batch, τ, max_positions, head_dim)

After step i the first i slots of the positions axis hold k_1 … k_i and v_1 … v_i (slot j−1 holds
position j, since Python counts from 0); the rest is spare room. Nothing is reallocated or concatenated
while decoding, so the tensors keep the same storage (the same ``data_ptr``) from the first step to the
last, which is also what lets a CUDA graph replay the decode step. The length is an explicit counter,
never inferred from the contents (Xiao & Zhu 2025, §2.3.2, §5.1).
"""

from __future__ import annotations

import torch

_LAYOUT = "(batch, tau, n_new, head_dim)"


class LayerKVCache:
    """cache_ℓ: the keys and values of one layer, in two (batch, τ, max_positions, head_dim) tensors.

    ``update(k, v)`` writes n_new positions at slots ``length … length+n_new−1`` and returns
    (K_{≤i}, V_{≤i}), views of shape (batch, τ, i, head_dim) with i the new length: exactly what attention
    at the new positions reads. A batch smaller than the one the cache was built for uses its first rows.
    """

    def __init__(self, batch: int, tau: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, tau, max_positions, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # i: positions written so far
        self.batch: int | None = None  # the batch in use, fixed by the first update after a reset

    @property
    def max_positions(self) -> int:
        return self.k.shape[2]

    def _check(self, k: torch.Tensor, v: torch.Tensor, n_new: int) -> int:
        if k.ndim != 4 or k.shape != v.shape:
            raise ValueError(f"k and v must both be laid out as {_LAYOUT}; got k {tuple(k.shape)}, v {tuple(v.shape)}")
        b, tau, _, hd = k.shape
        cap_b, cap_tau, _, cap_hd = self.k.shape
        if (tau, hd) != (cap_tau, cap_hd):
            raise ValueError(f"this cache holds τ={cap_tau} heads of size {cap_hd}; got k of shape {tuple(k.shape)}")
        if b > cap_b:
            raise ValueError(f"a batch of {b} sequences is larger than the batch of {cap_b} this cache was built for")
        if self.batch is not None and b != self.batch:
            raise ValueError(f"the cache holds a batch of {self.batch} sequences; got {b}")
        if self.length + n_new > self.max_positions:
            raise ValueError(
                f"the KV cache is full: it holds {self.length} of max_positions={self.max_positions} positions "
                f"and cannot take {n_new} more"
            )
        return b

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v of shape (batch, τ, n_new, head_dim) in place; return (K_{≤i}, V_{≤i})."""
        n_new = k.shape[-2]
        b = self._check(k, v, n_new)
        start, end = self.length, self.length + n_new
        self.k[:b, :, start:end].copy_(k)
        self.v[:b, :, start:end].copy_(v)
        self.length, self.batch = end, b
        return self.k[:b, :, :end], self.v[:b, :, :end]

    def write_at(self, position: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one position given as a tensor (shape (1,), counted from 0) and return the whole buffers.

        This is the form a CUDA graph can replay: the slot is data, not a Python int, so nothing about
        the kernels changes from step to step. The caller masks the slots past ``position`` and advances
        the counter itself (``advance``), since a replayed graph cannot run Python.
        """
        b = k.shape[0]
        self.k[:b].index_copy_(2, position, k)
        self.v[:b].index_copy_(2, position, v)
        return self.k[:b], self.v[:b]

    def advance(self, n: int, batch: int) -> None:
        """Count n positions written by ``write_at``."""
        self.length += n
        self.batch = batch

    def reset(self) -> None:
        """Forget every position. The storage is kept (not zeroed): slots past ``length`` are never read."""
        self.length = 0
        self.batch = None

    def truncate(self, length: int) -> None:
        """Keep positions 1…``length`` and forget the rest (e.g. to time a step at a chosen position)."""
        if not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValueError(f"can only truncate to a length in [0, {self.length}], got {length!r}")
        self.length = length
        if length == 0:
            self.batch = None

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K and V (all max_positions slots, the whole batch it was built for)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class StaticKVCache:
    """The cache of a whole decoder: one ``LayerKVCache`` per layer, all of one shape and one length.

    Layout of each layer's K and V: (batch, τ, max_positions, head_dim). Memory:
    ``nbytes`` = 2 · layers · batch · τ · max_positions · head_dim · bytes per element.
    """

    def __init__(self, n_layer: int, batch: int, tau: int, max_positions: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        for name, value in (("n_layer", n_layer), ("batch", batch), ("tau", tau),
                            ("max_positions", max_positions), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"StaticKVCache: {name} must be a positive int, got {value!r}")
        self.layers = [LayerKVCache(batch, tau, max_positions, head_dim, dtype, device) for _ in range(n_layer)]

    def __getitem__(self, layer: int) -> LayerKVCache:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """i: the positions held, the same in every layer (a mismatch is a bug and raises)."""
        lengths = {c.length for c in self.layers}
        if len(lengths) != 1:
            raise RuntimeError(f"the per-layer caches disagree on their length: {sorted(lengths)}")
        return lengths.pop()

    @property
    def batch(self) -> int | None:
        """The batch in use (None before the first prefill after a reset)."""
        return self.layers[0].batch

    @property
    def max_batch(self) -> int:
        return self.layers[0].k.shape[0]

    @property
    def max_positions(self) -> int:
        return self.layers[0].max_positions

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].k.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].k.device

    def reset(self) -> None:
        for c in self.layers:
            c.reset()

    def truncate(self, length: int) -> None:
        """Keep positions 1…``length`` in every layer; the storage is untouched."""
        for c in self.layers:
            c.truncate(length)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers)
