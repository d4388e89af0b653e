"""The torch decoder's speed paths (chapter 6): the same numbers, laid out and launched for speed.

Decoding one token is bound by reading every weight once, so the speed is set by how close a step comes
to streaming the weights from memory without pauses. Both paths are turned on by
``CachedDecoder.compile_decode()`` (or ``from_gpt2_state_dict(..., fast=True)``), and both take the
decode steps of an unpadded batch:

- On a CPU, the decode step runs the same modules in the same order, written for one new
  token: no mask to build, this position's row read straight from the position (or rotary)
  table, a Llama block's query heads laid out by group without a transpose. The linear layers
  stay ``F.linear`` (MKL's one-row product): oneDNN's prepacked weights, this path's earlier
  form, measured 10–40 % slower per layer at batch 1 (PyTorch 2.13, a 2-core Xeon) and added
  ~20 µs of launch time to each of the ~50 layers a step runs.
- On a GPU, the decode step (GPT-2's or Llama's) is captured once as a CUDA graph and replayed: one
  launch per token instead of a few hundred. A graph replays fixed shapes and addresses, so the step
  attends over every slot of the static cache, masking the ones not yet written.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qkv.torch_cache import StaticKVCache
from qkv.torch_llama import rotate_half


def decode_eager(model, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
    """One decode step of a GPT-2-shaped ``model`` with nothing but the computation: token (batch,)
    at position i+1 after the i in ``cache`` -> logits (batch, vocab). The caller checked the token
    and the cache, and passes no padding."""
    start = cache.length
    x = model.wte(token[:, None]) + model.wpe.weight[start]  # (batch, 1, d)
    for block, layer_cache in zip(model.blocks, cache.layers):
        q, k, v = block.qkv(block.ln_1(x))  # each (batch, τ, 1, head_dim)
        K, V = layer_cache.update(k, v)  # (batch, τ, i + 1, head_dim)
        heads = F.scaled_dot_product_attention(q, K, V)  # one query sees every key: no mask
        x = x + block.c_proj(heads.transpose(1, 2).reshape(x.shape))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))[:, 0]


def decode_eager_llama(model, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
    """``decode_eager`` for a Llama-shaped ``model`` (``qkv.torch_llama``): rotary angles read
    from its table, the r = τ/g query heads of a group stacked against one key/value head."""
    start = cache.length
    cos, sin = model.cos[start], model.sin[start]  # (head_dim,): this position's angles
    x = model.embed_tokens(token[:, None])  # (batch, 1, d)
    b, _, d = x.shape
    for block, layer_cache in zip(model.blocks, cache.layers):
        g, hd = block.g, block.head_dim
        q, k, v = block.qkv_proj(block.norm_1(x)).split([d, g * hd, g * hd], dim=-1)
        q = q.view(b, g, block.tau // g, hd)  # (batch, g, r, head_dim): one position, r heads
        k, v = k.view(b, g, 1, hd), v.view(b, g, 1, hd)  # (batch, g, 1, head_dim)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        K, V = layer_cache.update(k, v)  # rotated K_{≤i+1}, V_{≤i+1}: (batch, g, i + 1, hd)
        heads = F.scaled_dot_product_attention(q, K, V)  # (batch, g, r, head_dim)
        x = x + block.o_proj(heads.reshape(b, 1, d))
        x = x + block.mlp(block.norm_2(x))
    return model.lm_head(model.norm(x))[:, 0]


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


def decode_static_llama(model, token: torch.Tensor, position: torch.Tensor,
                        cache: StaticKVCache) -> torch.Tensor:
    """``decode_static`` for a Llama-shaped ``model``: the rotary angles gathered at ``position``, and
    the r = τ/g query heads of a group attending to its key/value head over every slot, masked."""
    cos, sin = model.cos[position], model.sin[position]  # (1, head_dim)
    x = model.embed_tokens(token[:, None])  # (batch, 1, d)
    b, _, d = x.shape
    slots = torch.arange(cache.max_positions, device=x.device)
    mask = (slots <= position)[None, None, None, :]  # (1, 1, 1, max_positions)
    for block, layer_cache in zip(model.blocks, cache.layers):
        g, hd = block.g, block.head_dim
        q, k, v = block.qkv_proj(block.norm_1(x)).split([d, g * hd, g * hd], dim=-1)
        q = q.view(b, g, block.tau // g, hd)  # (batch, g, r, head_dim)
        k, v = k.view(b, g, 1, hd), v.view(b, g, 1, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        K, V = layer_cache.write_at(position, k, v)  # (batch, g, max_positions, head_dim)
        heads = _one_query_attention(q, K, V, mask)  # (batch, g, r, head_dim)
        x = x + block.o_proj(heads.reshape(b, 1, d))
        x = x + block.mlp(block.norm_2(x))
    return model.lm_head(model.norm(x))[:, 0]


def _one_query_attention(q, K, V, mask) -> torch.Tensor:
    """softmax(q Kᵀ/√head_dim + Mask) V for one position's queries, written out: for so few queries the
    fused attention kernels (tiled for many queries) run several times slower than three small products.
    q: (batch, heads, r, head_dim), r query rows per key/value head (1 for GPT-2); K, V: (batch, heads,
    slots, head_dim); mask: True where a slot is visible."""
    scores = (q @ K.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (batch, heads, r, slots)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    b, heads, r, slots = weights.shape
    parts = math.gcd(slots, 16) if r > 1 else 1
    if parts == 1:
        return weights @ V  # (batch, heads, r, head_dim)
    # With r > 1 rows (a Llama group), weights @ V is one long sum per key/value head: too few products
    # to keep a GPU busy (10x the time of r = 1 on an H200). The same sum in `parts` shorter pieces is not.
    pieces = weights.view(b, heads, r, parts, slots // parts).transpose(2, 3)  # (.., parts, r, slots/parts)
    return (pieces @ V.view(b, heads, parts, slots // parts, -1)).sum(2)  # (batch, heads, r, head_dim)


class GraphedDecodeStep:
    """The decode step captured once as a CUDA graph, then replayed. Bound to one cache and one batch
    size (a graph replays fixed addresses); inputs are copied into its static tensors, and the returned
    logits are overwritten by the next replay."""

    def __init__(self, model, cache: StaticKVCache, batch: int, step=decode_static) -> None:
        self.model, self.cache, self.batch, self.step = model, cache, batch, step
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
                self.step(self.model, self.token, self.position, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.step(self.model, self.token, self.position, self.cache)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token)
        self.position.fill_(self.cache.length)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.cache.count_replayed(1, self.batch)
        return self.logits
