"""Rotary position embeddings, RoPE (chapter 7): positions written into queries and keys by rotation.

A learned position table (GPT-2) adds a vector to the input. RoPE instead rotates each query and key
by an angle proportional to its position (Su et al. 2021, RoFormer; the textbook's related card).
Head dimensions are taken in pairs; pair j (j = 0 … head_dim/2 − 1, Python's count) turns at the
frequency θ_j = base^(−2j/head_dim), so at position i (counted from 1) it is rotated by (i − 1)·θ_j.

Two facts make RoPE fit a KV cache:

1. a key is rotated once, when it is computed, by its own position; the cache stores it already
   rotated and never touches it again;
2. the score of a rotated query at position i with a rotated key at position j depends on i − j only:
   rope(q, i) · rope(k, j) = rope(q, i − j + 1) · rope(k, 1).

The pairs follow Hugging Face Llama's layout (``rotate_half``): pair j is dimensions j and
j + head_dim/2, not 2j and 2j + 1, so weights from a ``LlamaForCausalLM`` load unchanged.

Layout: x is (..., positions, head_dim); the angles are (positions, head_dim).
"""

from __future__ import annotations

import numpy as np

from qkv import checks


def rope_frequencies(head_dim: int, base: float = 10000.0) -> np.ndarray:
    """θ_j = base^(−2j/head_dim) for j = 0 … head_dim/2 − 1: (head_dim/2,)."""
    head_dim = checks.positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}")
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)):
        raise TypeError(f"base must be a number > 1 (Llama uses 10000.0), got {base!r} "
                        f"(of type {type(base).__name__})")
    if not base > 1:  # NaN too
        raise ValueError(f"base must be a number > 1 (Llama uses 10000.0), got {base!r}")
    return float(base) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope_angles(positions, head_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotation at each position (counted from 1): each (n, head_dim),
    the half-width angles repeated once, as ``rotate_half`` expects."""
    positions = checks.positions(positions)
    theta = rope_frequencies(head_dim, base)
    return _angles(positions, theta)


def _angles(positions: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Course positions count from 1; the angle at position i is (i − 1)·θ_j, so position 1 is
    # not rotated (Hugging Face counts positions from 0 and rotates position p by p·θ_j).
    angle = np.outer(positions - 1, theta)  # (n, head_dim/2)
    angle = np.concatenate([angle, angle], axis=-1)  # (n, head_dim)
    return np.cos(angle), np.sin(angle)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[x₁, x₂] -> [−x₂, x₁], halves of the last axis: every pair turned by 90°."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x, positions, base: float = 10000.0) -> np.ndarray:
    """x (..., n, head_dim) rotated as the n positions given (from 1, one per row)."""
    x = checks.float_array("x", x)
    checks.ndim_at_least("x", x, 2, "(..., positions, head_dim)")
    cos, sin = rope_angles(positions, x.shape[-1], base)
    if cos.shape[0] != x.shape[-2]:
        raise ValueError(f"x has {x.shape[-2]} positions (rows) but {cos.shape[0]} positions "
                         "were given")
    return apply_rope(x, cos.astype(x.dtype), sin.astype(x.dtype))


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Unchecked: x (..., n, head_dim) turned by the angles of ``rope_angles``,
    (n, head_dim): each pair (x_j, x_{j+head_dim/2}) turned as a complex number."""
    return x * cos + rotate_half(x) * sin
