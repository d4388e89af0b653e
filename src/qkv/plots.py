"""Figure helpers for the book (chapters 1–3): each draws on a matplotlib Axes the caller owns.

Only the book and the grading report draw figures; the NumPy reference itself never imports matplotlib.
"""

from __future__ import annotations

import numpy as np


def heatmap(ax, weights, *, queries=None, keys=None, title: str = "", annotate: bool = True):
    """Attention weights α (m queries × n keys) as a heat map: a row per query, a column per key.

    Masked entries (weight 0 above the diagonal) are drawn like any other zero. Returns the image.
    """
    weights = np.asarray(weights, dtype=float)
    m, n = weights.shape
    image = ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), keys if keys is not None else [str(j) for j in range(1, n + 1)], rotation=45,
                  ha="right")
    ax.set_yticks(range(m), queries if queries is not None else [str(i) for i in range(1, m + 1)])
    ax.set_xlabel("key (attended-to position)")
    ax.set_ylabel("query (attending position)")
    if title:
        ax.set_title(title)
    if annotate and m * n <= 100:
        for r in range(m):
            for c in range(n):
                w = weights[r, c]
                ax.text(c, r, f"{w:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if w > 0.6 else "black")
    return image


def vectors_2d(ax, vectors, *, labels=None, colors=None, widths=None, origin=(0.0, 0.0)):
    """Draw 2-d row vectors as arrows from ``origin``; ``widths`` scales each arrow's thickness."""
    vectors = np.asarray(vectors, dtype=float)
    ox, oy = origin
    for r, (x, y) in enumerate(vectors):
        width = 0.008 if widths is None else 0.004 + 0.02 * widths[r]
        color = None if colors is None else colors[r]
        ax.quiver(ox, oy, x - ox, y - oy, angles="xy", scale_units="xy", scale=1, width=width, color=color)
        if labels is not None:
            ax.annotate(labels[r], (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("coordinate 1")
    ax.set_ylabel("coordinate 2")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
