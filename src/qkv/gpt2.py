"""GPT-2's shape (chapters 4 and 8): its config, and its parameters by Hugging Face's names.

The NumPy and torch GPT-2 models (``qkv.reference.gpt2_model``, ``qkv.torch_gpt2``) are built from a
``GPT2Config``. Symbols (see the notation page): ``n_embd`` is the model width d, ``n_head`` is τ (the
number of heads), ``head_dim`` is d/τ, ``n_positions`` is the longest sequence the learned position
table covers.

The names and layouts are those of Hugging Face's ``GPT2LMHeadModel.state_dict()``. GPT-2 stores its
linear layers as ``Conv1D``: the weight is ``(in_features, out_features)`` and a layer computes
``x @ W + b`` on row vectors, the course's convention (vectors are rows). ``read_state_dict`` checks
them with the table-driven reader of ``qkv.state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qkv.checks import positive_int
from qkv.state_dict import HEAD, Layout, read

PREFIX = "transformer."


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # width of the MLP's hidden layer; GPT-2 uses 4 * n_embd
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            # frozen: store the plain int (an np.int64 would leak into every shape computed from it)
            value = positive_int(f"GPT2Config.{name}", getattr(self, name))
            object.__setattr__(self, name, value)
        if self.n_inner is not None:
            object.__setattr__(self, "n_inner", positive_int("GPT2Config.n_inner", self.n_inner))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "each of the τ heads needs an equal slice of the model width"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_heads(self) -> int:
        """The key/value heads a cache holds: all τ (GPT-2 shares none)."""
        return self.n_head

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    # Presets. Tests use the small ones; benchmarks the GPT-2-small shape (124M parameters).
    @classmethod
    def toy(cls) -> "GPT2Config":
        return cls(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)

    @classmethod
    def small(cls) -> "GPT2Config":
        return cls(vocab_size=256, n_positions=256, n_embd=64, n_layer=3, n_head=4)

    @classmethod
    def gpt2_small(cls) -> "GPT2Config":
        return cls()

    @classmethod
    def preset(cls, name: str) -> "GPT2Config":
        presets = {"toy": cls.toy, "small": cls.small, "gpt2-small": cls.gpt2_small}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()


# Every tensor's shape in symbols, in GPT-2's order: V = vocab_size, P = n_positions, d = n_embd (the
# model width), 3d = the fused [W_q | W_k | W_v], f = d_ff (the MLP width). Weights are Conv1D: (in, out).
LAYOUT = Layout(
    model="GPT-2", prefix=PREFIX, stem="h.", embedding="wte.weight",
    top={"wte.weight": ("V", "d"), "wpe.weight": ("P", "d")},
    block={
        "ln_1.weight": ("d",), "ln_1.bias": ("d",),
        "attn.c_attn.weight": ("d", "3d"), "attn.c_attn.bias": ("3d",),
        "attn.c_proj.weight": ("d", "d"), "attn.c_proj.bias": ("d",),
        "ln_2.weight": ("d",), "ln_2.bias": ("d",),
        "mlp.c_fc.weight": ("d", "f"), "mlp.c_fc.bias": ("f",),
        "mlp.c_proj.weight": ("f", "d"), "mlp.c_proj.bias": ("d",),
    },
    final={"ln_f.weight": ("d",), "ln_f.bias": ("d",)},
    symbols={"V": "vocab_size", "P": "n_positions", "d": "n_embd", "3d": "3·n_embd", "f": "n_inner"},
    derived={"3d": lambda s: None if s["d"] is None else 3 * s["d"]},
    tied_only=True, bare_names=True,
)


def layer_names(layer: int) -> list[str]:
    """The parameter names of block ``layer`` (counted from 0, as GPT-2's ``h.0``, ``h.1``…)."""
    return LAYOUT.layer_names(layer)


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 of this shape needs, with its shape (Conv1D layout: (in, out))."""
    sizes = {"V": config.vocab_size, "P": config.n_positions, "d": config.n_embd, "f": config.d_ff}
    return LAYOUT.sized(config.n_layer, sizes)


def read_state_dict(state_dict: Mapping, n_head: int, n_layer: int | None = None,
                    layer_norm_eps: float = 1e-5) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """The model's shape read off its tensors, and its tensors as NumPy arrays under GPT-2's names
    (``lm_head.weight`` is ``wte``); or one ValueError naming every problem (missing and mis-shaped
    tensors, gaps in the layer numbers, an untied lm_head).

    τ (``n_head``) cannot be read off the tensors, so it is given. Neither can a missing *last*
    block: pass ``n_layer`` to have it checked too. ``GPT2Model`` names (without ``transformer.``)
    are accepted; extra names (older checkpoints carry ``attn.bias`` mask buffers) are ignored.
    """
    n_head = positive_int("n_head", n_head)
    reading = read(state_dict, LAYOUT, None if n_layer is None else positive_int("n_layer", n_layer))
    d, f = reading.sizes["d"], reading.sizes["f"]
    if d is not None and d % n_head:
        reading.problems.append(f"n_head={n_head} does not divide the model width n_embd={d} read "
                                "from the tensors")
    arrays = reading.arrays()
    config = GPT2Config(vocab_size=reading.sizes["V"], n_positions=reading.sizes["P"], n_embd=d,
                        n_layer=reading.n_layer, n_head=n_head,
                        n_inner=None if f == 4 * d else f, layer_norm_eps=layer_norm_eps)
    return config, arrays


def random_state_dict(config: GPT2Config, seed: int = 0, dtype=np.float64,
                      std: float = 0.02) -> dict[str, np.ndarray]:
    """Random GPT-2 weights (no download), plus small random biases and LayerNorm gains so that
    tests also exercise those terms. ``std`` 0.02 is GPT-2's own init; tests use a larger one (e.g.
    0.2) so that greedy decoding wanders over many tokens instead of repeating one, which makes
    token-for-token checks meaningful."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.02 * rng.standard_normal(shape)
        elif name.endswith("c_proj.weight"):
            value = std / np.sqrt(2 * config.n_layer) * rng.standard_normal(shape)
        elif name.endswith("wpe.weight"):
            value = std / 2 * rng.standard_normal(shape)
        else:
            value = std * rng.standard_normal(shape)
        out[name] = value.astype(dtype)
    return out


__all__ = ["GPT2Config", "LAYOUT", "PREFIX", "HEAD", "layer_names", "expected_shapes",
           "read_state_dict", "random_state_dict"]
