"""GPT-2 parameters by name: checking a state dict, reading its shape, making random weights.

The names and layouts are those of Hugging Face's ``GPT2LMHeadModel.state_dict()``. GPT-2 stores its
linear layers as ``Conv1D``: the weight is ``(in_features, out_features)`` and a layer computes
``x @ W + b`` on row vectors, the course's convention (vectors are rows). This module needs only NumPy;
it reads ``.shape`` from whatever it is given, so torch tensors pass through its checks too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qkv.config import DecoderConfig

PREFIX = "transformer."


def layer_names(layer: int) -> list[str]:
    """The parameter names of block ``layer`` (counted from 0, as GPT-2's ``h.0``, ``h.1``…)."""
    p = f"{PREFIX}h.{layer}."
    return [
        p + "ln_1.weight", p + "ln_1.bias",
        p + "attn.c_attn.weight", p + "attn.c_attn.bias",
        p + "attn.c_proj.weight", p + "attn.c_proj.bias",
        p + "ln_2.weight", p + "ln_2.bias",
        p + "mlp.c_fc.weight", p + "mlp.c_fc.bias",
        p + "mlp.c_proj.weight", p + "mlp.c_proj.bias",
    ]


def expected_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 of this shape needs, with its shape (Conv1D layout: (in, out))."""
    d, f = config.n_embd, config.d_ff
    shapes: dict[str, tuple[int, ...]] = {
        PREFIX + "wte.weight": (config.vocab_size, d),
        PREFIX + "wpe.weight": (config.n_positions, d),
    }
    for layer in range(config.n_layer):
        names = layer_names(layer)
        dims = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, f), (f,), (f, d), (d,)]
        shapes.update(zip(names, dims))
    shapes[PREFIX + "ln_f.weight"] = (d,)
    shapes[PREFIX + "ln_f.bias"] = (d,)
    return shapes


def normalize_names(state_dict: Mapping) -> dict:
    """Accept ``GPT2LMHeadModel`` names (``transformer.h.0...``) and ``GPT2Model`` names (``h.0...``)."""
    out = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state_dict keys must be parameter names (str), got {type(name).__name__}")
        if name.startswith(PREFIX) or name == "lm_head.weight":
            out[name] = value
        else:
            out[PREFIX + name] = value
    return out


def config_from_state_dict(state_dict: Mapping, n_head: int, layer_norm_eps: float = 1e-5) -> DecoderConfig:
    """Read the model's shape off its tensors; τ (``n_head``) cannot be read off, so it is given."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to arrays, got {type(state_dict).__name__}")
    sd = normalize_names(state_dict)
    missing = [n for n in (PREFIX + "wte.weight", PREFIX + "wpe.weight") if n not in sd]
    if missing:
        raise ValueError(f"state_dict is missing {', '.join(missing)}; is it a GPT-2 state dict?")
    vocab_size, d = (int(s) for s in sd[PREFIX + "wte.weight"].shape)
    n_positions = int(sd[PREFIX + "wpe.weight"].shape[0])
    layers = {int(n.split(".")[2]) for n in sd if n.startswith(PREFIX + "h.")}
    if not layers:
        raise ValueError("state_dict has no transformer blocks (no 'transformer.h.<layer>.*' tensors)")
    n_layer = max(layers) + 1
    fc = sd.get(PREFIX + "h.0.mlp.c_fc.weight")
    n_inner = int(fc.shape[1]) if fc is not None and len(fc.shape) == 2 else None
    if not isinstance(n_head, int) or n_head < 1:
        raise ValueError(f"n_head must be a positive int, got {n_head!r}")
    if d % n_head:
        raise ValueError(f"n_head={n_head} does not divide the model width n_embd={d} read from wte.weight")
    return DecoderConfig(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=d, n_layer=n_layer, n_head=n_head,
        n_inner=None if n_inner == 4 * d else n_inner, layer_norm_eps=layer_norm_eps,
    )


def check_state_dict(state_dict: Mapping, config: DecoderConfig) -> dict:
    """Return the state dict with normalized names, or raise one ValueError naming every problem.

    Missing tensors and tensors of the wrong shape are all listed together, so a broken checkpoint is
    fixed in one go. ``lm_head.weight`` is optional (GPT-2 ties it to ``wte.weight``) but, when
    present, must equal it in shape. Extra names (older checkpoints carry ``attn.bias`` mask buffers)
    are ignored.
    """
    sd = normalize_names(state_dict)
    problems = []
    for name, shape in expected_shapes(config).items():
        if name not in sd:
            problems.append(f"missing {name} (expected shape {shape})")
        elif tuple(int(s) for s in sd[name].shape) != shape:
            problems.append(f"{name} has shape {tuple(sd[name].shape)}, expected {shape}")
    head = sd.get("lm_head.weight")
    if head is not None and tuple(head.shape) != (config.vocab_size, config.n_embd):
        problems.append(
            f"lm_head.weight has shape {tuple(head.shape)}, expected {(config.vocab_size, config.n_embd)} "
            "(GPT-2 ties it to wte.weight)"
        )
    if problems:
        raise ValueError("GPT-2 state dict does not fit the model:\n  " + "\n  ".join(problems))
    return sd


def random_state_dict(config: DecoderConfig, seed: int = 0, dtype=np.float64, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random GPT-2 weights (no download), plus small random biases and LayerNorm gains so that tests also
    exercise those terms. ``std`` 0.02 is GPT-2's own init; tests use a larger one (e.g. 0.2) so that greedy
    decoding wanders over many tokens instead of repeating one, which makes token-for-token checks meaningful."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
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
