"""A Llama-shaped decoder in PyTorch with a static KV cache of n_kv_heads heads (chapter 5).

The same model as the NumPy ``qkv.reference.llama_decoder.LlamaDecoder``, and the same decoder as
``qkv.torch_decoder.CachedDecoder``: ``forward``, ``prefill``, ``decode_step`` and ``generate``
are inherited, and the cache is a ``StaticKVCache``. What changes is the block: RMSNorm, SwiGLU,
no biases, rotary positions applied to q and k before the cache, and τ query heads sharing
n_kv_heads key/value heads.

Layouts: ids (batch, n); hidden states (batch, n, d); queries (batch, τ, n, head_dim); keys,
values and each layer's cache (batch, n_kv_heads, positions, head_dim); logits (batch, n, vocab).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qkv import checks
from qkv.llama import HEAD, PREFIX, LlamaConfig, layer_names, read_state_dict
from qkv.reference.rope import _angles, rope_frequencies
from qkv.torch_cache import LayerKVCache, StaticKVCache
from qkv.torch_decoder import CachedDecoder, causal_mask


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x₁, x₂] -> [−x₂, x₁], halves of the last axis (as ``qkv.reference.rope.rotate_half``)."""
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
                  cache: LayerKVCache | None) -> torch.Tensor:
        """Self-attention of x (batch, n, d) at the positions whose angles are cos, sin
        (n, head_dim), reading the earlier positions' rotated keys from ``cache``."""
        b, n, d = x.shape
        tau, g, hd = self.tau, self.g, self.head_dim
        q, k, v = self.qkv_proj(x).split([d, g * hd, g * hd], dim=-1)
        q = q.view(b, n, tau, hd).transpose(1, 2)  # (batch, τ, n, head_dim)
        k = k.view(b, n, g, hd).transpose(1, 2)  # (batch, g, n, head_dim)
        v = v.view(b, n, g, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v)  # rotated K_{≤i}, V_{≤i}: (batch, g, i, head_dim)
        # The r = τ/g query heads of a group read one key/value head: stack them as r·n rows.
        q = q.reshape(b, g, (tau // g) * n, hd)  # (batch, g, r·n, head_dim)
        mask = causal_mask(n, k.shape[2], x.device)
        if mask is not None:
            mask = mask.repeat(tau // g, 1)  # (r·n, i)
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, g, r·n, hd)
        return self.o_proj(heads.reshape(b, tau, n, hd).transpose(1, 2).reshape(b, n, d))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # each (batch, n, d_ff)
        return self.down(F.silu(gate) * up)

    def forward(self, x, cos, sin, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm_1(x), cos, sin, cache)
        return x + self.mlp(self.norm_2(x))


class LlamaCachedDecoder(CachedDecoder):
    """A Llama-shaped model in PyTorch; the public steps are ``CachedDecoder``'s."""

    def __init__(self, config: LlamaConfig) -> None:
        nn.Module.__init__(self)  # CachedDecoder.__init__ builds GPT-2's modules: not these
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
        self.fast = False
        self._graph = None

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                              dtype=torch.float32, fast: bool = False, *,
                              n_layer: int | None = None, n_positions: int = 2048,
                              rms_norm_eps: float = 1e-6,
                              rope_base: float = 10000.0) -> "LlamaCachedDecoder":
        """Build from ``LlamaForCausalLM`` parameter names mapped to arrays or tensors
        (``qkv.llama.read_state_dict`` reads the shape and names every problem). ``device=None``
        picks CUDA when present; ``fast=True`` decodes with ``qkv.torch_fast``'s step."""
        config, sd = read_state_dict(state_dict, n_head, n_layer, n_positions=n_positions,
                                     rms_norm_eps=rms_norm_eps, rope_base=rope_base)
        device, dtype = checks.device(device), checks.float_dtype(dtype)
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
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device=device).to(dtype)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight  # to_empty unties: tie again
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(np.ascontiguousarray(ours[name])))
            theta = rope_frequencies(config.head_dim, config.rope_base)
            cos, sin = _angles(np.arange(1, config.n_positions + 1), theta)  # float64, from 1
            model.cos.copy_(torch.from_numpy(cos))
            model.sin.copy_(torch.from_numpy(sin))
        model.eval().requires_grad_(False)
        return model.compile_decode() if fast else model

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @classmethod
    def from_gpt2_state_dict(cls, *args, **kwargs):
        raise TypeError("LlamaCachedDecoder is Llama-shaped; load GPT-2 weights with "
                        "CachedDecoder.from_gpt2_state_dict")

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    _FAST_STEPS = ("decode_eager_llama", "decode_static_llama")

    def new_cache(self, batch: int = 1, max_positions: int | None = None) -> StaticKVCache:
        """An empty static cache of n_kv_heads heads per layer, (batch, n_kv_heads,
        max_positions, head_dim) each for K and V, in this decoder's dtype and device."""
        c = self.config
        max_positions = checks.cache_positions(max_positions, c.n_positions)
        return StaticKVCache(c.n_layer, batch, c.n_kv_heads, max_positions, c.head_dim,
                             self.dtype, self.device)

    def logits(self, ids: torch.Tensor, cache: StaticKVCache | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model, unchecked: ids (batch, n) at positions i+1 … i+n after the i positions in
        ``cache`` -> logits (batch, n, vocab)."""
        if mask is not None:  # a left-padded batch would need rotary positions per row
            raise ValueError("the Llama-shaped decoder takes no left padding (attention_mask with "
                             "zeros) yet: decode prompts of different lengths one at a time")
        start = 0 if cache is None else cache.length
        cos = self.cos[start : start + ids.shape[1]]  # (n, head_dim)
        sin = self.sin[start : start + ids.shape[1]]
        x = self.embed_tokens(ids)  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if cache is None else cache[layer])
        return self.lm_head(self.norm(x))  # (batch, n, vocab)
