"""A Llama-shaped model in NumPy: grouped-query attention, rotary positions, RMSNorm, SwiGLU
(chapter 7).

GPT-2's sibling (``qkv.reference.gpt2_decoder``): the same decoding core decodes both
(``qkv.reference.decoder``: one cache per layer, ``forward``, ``prefill``, ``decode_step``,
``generate``); this module supplies the blocks today's models use and the logits. Read top to
bottom: RMSNorm, SwiGLU, attention with shared key/value heads, the block, the model. Weights load
from a Hugging Face ``LlamaForCausalLM`` state dict (``LlamaModel.from_llama_state_dict``, which
``Decoder.from_llama_state_dict`` wraps).

Two things differ from GPT-2 where the cache is concerned:

- the keys are rotated by their position (``qkv.reference.rotary``; each row's own positions in a
  left-padded batch) *before* they go into the cache, so the cache holds rotated keys and a decode
  step rotates only the new query and key;
- the cache holds n_kv_heads key/value heads, not τ: query head h (from 1) reads key/value head
  ⌈h·g/τ⌉ with g = n_kv_heads, so it is τ/g times smaller than a multi-head cache (§2.3.4).

Layouts: ids (batch, n); hidden states (batch, n, d); queries (batch, τ, n, head_dim); keys and
values, and each layer's cache, (batch, n_kv_heads, positions, head_dim); logits (batch, n, vocab).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qkv.llama import HEAD, PREFIX, LlamaConfig, layer_names, read_state_dict
from qkv.reference.cache import KVCache
from qkv.reference.heads import _split_heads
from qkv.reference.qkv_attention import _softmax
from qkv.reference.rotary import _angles, apply_rope, rope_frequencies


def rms_norm(x: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """x / √(mean(x²) + ε) · gain: LayerNorm without the mean and without a bias."""
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * gain


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def linear(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x W for x (..., in) and W (in, out): every row of x in one matrix product."""
    # On (batch, n, in), NumPy's @ runs one product per batch row, each reading all W.
    rows = x.reshape(-1, x.shape[-1]) @ W  # (batch·n, out)
    return rows.reshape(*x.shape[:-1], W.shape[-1])


def grouped_attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask) -> np.ndarray:
    """Softmax(Q Kᵀ/√(d/τ) + Mask) V for q (batch, τ, n, head_dim) against k, v
    (batch, g, i, head_dim), unchecked.

    The r = τ/g query heads of a group read the same key/value head, so they are
    stacked as r·n query rows of it (the keys are not copied).
    ``mask``: additive, (n, i) or (batch, 1, n, i), or None. Returns like q.
    """
    b, tau, n, head_dim = q.shape
    g = k.shape[1]
    # (batch, g, r·n, head_dim): query head h (from 0) lands in group h // r
    q = q.reshape(b, g, (tau // g) * n, head_dim)
    # Q Kᵀ as (K Qᵀ)ᵀ copied to rows: OpenBLAS is ~1.5x faster with K untransposed
    scores = np.swapaxes(k @ np.swapaxes(q, -1, -2), -1, -2).copy()  # (b, g, r·n, i)
    scores = scores / math.sqrt(head_dim)
    if mask is not None:
        scores = scores + np.tile(mask, (tau // g, 1))  # (…, r·n, i): one per member
    return (_softmax(scores) @ v).reshape(b, tau, n, head_dim)


@dataclass
class LlamaBlock:
    """One block: x + attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)).
    Weights are stored as (in, out)."""

    tau: int  # query heads
    g: int  # key/value heads, n_kv_heads
    eps: float  # RMSNorm's ε
    norm_1: np.ndarray  # (d,)
    W_qkv: np.ndarray  # (d, d + 2·g·head_dim): [W_q | W_k | W_v]
    W_o: np.ndarray  # (d, d)
    norm_2: np.ndarray  # (d,)
    W_gate_up: np.ndarray  # (d, 2·d_ff): [W_gate | W_up]
    W_down: np.ndarray  # (d_ff, d)

    def attention(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                  cache: KVCache | None, mask: np.ndarray | None) -> np.ndarray:
        """Self-attention of x (batch, n, d) at the positions whose angles are
        cos, sin (batch or 1, 1, n, head_dim), reading earlier positions' rotated keys
        from ``cache``; ``mask`` as ``grouped_attend`` takes it."""
        d = x.shape[-1]
        head_dim = d // self.tau
        q, k, v = np.split(linear(x, self.W_qkv), [d, d + self.g * head_dim], axis=-1)
        q = apply_rope(_split_heads(q, self.tau), cos, sin)  # (batch, τ, n, head_dim)
        k = apply_rope(_split_heads(k, self.g), cos, sin)  # (batch, g, n, head_dim)
        v = _split_heads(v, self.g)
        if cache is not None:
            k, v = cache.update(k, v)  # rotated K_{≤i}, V_{≤i}: (batch, g, i, ·)
        heads = grouped_attend(q, k, v, mask)  # (batch, τ, n, head_dim)
        heads = np.swapaxes(heads, 1, 2).reshape(x.shape)  # (batch, n, d)
        return linear(heads, self.W_o)

    def mlp(self, x: np.ndarray) -> np.ndarray:
        gate, up = np.split(linear(x, self.W_gate_up), 2, axis=-1)  # (batch, n, d_ff)
        return linear(silu(gate) * up, self.W_down)

    def __call__(self, x, cos, sin, cache: KVCache | None, mask) -> np.ndarray:
        x = x + self.attention(rms_norm(x, self.norm_1, self.eps), cos, sin, cache, mask)
        return x + self.mlp(rms_norm(x, self.norm_2, self.eps))


class LlamaModel:
    """A Llama-shaped model's weights and forward pass; ``qkv.reference.Decoder`` decodes with it,
    its cache one ``KVCache`` per layer holding (batch, n_kv_heads, i, head_dim) rotated keys and
    values."""

    def __init__(self, config: LlamaConfig, embed: np.ndarray, blocks: list[LlamaBlock],
                 norm: np.ndarray, lm_head: np.ndarray) -> None:
        self.config = config
        self.embed = embed  # (vocab, d)
        self.blocks = blocks
        self.norm = norm  # (d,)
        self.lm_head = lm_head  # (d, vocab): the output layer as (in, out)
        positions = np.arange(1, config.n_positions + 1)  # counted from 1
        theta = rope_frequencies(config.head_dim, config.rope_base)
        cos, sin = _angles(positions, theta)  # (n_positions, head_dim), computed in float64
        self.cos, self.sin = cos.astype(embed.dtype), sin.astype(embed.dtype)

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, dtype=np.float64, *,
                              n_layer: int | None = None, n_positions: int = 2048,
                              rms_norm_eps: float = 1e-6,
                              rope_base: float = 10000.0) -> "LlamaModel":
        """Build from ``LlamaForCausalLM`` parameter names mapped to arrays or tensors.

        τ = ``n_head`` is given; n_kv_heads, the widths, the layers and a tied output layer are
        read from the weights (``qkv.llama.read_state_dict``, which names every problem in one
        ValueError). The rest is what no tensor holds, with Llama's defaults.
        """
        config, sd = read_state_dict(state_dict, n_head, n_layer, n_positions=n_positions,
                                     rms_norm_eps=rms_norm_eps, rope_base=rope_base)

        def get(name: str) -> np.ndarray:
            return np.ascontiguousarray(sd[name], dtype=dtype)

        def t(*names: str) -> np.ndarray:  # nn.Linear's (out, in), side by side as (in, Σ out)
            return np.ascontiguousarray(np.concatenate([sd[n] for n in names]).T, dtype=dtype)

        blocks = []
        for layer in range(config.n_layer):
            (norm_1, q, k, v, o, norm_2, gate, up, down) = layer_names(layer)
            blocks.append(LlamaBlock(config.n_head, config.n_kv_heads, config.rms_norm_eps,
                                     get(norm_1), t(q, k, v), t(o), get(norm_2), t(gate, up),
                                     t(down)))
        return cls(config, get(PREFIX + "embed_tokens.weight"), blocks,
                   get(PREFIX + "norm.weight"), t(HEAD))

    @property
    def dtype(self) -> np.dtype:
        return self.embed.dtype

    def logits(self, ids: np.ndarray, cache, positions: np.ndarray,
               mask: np.ndarray | None) -> np.ndarray:
        """ids (batch, n) at ``positions`` (batch or 1, n; counted from 0, each row's own in a
        padded batch), after the positions in ``cache`` -> logits (batch, n, vocab). No position
        is added to x: it enters as a rotation of q and k inside each block."""
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (·, 1, n, hd)
        x = self.embed[ids]  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if cache is None else cache[layer], mask)
        return linear(rms_norm(x, self.norm, self.config.rms_norm_eps), self.lm_head)
