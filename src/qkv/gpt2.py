"""GPT-2 parameters by name (chapters 4 and 6): checking a state dict, reading its shape, random weights.

The names and layouts are those of Hugging Face's ``GPT2LMHeadModel.state_dict()``. GPT-2 stores its
linear layers as ``Conv1D``: the weight is ``(in_features, out_features)`` and a layer computes
``x @ W + b`` on row vectors, the course's convention (vectors are rows). This module needs only NumPy;
it reads ``.shape`` from whatever it is given, so torch tensors pass through its checks too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from qkv.checks import positive_int
from qkv.config import DecoderConfig

PREFIX = "transformer."
HEAD = "lm_head.weight"

# Every tensor's shape in symbols, in GPT-2's order: V = vocab_size, P = n_positions, d = n_embd (the model
# width), 3d = the fused [W_q | W_k | W_v], f = d_ff (the MLP width). Weights are Conv1D: (in, out).
_TOP = {"wte.weight": ("V", "d"), "wpe.weight": ("P", "d")}
_BLOCK = {
    "ln_1.weight": ("d",), "ln_1.bias": ("d",),
    "attn.c_attn.weight": ("d", "3d"), "attn.c_attn.bias": ("3d",),
    "attn.c_proj.weight": ("d", "d"), "attn.c_proj.bias": ("d",),
    "ln_2.weight": ("d",), "ln_2.bias": ("d",),
    "mlp.c_fc.weight": ("d", "f"), "mlp.c_fc.bias": ("f",),
    "mlp.c_proj.weight": ("f", "d"), "mlp.c_proj.bias": ("d",),
}
_FINAL = {"ln_f.weight": ("d",), "ln_f.bias": ("d",)}
_SYMBOL_NAMES = {"V": "vocab_size", "P": "n_positions", "d": "n_embd", "3d": "3·n_embd", "f": "n_inner"}


def layer_names(layer: int) -> list[str]:
    """The parameter names of block ``layer`` (counted from 0, as GPT-2's ``h.0``, ``h.1``…)."""
    return [f"{PREFIX}h.{layer}.{name}" for name in _BLOCK]


def named_shapes(prefix: str, top: dict, block: dict, final: dict, names_of_layer, n_layer: int
                 ) -> dict[str, tuple[str, ...]]:
    """Every parameter name of a model laid out as ``top``, ``n_layer`` blocks, ``final`` (each a table
    name -> symbolic shape; ``names_of_layer(k)`` names block k's), in that order. Shared with
    ``qkv.llama``."""
    shapes = {prefix + name: dims for name, dims in top.items()}
    for layer in range(n_layer):
        shapes.update(zip(names_of_layer(layer), block.values()))
    shapes.update({prefix + name: dims for name, dims in final.items()})
    return shapes


def _symbolic_shapes(n_layer: int) -> dict[str, tuple[str, ...]]:
    return named_shapes(PREFIX, _TOP, _BLOCK, _FINAL, layer_names, n_layer)


def _sizes(config: DecoderConfig) -> dict[str, int]:
    d = config.n_embd
    return {"V": config.vocab_size, "P": config.n_positions, "d": d, "3d": 3 * d, "f": config.d_ff}


def expected_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 of this shape needs, with its shape (Conv1D layout: (in, out))."""
    sizes = _sizes(config)
    return {name: tuple(sizes[s] for s in dims) for name, dims in _symbolic_shapes(config.n_layer).items()}


def normalize_names(state_dict: Mapping) -> dict:
    """Accept ``GPT2LMHeadModel`` names (``transformer.h.0...``) and ``GPT2Model`` names (``h.0...``)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to arrays, got {type(state_dict).__name__}")
    out = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state_dict keys must be parameter names (str), got {type(name).__name__}")
        if name.startswith(PREFIX) or name == HEAD:
            out[name] = value
        else:
            out[PREFIX + name] = value
    return out


# --- checking -------------------------------------------------------------------------------------------
def _shape(value) -> tuple[int, ...]:
    return tuple(int(s) for s in np.shape(value))  # np.shape reads .shape first, so tensors stay put


def _blocks(layers: list[int]) -> str:
    return ("block " if len(layers) == 1 else "blocks ") + ", ".join(f"h.{i}" for i in layers)


def _layers(sd: dict, n_layer: int | None) -> tuple[int, list[str]]:
    """The number of blocks (``n_layer`` when given, else one past the highest ``h.<layer>`` found) and the
    problems with the layer numbers: names that are not numbers, gaps, blocks past ``n_layer``."""
    found, problems = set(), []
    for name in sd:
        if name.startswith(PREFIX + "h."):
            index = name[len(PREFIX + "h."):].split(".", 1)[0]
            if index.isascii() and index.isdigit():
                found.add(int(index))
            else:
                problems.append(f"{name}: {index!r} is not a layer number (expected {PREFIX}h.<layer>.…)")
    if n_layer is None:
        if not found:
            problems.append(f"no transformer blocks (no '{PREFIX}h.<layer>.*' tensors)")
            return 0, problems
        n_layer = max(found) + 1
        gap_word = "a gap in the layer numbers"
    else:
        extra = sorted(layer for layer in found if layer >= n_layer)
        if extra:
            problems.append(f"{_blocks(extra)} found, but n_layer={n_layer} (h.0 to h.{n_layer - 1})")
        gap_word = f"n_layer={n_layer}"
    absent = sorted(set(range(n_layer)) - found)
    if absent:
        problems.append(f"{_blocks(absent)} {'has' if len(absent) == 1 else 'have'} no tensors at all "
                        f"({gap_word}; found {', '.join(f'h.{i}' for i in sorted(found)) or 'none'})")
    return n_layer, problems


def _infer_sizes(shapes: dict[str, tuple[int, ...]], n_layer: int) -> dict[str, int | None]:
    """Each size (V, P, d, f) by a vote of every tensor that carries it, the first one seen breaking ties:
    one mis-shaped tensor is then reported as mis-shaped, instead of changing the model it is checked against."""
    votes: dict[str, Counter] = {s: Counter() for s in ("V", "P", "d", "f")}
    for name, dims in [*_symbolic_shapes(n_layer).items(), (HEAD, ("V", "d"))]:
        shape = shapes.get(name)
        if shape is not None and len(shape) == len(dims):
            for symbol, size in zip(dims, shape):
                if symbol in votes and size >= 1:
                    votes[symbol][size] += 1
    sizes = {s: (c.most_common(1)[0][0] if c else None) for s, c in votes.items()}
    sizes["3d"] = None if sizes["d"] is None else 3 * sizes["d"]
    return sizes


def to_numpy(value) -> np.ndarray:
    """An array or a torch tensor (on any device, bfloat16 included) as a NumPy array: the one
    conversion both decoders load their weights through."""
    if hasattr(value, "detach"):  # a torch tensor: read it without importing torch
        value = value.detach().cpu()
        if not value.is_floating_point() or value.element_size() >= 4:
            return value.numpy()
        return value.float().numpy()  # bfloat16 has no NumPy dtype
    return np.asarray(value)


def _itemsize(value) -> int:
    return value.element_size() if hasattr(value, "element_size") else np.asarray(value).dtype.itemsize


def _tied(head, wte) -> bool:
    """Whether lm_head holds the same numbers as wte: exactly, or up to rounding when one of the two was
    stored in a coarser dtype."""
    if head is wte:
        return True
    a, b = to_numpy(head), to_numpy(wte)
    if a.dtype == b.dtype and _itemsize(head) == _itemsize(wte):
        return bool(np.array_equal(a, b))
    coarser = min(_itemsize(head), _itemsize(wte))
    unit_roundoff = {2: 2.0**-8, 4: 2.0**-24}.get(coarser, 2.0**-53)  # 2 bytes: bfloat16's, the coarser half
    return bool(np.allclose(a, b, rtol=2 * unit_roundoff, atol=0))


def _tensor_problems(sd: dict, sizes: dict[str, int | None], n_layer: int) -> list[str]:
    """Every missing or mis-shaped tensor, and an lm_head that is not wte."""
    shapes = {name: _shape(value) for name, value in sd.items()}

    def show(dims: tuple[str, ...]) -> str:  # a size that could not be read off the tensors shows its name
        shown = [_SYMBOL_NAMES[s] if sizes[s] is None else str(sizes[s]) for s in dims]
        return f"({shown[0]},)" if len(shown) == 1 else f"({', '.join(shown)})"

    def fits(shape: tuple[int, ...], dims: tuple[str, ...]) -> bool:
        return len(shape) == len(dims) and all(sizes[s] in (None, n) for s, n in zip(dims, shape))

    problems = []
    for name, dims in _symbolic_shapes(n_layer).items():
        if name not in shapes:
            problems.append(f"missing {name} (expected shape {show(dims)})")
        elif not fits(shapes[name], dims):
            problems.append(f"{name} has shape {shapes[name]}, expected {show(dims)}")
    if HEAD in shapes:
        wte = PREFIX + "wte.weight"
        if not fits(shapes[HEAD], ("V", "d")):
            problems.append(f"{HEAD} has shape {shapes[HEAD]}, expected {show(('V', 'd'))} "
                            f"(GPT-2 ties it to {wte})")
        elif wte in shapes and shapes[wte] == shapes[HEAD] and not _tied(sd[HEAD], sd[wte]):
            problems.append(f"{HEAD} differs from {wte}: these models tie the output layer to the token "
                            "embedding and read wte for both, so an untied lm_head cannot be loaded")
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("GPT-2 state dict does not fit the model:\n  " + "\n  ".join(problems))


def read_state_dict(state_dict: Mapping, n_head: int, n_layer: int | None = None,
                    layer_norm_eps: float = 1e-5) -> tuple[DecoderConfig, dict]:
    """The model's shape read off its tensors, and the state dict with normalized names and NumPy arrays
    (``to_numpy``); or one ValueError naming every problem (missing and mis-shaped tensors, gaps in the layer numbers, an untied lm_head).

    τ (``n_head``) cannot be read off the tensors, so it is given. Neither can a missing *last* block: pass
    ``n_layer`` to have it checked too. Extra names (older checkpoints carry ``attn.bias`` mask buffers) are
    ignored.
    """
    sd = normalize_names(state_dict)
    n_head = positive_int("n_head", n_head)
    n_layer, problems = _layers(sd, None if n_layer is None else positive_int("n_layer", n_layer))
    sizes = _infer_sizes({name: _shape(value) for name, value in sd.items()}, n_layer)
    problems += _tensor_problems(sd, sizes, n_layer)
    d = sizes["d"]
    if d is not None and d % n_head:
        problems.append(f"n_head={n_head} does not divide the model width n_embd={d} read from the tensors")
    _raise_if(problems)
    config = DecoderConfig(
        vocab_size=sizes["V"], n_positions=sizes["P"], n_embd=d, n_layer=n_layer, n_head=n_head,
        n_inner=None if sizes["f"] == 4 * d else sizes["f"], layer_norm_eps=layer_norm_eps,
    )
    return config, {name: to_numpy(sd[name]) for name in _symbolic_shapes(n_layer)}


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
