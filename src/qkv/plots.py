"""Figure helpers for the book (chapters 1–8): each draws on a matplotlib Axes the caller owns.

Only the book and the grading report draw figures; the NumPy reference itself never imports matplotlib.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle


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


# Colours shared by the cache figures (chapters 5–7): a pair kept from earlier steps, a pair
# computed at this step, a pair dropped from a window.
KEPT, NEW, DROPPED = "0.7", "tab:orange", "white"


def cache_grid(ax, stored, new, *, tau: int, n_positions: int, title: str = "", dropped=()):
    """One panel of a cache picture: a row per head h, a column per position j (both from 1).

    ``stored`` is a set of (j, h) pairs the cache holds; those in ``new`` are drawn as computed at this
    step, the rest as kept from earlier steps; (j, h) in ``dropped`` are hatched (held once, not now).
    Returns the grid drawn, (tau, n_positions): 0 empty, 1 kept, 2 new, 3 dropped.
    """
    grid = np.zeros((tau, n_positions), dtype=int)
    for j, h in dropped:
        grid[h - 1, j - 1] = 3
    for j, h in stored:
        grid[h - 1, j - 1] = 2 if (j, h) in new else 1
    cmap = ListedColormap(["white", KEPT, NEW, DROPPED])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=3)
    for h, j in zip(*np.nonzero(grid == 3)):
        ax.add_patch(_hatched(j, h))
    ax.set_xticks(range(n_positions), range(1, n_positions + 1))
    ax.set_yticks(range(tau), range(1, tau + 1))
    ax.set_xticks(np.arange(-0.5, n_positions), minor=True)
    ax.set_yticks(np.arange(-0.5, tau), minor=True)
    ax.grid(which="minor", color="k", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("position j")
    ax.set_ylabel("head h")
    if title:
        ax.set_title(title)
    return grid


def _hatched(col: int, row: int):
    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.5",
                     linewidth=0)


def decoder_diagram(ax, n_layer: int = 2) -> dict[str, tuple[float, float]]:
    """A GPT-2-shaped decoder as boxes and arrows, input at the bottom, scores at the top: the
    embeddings, ``n_layer`` pre-LN blocks (each with its cache beside its attention), the final
    LayerNorm and the tied output layer. Returns the centre (x, y) of every box, by name."""
    centres: dict[str, tuple[float, float]] = {}
    width, height, step = 4.6, 0.62, 0.95

    def box(name, text, y, x=0.0, w=width, color="white", size=9):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - height / 2), w, height,
                                    boxstyle="round,pad=0.04,rounding_size=0.12",
                                    facecolor=color, edgecolor="k", linewidth=1))
        ax.text(x, y, text, ha="center", va="center", fontsize=size)
        centres[name] = (x, y)

    def arrow(a, b, text="", side=0.0):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="-|>", color="k", lw=1))
        if text:
            ax.text((a[0] + b[0]) / 2 + side, (a[1] + b[1]) / 2, text, ha="center", va="center",
                    fontsize=8, backgroundcolor="white")

    def adder(name, y):
        ax.add_patch(Circle((0, y), 0.2, facecolor="white", edgecolor="k"))
        ax.text(0, y, "+", ha="center", va="center", fontsize=11)
        centres[name] = (0.0, y)

    y = 0.0
    box("tokens", "tokens $t_1 \\dots t_i$", y, color="0.93")
    y += step
    box("embed", "token + position embedding: $\\mathbf{x}_j = \\mathbf{E}[t_j] + \\mathbf{P}[j]$", y,
        w=width + 2.6, color="#c6dbef", size=8.5)
    arrow((0, y - step + height / 2), (0, y - height / 2))
    for layer in range(1, n_layer + 1):
        start = y + height / 2  # the block's input: the residual stream
        bottom = y + step - height / 2 - 0.15
        y += step
        box(f"ln1_{layer}", "LayerNorm", y)
        y += step
        box(f"attn_{layer}", "masked multi-head attention\n"
            "$\\mathbf{q}, \\mathbf{k}, \\mathbf{v}$ from $\\mathrm{LN}(\\mathbf{x})$", y,
            color="#f6d7b0", size=8.5)
        box(f"cache_{layer}", f"cache$_{layer}$\n$\\mathbf{{K}}_{{\\leq i}}, \\mathbf{{V}}_{{\\leq i}}$",
            y, x=4.6, w=2.0, color=NEW, size=8.5)
        ax.annotate("", xy=(3.6, y + 0.12), xytext=(width / 2, y + 0.12),
                    arrowprops=dict(arrowstyle="-|>", color="tab:red", lw=1.3))
        ax.annotate("", xy=(width / 2, y - 0.12), xytext=(3.6, y - 0.12),
                    arrowprops=dict(arrowstyle="-|>", color="tab:red", lw=1.3))
        ax.text(2.95, y + 0.3, "$\\mathbf{k}_i, \\mathbf{v}_i$", fontsize=8, ha="center",
                color="tab:red")
        y += step
        box(f"wo_{layer}", "output matrix $\\mathbf{W}^o$", y)
        y += step * 0.8
        adder(f"add1_{layer}", y)
        mid = y + 0.2
        y += step * 0.8
        box(f"ln2_{layer}", "LayerNorm", y)
        y += step
        box(f"mlp_{layer}", "MLP: GELU, width $4d$", y, color="#cfe3c1")
        y += step * 0.8
        adder(f"add2_{layer}", y)
        for a, b in zip([f"ln1_{layer}", f"attn_{layer}", f"wo_{layer}", f"add1_{layer}",
                         f"ln2_{layer}", f"mlp_{layer}"],
                        [f"attn_{layer}", f"wo_{layer}", f"add1_{layer}", f"ln2_{layer}",
                         f"mlp_{layer}", f"add2_{layer}"]):
            top = centres[a][1] + (0.2 if a.startswith("add") else height / 2)
            low = centres[b][1] - (0.2 if b.startswith("add") else height / 2)
            arrow((0, top), (0, low))
        arrow((0, start), (0, centres[f"ln1_{layer}"][1] - height / 2))
        # the residual connections: around each sub-layer, on the left
        for a_y, b_name in ((start + 0.1, f"add1_{layer}"), (mid, f"add2_{layer}")):
            b_y = centres[b_name][1]
            ax.plot([0, -2.9, -2.9], [a_y, a_y, b_y], color="tab:gray", lw=1)
            ax.annotate("", xy=(-0.2, b_y), xytext=(-2.9, b_y),
                        arrowprops=dict(arrowstyle="-|>", color="tab:gray", lw=1))
        ax.add_patch(FancyBboxPatch((-3.3, bottom), 9.0, y + 0.35 - bottom,
                                    boxstyle="round,pad=0.05", fill=False, linestyle="--",
                                    edgecolor="0.4"))
        ax.text(5.55, y + 0.05, f"block $\\ell = {layer}$", fontsize=9, ha="right", va="center",
                color="0.3")
        y += 0.2
    y += step
    box("ln_f", "final LayerNorm", y)
    arrow((0, y - step), (0, y - height / 2))
    y += step
    box("output", "output layer: $\\times\\, \\mathbf{E}^{\\top}$ (tied to the token embedding)", y,
        w=width + 2.6, color="#c6dbef", size=8.5)
    arrow((0, y - step + height / 2), (0, y - height / 2))
    y += step
    box("scores", "scores of the next token, one per vocabulary entry", y, w=width + 2.6,
        color="0.93", size=8.5)
    arrow((0, y - step + height / 2), (0, y - height / 2))
    ax.set_xlim(-3.6, 6.0)
    ax.set_ylim(-0.6, y + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    return centres
