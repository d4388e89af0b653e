"""GPT-2 in PyTorch (chapter 8): its blocks and its logits, for the decoding core of ``qkv.torch_decoder``.

The same model as the NumPy ``qkv.reference.gpt2_decoder``, cut the same way (a block is attention,
then the MLP), written as a ``torch.nn.Module`` the way nanoGPT and gpt-fast write theirs: its weights
are parameters (``state_dict()``, ``.to(device)``), each linear layer is ``F.linear``, attention is
``F.scaled_dot_product_attention`` (``qkv.torch_parts.attend``), and each layer's keys and values go
into a ``StaticKVCache`` at the slots the step names.

GPT-2 stores its linear weights as Conv1D, (in, out); ``nn.Linear`` keeps (out, in), so they are
transposed once, at load.

Layouts: ids (batch, n); hidden states (batch, n, d); per-head tensors (batch, τ, n, head_dim); each
layer's cache (batch, τ, max_positions, head_dim); logits (batch, n, vocab).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from qkv.gpt2 import PREFIX, GPT2Config, layer_names, read_state_dict
from qkv.torch_cache import StaticKVCache
from qkv.torch_parts import Step, attend, load_module


class Block(nn.Module):
    """One transformer block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    # ours, in the order of qkv.gpt2.layer_names
    NAMES = ["ln_1.weight", "ln_1.bias", "c_attn.weight", "c_attn.bias", "c_proj.weight",
             "c_proj.bias", "ln_2.weight", "ln_2.bias", "c_fc.weight", "c_fc.bias",
             "mlp_proj.weight", "mlp_proj.bias"]

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        d, eps = config.n_embd, config.layer_norm_eps
        self.tau = config.n_head
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.c_attn = nn.Linear(d, 3 * d)  # [W_q | W_k | W_v]ᵀ, the τ heads side by side in each
        self.c_proj = nn.Linear(d, d)  # W_o
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.c_fc = nn.Linear(d, config.d_ff)
        self.mlp_proj = nn.Linear(config.d_ff, d)

    def attention(self, x: torch.Tensor, cache: StaticKVCache | None,
                  step: Step) -> torch.Tensor:
        """Masked multi-head self-attention of x (batch, n, d): this step's keys and
        values go into ``cache`` at ``step.slots``, and each query reads the slots
        ``step.allowed`` lets it (without a cache: the n new keys)."""
        b, n, d = x.shape
        qkv = self.c_attn(x).view(b, n, 3, self.tau, d // self.tau)  # (b, n, 3, τ, ·)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, τ, n, head_dim)
        if cache is not None:
            k, v = cache.update(step.slots, k, v)  # (batch, τ, max_positions, head_dim)
        heads = attend(q, k, v, step.allowed)  # like q
        return self.c_proj(heads.transpose(1, 2).reshape(b, n, d))  # (batch, n, d)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    def forward(self, x: torch.Tensor, cache: StaticKVCache | None, step: Step) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), cache, step)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """GPT-2's weights and its forward pass; ``qkv.torch_decoder.CachedDecoder`` decodes with it."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied output embedding, as GPT-2's

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                             dtype=torch.float32, *, n_layer: int | None = None) -> "GPT2Model":
        """Build from GPT-2 parameter names mapped to NumPy arrays or torch tensors, in GPT-2's
        Conv1D layout (in, out); see ``CachedDecoder.from_gpt2_state_dict``."""
        config, sd = read_state_dict(state_dict, n_head, n_layer)
        ours = {"wte.weight": sd[PREFIX + "wte.weight"], "wpe.weight": sd[PREFIX + "wpe.weight"],
                "ln_f.weight": sd[PREFIX + "ln_f.weight"], "ln_f.bias": sd[PREFIX + "ln_f.bias"]}
        for layer in range(config.n_layer):
            for name, theirs in zip(Block.NAMES, layer_names(layer)):
                w = sd[theirs]
                ours[f"blocks.{layer}.{name}"] = w.T if w.ndim == 2 else w  # Conv1D -> (out, in)
        return load_module(lambda: cls(config), ours, device, dtype, tie=("lm_head", "wte"))

    def forward(self, ids: torch.Tensor, cache, step: Step) -> torch.Tensor:
        """ids (batch, n) at ``step.positions`` -> logits (batch, n, vocab); ``cache``, a
        ``StaticDecoderCache`` or None, takes this step's keys and values."""
        x = self.wte(ids) + self.wpe(step.positions)  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[layer], step)
        return self.lm_head(self.ln_f(x))  # (batch, n, vocab)
