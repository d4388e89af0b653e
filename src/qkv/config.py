"""The shape of a GPT-2-style decoder (chapters 4 and 6), shared by the NumPy and torch decoders.

Symbols (see the notation page): ``n_embd`` is the model width d, ``n_head`` is τ (the number of heads),
``head_dim`` is d/τ, ``n_positions`` is the longest sequence the learned position table covers.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv.checks import positive_int


@dataclass(frozen=True)
class DecoderConfig:
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
            value = positive_int(f"DecoderConfig.{name}", getattr(self, name))
            object.__setattr__(self, name, value)
        if self.n_inner is not None:
            object.__setattr__(self, "n_inner", positive_int("DecoderConfig.n_inner", self.n_inner))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"DecoderConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "each of the τ heads needs an equal slice of the model width"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    # Presets. Tests use the small ones; benchmarks the GPT-2-small shape (124M parameters).
    @classmethod
    def toy(cls) -> "DecoderConfig":
        return cls(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)

    @classmethod
    def small(cls) -> "DecoderConfig":
        return cls(vocab_size=256, n_positions=256, n_embd=64, n_layer=3, n_head=4)

    @classmethod
    def gpt2_small(cls) -> "DecoderConfig":
        return cls()

    @classmethod
    def preset(cls, name: str) -> "DecoderConfig":
        presets = {"toy": cls.toy, "small": cls.small, "gpt2-small": cls.gpt2_small}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()
