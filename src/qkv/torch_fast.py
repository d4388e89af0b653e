"""The torch decoder's speed paths (chapter 6): the same numbers, laid out and launched for speed.

Decoding one token is bound by reading every weight once, so how the weights sit in memory, and how
the work reaches the processor, decide the speed. Two paths, both turned on by
``CachedDecoder.compile_decode()`` (or ``from_gpt2_state_dict(..., fast=True)``):

- On a CPU, in float32, each linear layer's weight is also kept *prepacked* in oneDNN's blocked layout
  (the kernels ``torch.compile`` uses on CPUs), which streams a one-row product about 1.5–2x faster
  than the BLAS behind ``F.linear``.
- On a GPU, the decode step is captured once as a CUDA graph and replayed: one launch per token
  instead of a few hundred. A graph replays fixed shapes and addresses, so the step attends over every
  slot of the static cache, masking the ones not yet written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qkv.torch_cache import StaticKVCache


def can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacking applies: float32 weights on a CPU whose PyTorch build has oneDNN."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


class PrepackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same ``state_dict``) that also keeps its weight in oneDNN's
    packed layout, and uses it for float32 input on the CPU."""

    @classmethod
    def of(cls, linear: nn.Linear) -> "PrepackedLinear":
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias  # shared, not copied
        # The 1 is the row count oneDNN tunes the packing for: decoding feeds one row per sequence.
        packed._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:  # moved since: the plain layer
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def prepack_linears(model: nn.Module) -> None:
    """Replace every ``nn.Linear`` of ``model`` by a ``PrepackedLinear`` of the same parameters, where
    prepacking applies (float32 on a CPU with oneDNN); elsewhere leave the model as it is."""
    if not can_prepack(next(model.parameters()).device, next(model.parameters()).dtype):
        return
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PrepackedLinear.of(child))


def decode_static(model, token: torch.Tensor, position: torch.Tensor,
                  cache: StaticKVCache) -> torch.Tensor:
    """One decode step with its position as a tensor (shape (1,), from 0) and no Python branching, so
    that a CUDA graph can capture it: the blocks of ``model`` with each layer's keys and values written
    at ``position`` and attention over all max_positions slots, masked after it. token: (batch,);
    returns logits (batch, vocab)."""
    x = model.wte(token[:, None]) + model.wpe(position)  # (batch, 1, d)
    slots = torch.arange(cache.max_positions, device=x.device)
    mask = (slots <= position)[None, None, None, :]  # (1, 1, 1, max_positions)
    for block, layer_cache in zip(model.blocks, cache.layers):
        h = block.ln_1(x)
        q, k, v = block.qkv(h)  # each (batch, τ, 1, head_dim)
        K, V = layer_cache.write_at(position, k, v)  # (batch, τ, max_positions, head_dim)
        heads = _one_query_attention(q, K, V, mask)
        x = x + block.c_proj(heads.transpose(1, 2).reshape(x.shape))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))[:, 0]


def _one_query_attention(q, K, V, mask) -> torch.Tensor:
    """softmax(q Kᵀ/√head_dim + Mask) V for one query per head, written out: for a single query the
    fused attention kernels (tiled for many queries) run several times slower than three small products.
    q: (batch, τ, 1, head_dim); K, V: (batch, τ, slots, head_dim); mask: True where a slot is visible."""
    scores = (q @ K.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (batch, τ, 1, slots)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ V  # (batch, τ, 1, head_dim)


class GraphedDecodeStep:
    """The decode step captured once as a CUDA graph, then replayed. Bound to one cache and one batch
    size (a graph replays fixed addresses); inputs are copied into its static tensors, and the returned
    logits are overwritten by the next replay."""

    def __init__(self, model, cache: StaticKVCache, batch: int) -> None:
        self.model, self.cache, self.batch = model, cache, batch
        self.token = torch.zeros(batch, dtype=torch.int64, device=model.device)
        self.position = torch.zeros(1, dtype=torch.int64, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def fits(self, cache: StaticKVCache, batch: int) -> bool:
        return cache is self.cache and batch == self.batch

    def _capture(self) -> None:
        # Warm up on a side stream (as CUDA graphs require); these runs write the k, v the replay will.
        side = torch.cuda.Stream(device=self.model.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                decode_static(self.model, self.token, self.position, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decode_static(self.model, self.token, self.position, self.cache)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token)
        self.position.fill_(self.cache.length)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.cache.count_replayed(1, self.batch)
        return self.logits
