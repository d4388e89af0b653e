"""A Llama-shaped model (chapter 7): its shape, and its parameters by Hugging Face's names.

What makes it differ from GPT-2 (``qkv.gpt2``):

- rotary positions (``qkv.reference.rotary``) instead of a learned position table;
- RMSNorm instead of LayerNorm, a gated MLP (SwiGLU) instead of GELU, and no biases anywhere;
- grouped-query attention: τ = ``n_head`` query heads share ``n_kv_heads`` key/value heads, so the
  cache holds n_kv_heads heads, not τ (Xiao & Zhu 2025, §2.3.4);
- an output layer that may or may not be tied to the token embedding.

The names and layouts are those of ``LlamaForCausalLM.state_dict()``: linear weights are
``nn.Linear``'s (out_features, in_features). This module needs only NumPy; it reads ``.shape`` from
whatever it is given, so torch tensors pass through its checks too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qkv import checks
from qkv.state_dict import HEAD, Layout, read

PREFIX = "model."

# Every tensor's shape in symbols: V = vocab_size, d = n_embd, f = d_ff (the MLP width),
# kv = n_kv_heads · head_dim. nn.Linear layout: (out, in).
LAYOUT = Layout(
    model="Llama", prefix=PREFIX, stem="layers.", embedding="embed_tokens.weight",
    top={"embed_tokens.weight": ("V", "d")},
    block={
        "input_layernorm.weight": ("d",),
        "self_attn.q_proj.weight": ("d", "d"),
        "self_attn.k_proj.weight": ("kv", "d"),
        "self_attn.v_proj.weight": ("kv", "d"),
        "self_attn.o_proj.weight": ("d", "d"),
        "post_attention_layernorm.weight": ("d",),
        "mlp.gate_proj.weight": ("f", "d"),
        "mlp.up_proj.weight": ("f", "d"),
        "mlp.down_proj.weight": ("d", "f"),
    },
    final={"norm.weight": ("d",)},
    symbols={"V": "vocab_size", "d": "hidden_size", "f": "intermediate_size",
             "kv": "n_kv_heads·head_dim"},
)


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-shaped decoder. ``n_head`` is τ, ``n_kv_heads`` the key/value heads
    (τ: multi-head, 1: multi-query, between: grouped-query); ``n_positions`` is the longest
    sequence the model is meant for (RoPE itself has no table that runs out)."""

    vocab_size: int = 32000
    n_positions: int = 2048
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_heads: int = 3
    d_ff: int = 2048
    rms_norm_eps: float = 1e-6
    rope_base: float = 10000.0
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_kv_heads",
                     "d_ff"):
            value = checks.positive_int(f"LlamaConfig.{name}", getattr(self, name))
            object.__setattr__(self, name, value)
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"LlamaConfig: n_embd={self.n_embd} must split into n_head="
                             f"{self.n_head} heads of an even width (RoPE turns pairs)")
        checks.kv_heads_divide(self.n_head, self.n_kv_heads, "LlamaConfig")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def group_size(self) -> int:
        """τ / n_kv_heads: the query heads that read one key/value head."""
        return self.n_head // self.n_kv_heads

    # Presets. Tests use the tiny one; the benchmark one is about GPT-2 small's size.
    @classmethod
    def tiny(cls, n_kv_heads: int = 2) -> "LlamaConfig":
        return cls(vocab_size=97, n_positions=128, n_embd=64, n_layer=2, n_head=8,
                   n_kv_heads=n_kv_heads, d_ff=96)

    @classmethod
    def gpt2_small_size(cls, n_kv_heads: int = 3) -> "LlamaConfig":
        """12 layers of width 768 with 12 query heads, 2,048 positions, a 32,000-token vocabulary:
        about 110 M parameters at n_kv_heads = 3 (GPT-2 small: 124 M)."""
        return cls(n_kv_heads=n_kv_heads)


def layer_names(layer: int) -> list[str]:
    """The parameter names of block ``layer`` (counted from 0, as ``model.layers.0``…)."""
    return LAYOUT.layer_names(layer)


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor this shape needs (lm_head too, unless tied), with its (out, in) shape."""
    sizes = {"V": config.vocab_size, "d": config.n_embd, "f": config.d_ff,
             "kv": config.n_kv_heads * config.head_dim}
    shapes = LAYOUT.sized(config.n_layer, sizes)
    if not config.tie_word_embeddings:
        shapes[HEAD] = (config.vocab_size, config.n_embd)
    return shapes


def read_state_dict(state_dict: Mapping, n_head: int, n_layer: int | None = None, *,
                    n_positions: int = 2048, rms_norm_eps: float = 1e-6,
                    rope_base: float = 10000.0) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """The model's shape read off its tensors, and the tensors as NumPy arrays under
    ``LlamaForCausalLM``'s names (``lm_head.weight`` is the embedding when tied); or one ValueError
    naming every problem (missing or mis-shaped tensors, gaps in the layers, key/value heads that
    do not divide τ), from the reader GPT-2 uses too (``qkv.state_dict``).

    Read from the weights: vocab_size, n_embd, d_ff, n_layer, n_kv_heads (k_proj's rows over
    head_dim) and whether lm_head is tied (absent, or equal to embed_tokens). Given: τ = ``n_head``,
    and what no tensor holds (``n_positions``, ``rms_norm_eps``, ``rope_base``).
    """
    n_head = checks.positive_int("n_head", n_head)
    reading = read(state_dict, LAYOUT,
                   None if n_layer is None else checks.positive_int("n_layer", n_layer))
    d, kv = reading.sizes["d"], reading.sizes["kv"]
    n_kv_heads = None
    if d is not None and (d % n_head or (d // n_head) % 2):
        reading.problems.append(f"n_head={n_head} must split the width hidden_size={d} read from "
                                "the tensors into heads of an even width")
    elif d is not None and kv is not None:
        head_dim = d // n_head
        n_kv_heads = kv // head_dim
        if kv % head_dim or n_kv_heads == 0 or n_head % n_kv_heads:
            reading.problems.append(f"k_proj/v_proj have {kv} rows: with n_head={n_head} (head_dim="
                                    f"{head_dim}) that is not a whole number of key/value heads "
                                    "dividing n_head")
    arrays = reading.arrays()
    config = LlamaConfig(vocab_size=reading.sizes["V"], n_positions=n_positions, n_embd=d,
                         n_layer=reading.n_layer, n_head=n_head, n_kv_heads=n_kv_heads,
                         d_ff=reading.sizes["f"], rms_norm_eps=rms_norm_eps, rope_base=rope_base,
                         tie_word_embeddings=reading.tied)
    return config, arrays


def random_state_dict(config: LlamaConfig, seed: int = 0, dtype=np.float32,
                      std: float = 0.02) -> dict[str, np.ndarray]:
    """Random Llama weights (no download), with RMSNorm gains near 1 so tests exercise them too."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            value = std / np.sqrt(2 * config.n_layer) * rng.standard_normal(shape)
        else:
            value = std * rng.standard_normal(shape)
        out[name] = value.astype(dtype)
    return out
