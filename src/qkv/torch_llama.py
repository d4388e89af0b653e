"""A Llama-shaped model in PyTorch (chapters 7–8): GPT-2's sibling over the decoding core of
``qkv.torch_decoder``, with a static KV cache of n_kv_heads heads.

The same model as the NumPy ``qkv.reference.llama_decoder.LlamaModel``; ``CachedDecoder`` decodes it
as it decodes GPT-2 (``forward``, ``prefill``, ``decode_step``, ``generate``, the CUDA graph). What
this module supplies is the block: RMSNorm, SwiGLU, no biases, rotary positions applied to q and k
(at each row's own positions in a left-padded batch) before the cache, and τ query heads sharing
n_kv_heads key/value heads (``qkv.torch_parts.attend``).

Layouts: ids (batch, n); hidden states (batch, n, d); queries (batch, τ, n, head_dim); keys,
values and each layer's cache (batch, n_kv_heads, positions, head_dim); logits (batch, n, vocab).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qkv.llama import HEAD, PREFIX, LlamaConfig, layer_names, read_state_dict
from qkv.reference.rotary import _angles, rope_frequencies
from qkv.torch_cache import StaticKVCache
from qkv.torch_parts import Step, attend, load_module


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x₁, x₂] -> [−x₂, x₁], halves of the last axis (as ``qkv.reference.rotary.rotate_half``)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LlamaBlock(nn.Module):
    """x + attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); no biases."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        d, eps, head_dim = config.n_embd, config.rms_norm_eps, config.head_dim
        self.tau, self.g, self.head_dim = config.n_head, config.n_kv_heads, head_dim
        self.norm_1 = nn.RMSNorm(d, eps=eps)
        self.qkv_proj = nn.Linear(d, d + 2 * self.g * head_dim, bias=False)  # [W_q|W_k|W_v]ᵀ
        self.o_proj = nn.Linear(d, d, bias=False)
        self.norm_2 = nn.RMSNorm(d, eps=eps)
        self.gate_up = nn.Linear(d, 2 * config.d_ff, bias=False)  # [W_gate | W_up]ᵀ
        self.down = nn.Linear(config.d_ff, d, bias=False)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  cache: StaticKVCache | None, step: Step) -> torch.Tensor:
        """Self-attention of x (batch, n, d) at the positions whose angles are cos, sin
        (batch or 1, 1, n, head_dim): the rotated keys and values go into ``cache`` at
        ``step.slots``, and each query reads the slots ``step.allowed`` lets it."""
        b, n, d = x.shape
        g, hd = self.g, self.head_dim
        q, k, v = self.qkv_proj(x).split([d, g * hd, g * hd], dim=-1)
        q = q.view(b, n, self.tau, hd).transpose(1, 2)  # (batch, τ, n, head_dim)
        k = k.view(b, n, g, hd).transpose(1, 2)  # (batch, g, n, head_dim)
        v = v.view(b, n, g, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(step.slots, k, v)  # rotated keys: (batch, g, max_positions, hd)
        heads = attend(q, k, v, step.allowed)  # (batch, τ, n, head_dim)
        return self.o_proj(heads.transpose(1, 2).reshape(b, n, d))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # each (batch, n, d_ff)
        return self.down(F.silu(gate) * up)

    def forward(self, x, cos, sin, cache: StaticKVCache | None, step: Step) -> torch.Tensor:
        x = x + self.attention(self.norm_1(x), cos, sin, cache, step)
        return x + self.mlp(self.norm_2(x))


class LlamaModel(nn.Module):
    """A Llama-shaped model's weights and forward pass; ``CachedDecoder`` decodes with it."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # cos and sin of every position's angles, (n_positions, head_dim): not parameters
        self.register_buffer("cos", torch.empty(config.n_positions, config.head_dim),
                             persistent=False)
        self.register_buffer("sin", torch.empty(config.n_positions, config.head_dim),
                             persistent=False)

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                              dtype=torch.float32, *, n_layer: int | None = None,
                              n_positions: int = 2048, rms_norm_eps: float = 1e-6,
                              rope_base: float = 10000.0) -> "LlamaModel":
        """Build from ``LlamaForCausalLM`` parameter names mapped to arrays or tensors
        (``qkv.llama.read_state_dict`` reads the shape and names every problem)."""
        config, sd = read_state_dict(state_dict, n_head, n_layer, n_positions=n_positions,
                                     rms_norm_eps=rms_norm_eps, rope_base=rope_base)
        ours = {"embed_tokens.weight": sd[PREFIX + "embed_tokens.weight"],
                "norm.weight": sd[PREFIX + "norm.weight"], "lm_head.weight": sd[HEAD]}
        for layer in range(config.n_layer):
            (norm_1, q, k, v, o, norm_2, gate, up, down) = layer_names(layer)
            ours.update({f"blocks.{layer}.norm_1.weight": sd[norm_1],
                         f"blocks.{layer}.qkv_proj.weight": np.concatenate([sd[q], sd[k], sd[v]]),
                         f"blocks.{layer}.o_proj.weight": sd[o],
                         f"blocks.{layer}.norm_2.weight": sd[norm_2],
                         f"blocks.{layer}.gate_up.weight": np.concatenate([sd[gate], sd[up]]),
                         f"blocks.{layer}.down.weight": sd[down]})
        tie = ("lm_head", "embed_tokens") if config.tie_word_embeddings else None
        model = load_module(lambda: cls(config), ours, device, dtype, tie=tie)
        theta = rope_frequencies(config.head_dim, config.rope_base)
        cos, sin = _angles(np.arange(1, config.n_positions + 1), theta)  # float64, from 1
        with torch.no_grad():
            model.cos.copy_(torch.from_numpy(cos))
            model.sin.copy_(torch.from_numpy(sin))
        return model

    def forward(self, ids: torch.Tensor, cache, step: Step) -> torch.Tensor:
        """ids (batch, n) at ``step.positions`` -> logits (batch, n, vocab). No position is added
        to x: it enters as a rotation of q and k inside each block."""
        cos = self.cos[step.positions][:, None]  # (batch or 1, 1, n, head_dim)
        sin = self.sin[step.positions][:, None]
        x = self.embed_tokens(ids)  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if cache is None else cache[layer], step)
        return self.lm_head(self.norm(x))  # (batch, n, vocab)
