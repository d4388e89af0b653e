"""GPT-2 in NumPy (chapter 4): its blocks and its logits, for the decoding core of ``qkv.reference.decoder``.

Read top to bottom in the order of the computation: LayerNorm, GELU, one transformer block (attention,
then the MLP), the model. GPT-2's shape: learned position embeddings, LayerNorm before each sub-layer
(pre-LN), GELU with the tanh approximation, and an output layer tied to the token embedding. Weights
load from a Hugging Face GPT-2 state dict (``GPT2Model.from_gpt2_state_dict``, which
``Decoder.from_gpt2_state_dict`` wraps), so this model can be checked against GPT-2 itself. The torch
model of chapter 8 (``qkv.torch_gpt2``, decoded by ``qkv.torch_decoder``) is cut the same way.

Layouts: ids (batch, n); hidden states (batch, n, d); per-head tensors (batch, τ, n, head_dim); logits
(batch, n, vocab). Positions count from 1 in the course; the position table is indexed from 0 here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qkv.gpt2 import PREFIX, GPT2Config, layer_names, read_state_dict
from qkv.reference.cache import KVCache
from qkv.reference.heads import _merge_heads, _split_heads
from qkv.reference.qkv_attention import attend


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (as GPT-2 uses)."""
    # Python-float constants keep float32 input in float32 (a NumPy float64 scalar would promote it).
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dataclass
class Block:
    """One transformer block, in GPT-2's Conv1D layout: a linear layer computes x @ W + b."""

    tau: int  # heads
    eps: float  # LayerNorm's ε
    ln_1_g: np.ndarray
    ln_1_b: np.ndarray
    W_qkv: np.ndarray  # (d, 3d): [W_q | W_k | W_v], each the τ heads' projections side by side
    b_qkv: np.ndarray
    W_o: np.ndarray  # (d, d)
    b_o: np.ndarray
    ln_2_g: np.ndarray
    ln_2_b: np.ndarray
    W_fc: np.ndarray  # (d, d_ff)
    b_fc: np.ndarray
    W_out: np.ndarray  # (d_ff, d)
    b_out: np.ndarray

    def attention(self, x: np.ndarray, cache: KVCache | None,
                  mask: np.ndarray | None) -> np.ndarray:
        """Masked multi-head self-attention of x (batch, n, d), reading positions
        1…i from ``cache``. ``mask``: additive, (n, i) or (batch, 1, n, i) for a padded
        batch; None for one new query, which sees every key."""
        q, k, v = np.split(x @ self.W_qkv + self.b_qkv, 3, axis=-1)  # (batch, n, d)
        q, k, v = (_split_heads(t, self.tau) for t in (q, k, v))  # (batch, τ, n, ·)
        if cache is not None:
            k, v = cache.update(k, v)  # K_{≤i}, V_{≤i}: (batch, τ, i, head_dim)
        heads = attend(q, k, v, mask)  # (batch, τ, n, head_dim)
        return _merge_heads(heads) @ self.W_o + self.b_o  # (batch, n, d)

    def mlp(self, x: np.ndarray) -> np.ndarray:
        return gelu(x @ self.W_fc + self.b_fc) @ self.W_out + self.b_out

    def __call__(self, x: np.ndarray, cache: KVCache | None,
                 mask: np.ndarray | None) -> np.ndarray:
        normed = layer_norm(x, self.ln_1_g, self.ln_1_b, self.eps)
        x = x + self.attention(normed, cache, mask)
        return x + self.mlp(layer_norm(x, self.ln_2_g, self.ln_2_b, self.eps))


class GPT2Model:
    """GPT-2's weights and its forward pass; ``qkv.reference.Decoder`` decodes with it."""

    def __init__(self, config: GPT2Config, wte: np.ndarray, wpe: np.ndarray, blocks: list[Block],
                 ln_f_g: np.ndarray, ln_f_b: np.ndarray) -> None:
        self.config = config
        self.wte, self.wpe = wte, wpe  # (vocab, d), (n_positions, d)
        self.blocks = blocks
        self.ln_f_g, self.ln_f_b = ln_f_g, ln_f_b

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, dtype=np.float64, *,
                             n_layer: int | None = None) -> "GPT2Model":
        """Build from GPT-2 parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to
        arrays or tensors; see ``Decoder.from_gpt2_state_dict``."""
        config, sd = read_state_dict(state_dict, n_head, n_layer)

        def get(name: str) -> np.ndarray:
            return np.ascontiguousarray(sd[name], dtype=dtype)

        eps = config.layer_norm_eps
        blocks = [Block(config.n_head, eps, *(get(name) for name in layer_names(layer)))
                  for layer in range(config.n_layer)]
        return cls(config, get(PREFIX + "wte.weight"), get(PREFIX + "wpe.weight"), blocks,
                   get(PREFIX + "ln_f.weight"), get(PREFIX + "ln_f.bias"))

    @property
    def dtype(self) -> np.dtype:
        return self.wte.dtype

    def logits(self, ids: np.ndarray, cache, positions: np.ndarray,
               mask: np.ndarray | None) -> np.ndarray:
        """ids (batch, n) at the position-table rows ``positions`` (batch or 1, n),
        after the positions in ``cache`` (a ``DecoderCache`` or None) -> logits
        (batch, n, vocab). ``mask``: the additive attention mask every block uses."""
        x = self.wte[ids] + self.wpe[positions]  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[layer], mask)
        x = layer_norm(x, self.ln_f_g, self.ln_f_b, self.config.layer_norm_eps)
        return x @ self.wte.T  # tied output embedding: (batch, n, vocab)
