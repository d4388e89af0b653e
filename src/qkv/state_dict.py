"""Reading a model's weights by name (chapters 4, 7 and 8): one reader for every model shape, driven by a table.

A model shape (``qkv.gpt2``, ``qkv.llama``) is a ``Layout``: its parameter names, each with its shape in
symbols (``("V", "d")``: vocabulary × width), the stem its blocks are numbered under, and whether its
output layer must be the token embedding. ``read`` checks a mapping of names to arrays or tensors
against the table and collects every problem (missing or mis-shaped tensors, gaps in the layer numbers,
an output layer that is not what the model ties it to); the model adds its own (τ must divide the
width) and ``Reading.arrays`` raises them all in one ValueError, or returns the weights as NumPy arrays.

The sizes are read off the tensors by a vote of every tensor that carries them, so one mis-shaped
tensor is reported as mis-shaped instead of changing the model it is checked against. The reader needs
only NumPy: it reads ``.shape`` from whatever it is given, so torch tensors pass through it too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

HEAD = "lm_head.weight"  # the output layer, named alike by both models


@dataclass(frozen=True)
class Layout:
    """A model's parameters: ``top``, ``n_layer`` numbered blocks, ``final``, each a table
    name -> shape in symbols. ``symbols`` names each symbol for a message when its size is unknown;
    ``derived`` computes a symbol from the others (GPT-2's fused 3d)."""

    model: str  # the model's name, as messages show it
    prefix: str  # "transformer.", "model."
    stem: str  # the blocks' names start prefix + stem + "<layer>."
    embedding: str  # the token embedding, which a tied output layer reads
    top: dict[str, tuple[str, ...]]
    block: dict[str, tuple[str, ...]]
    final: dict[str, tuple[str, ...]]
    symbols: dict[str, str]
    derived: dict[str, Callable[[dict], int | None]] = field(default_factory=dict)
    tied_only: bool = False  # True: an lm_head that differs from the embedding cannot be loaded
    bare_names: bool = False  # True: names without the prefix are accepted (GPT2Model's)

    def layer_names(self, layer: int) -> list[str]:
        """The parameter names of block ``layer`` (counted from 0), in the table's order."""
        return [f"{self.prefix}{self.stem}{layer}.{name}" for name in self.block]

    def shapes(self, n_layer: int) -> dict[str, tuple[str, ...]]:
        """Every parameter name of the model (the output layer aside), with its shape in symbols."""
        shapes = {self.prefix + name: dims for name, dims in self.top.items()}
        for layer in range(n_layer):
            shapes.update(zip(self.layer_names(layer), self.block.values()))
        shapes.update({self.prefix + name: dims for name, dims in self.final.items()})
        return shapes

    def sized(self, n_layer: int, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape for these sizes (a model built from a config)."""
        sizes = {**sizes, **{s: f(sizes) for s, f in self.derived.items()}}
        return {name: tuple(sizes[s] for s in dims) for name, dims in self.shapes(n_layer).items()}


@dataclass
class Reading:
    """What ``read`` found: the names, the sizes read off the tensors, the blocks, whether the output
    layer is the embedding, and every problem so far (a model appends its own)."""

    layout: Layout
    state_dict: dict
    n_layer: int
    sizes: dict[str, int | None]
    tied: bool
    problems: list[str]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every parameter as a NumPy array (``lm_head.weight`` too: the embedding when tied); or one
        ValueError naming every problem."""
        if self.problems:
            raise ValueError(f"{self.layout.model} state dict does not fit the model:\n  "
                             + "\n  ".join(self.problems))
        sd = self.state_dict
        out = {name: to_numpy(sd[name]) for name in self.layout.shapes(self.n_layer)}
        embedding = self.layout.prefix + self.layout.embedding
        out[HEAD] = out[embedding] if self.tied else to_numpy(sd[HEAD])
        return out


def read(state_dict: Mapping, layout: Layout, n_layer: int | None = None) -> Reading:
    """Check ``state_dict`` against ``layout``: see the module's docstring. ``n_layer``, when
    given, is checked too (nothing else can tell that a last block is missing)."""
    sd = _names(state_dict, layout)
    n_layer, problems = _layers(sd, layout, n_layer)
    shapes = {name: tuple(int(s) for s in np.shape(value)) for name, value in sd.items()}
    sizes = _vote(shapes, layout, n_layer)

    def show(dims: tuple[str, ...]) -> str:  # a size not read off the tensors shows its name
        shown = [layout.symbols[s] if sizes[s] is None else str(sizes[s]) for s in dims]
        return f"({shown[0]},)" if len(shown) == 1 else f"({', '.join(shown)})"

    def fits(shape: tuple[int, ...], dims: tuple[str, ...]) -> bool:
        return len(shape) == len(dims) and all(sizes[s] in (None, n) for s, n in zip(dims, shape))

    for name, dims in layout.shapes(n_layer).items():
        if name not in shapes:
            problems.append(f"missing {name} (expected shape {show(dims)})")
        elif not fits(shapes[name], dims):
            problems.append(f"{name} has shape {shapes[name]}, expected {show(dims)}")
    embedding, tied = layout.prefix + layout.embedding, True
    if HEAD in shapes:
        if not fits(shapes[HEAD], ("V", "d")):
            note = f" ({layout.model} ties it to {embedding})" if layout.tied_only else ""
            problems.append(f"{HEAD} has shape {shapes[HEAD]}, expected {show(('V', 'd'))}{note}")
        elif shapes.get(embedding) == shapes[HEAD]:
            tied = _tied(sd[HEAD], sd[embedding])
            if not tied and layout.tied_only:
                problems.append(f"{HEAD} differs from {embedding}: these models tie the output "
                                "layer to the token embedding and read it for both, so an untied "
                                "lm_head cannot be loaded")
        else:
            tied = False
    return Reading(layout, sd, n_layer, sizes, tied, problems)


def _names(state_dict: Mapping, layout: Layout) -> dict:
    if not isinstance(state_dict, Mapping):
        raise TypeError("state_dict must be a mapping of parameter names to arrays, got "
                        f"{type(state_dict).__name__}")
    out = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state_dict keys must be parameter names (str), got {type(name).__name__}")
        bare = layout.bare_names and not name.startswith(layout.prefix) and name != HEAD
        out[layout.prefix + name if bare else name] = value
    return out


def _layers(sd: dict, layout: Layout, n_layer: int | None) -> tuple[int, list[str]]:
    """The number of blocks (``n_layer`` when given, else one past the highest found) and the
    problems with the layer numbers: names that are not numbers, gaps, blocks past ``n_layer``."""
    stem = layout.prefix + layout.stem
    found, problems = set(), []
    for name in sd:
        if name.startswith(stem):
            index = name[len(stem):].split(".", 1)[0]
            if index.isascii() and index.isdigit():
                found.add(int(index))
            else:
                problems.append(f"{name}: {index!r} is not a layer number (expected "
                                f"{stem}<layer>.…)")

    def blocks(layers) -> str:
        return ("block " if len(layers) == 1 else "blocks ") + ", ".join(
            f"{layout.stem}{i}" for i in layers)

    if n_layer is None:
        if not found:
            return 0, problems + [f"no transformer blocks (no '{stem}<layer>.*' tensors)"]
        n_layer, gap_word = max(found) + 1, "a gap in the layer numbers"
    else:
        extra = sorted(layer for layer in found if layer >= n_layer)
        if extra:
            problems.append(f"{blocks(extra)} found, but n_layer={n_layer} ({layout.stem}0 to "
                            f"{layout.stem}{n_layer - 1})")
        gap_word = f"n_layer={n_layer}"
    absent = sorted(set(range(n_layer)) - found)
    if absent:
        seen = ", ".join(f"{layout.stem}{i}" for i in sorted(found)) or "none"
        problems.append(f"{blocks(absent)} {'has' if len(absent) == 1 else 'have'} no tensors at "
                        f"all ({gap_word}; found {seen})")
    return n_layer, problems


def _vote(shapes: dict, layout: Layout, n_layer: int) -> dict[str, int | None]:
    """Each size by a vote of every tensor that carries it, the first one seen breaking ties."""
    votes: dict[str, Counter] = {s: Counter() for s in layout.symbols if s not in layout.derived}
    for name, dims in [*layout.shapes(n_layer).items(), (HEAD, ("V", "d"))]:
        shape = shapes.get(name)
        if shape is not None and len(shape) == len(dims):
            for symbol, size in zip(dims, shape):
                if symbol in votes and size >= 1:
                    votes[symbol][size] += 1
    sizes = {s: (c.most_common(1)[0][0] if c else None) for s, c in votes.items()}
    for symbol, compute in layout.derived.items():
        sizes[symbol] = compute(sizes)
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


def _tied(head, embedding) -> bool:
    """Whether lm_head holds the embedding's numbers: exactly, or up to rounding when one of the
    two was stored in a coarser dtype."""
    if head is embedding:
        return True
    a, b = to_numpy(head), to_numpy(embedding)
    if a.dtype == b.dtype and _itemsize(head) == _itemsize(embedding):
        return bool(np.array_equal(a, b))
    coarser = min(_itemsize(head), _itemsize(embedding))
    unit_roundoff = {2: 2.0**-8, 4: 2.0**-24}.get(coarser, 2.0**-53)  # 2 bytes: bfloat16's
    return bool(np.allclose(a, b, rtol=2 * unit_roundoff, atol=0))
