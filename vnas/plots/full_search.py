"""What a run folder's history holds, drawn: every logged term of one objective over the epochs, and how far each
edge's mixing weights are from uniform (its largest weight and its entropy).

Introduced in chapters/06_full_search.py.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_edge_summary", "plot_objective_terms"]


def plot_objective_terms(history: list[dict], group: str = "weights", ax=None, title: str | None = None):
    """Every term of ``history[i][group]`` (the epoch means a search logs: ``group`` "architecture" or "weights")
    over the epochs, on a log scale (a symmetric one if a term is <= 0). Terms that are zero at every epoch are
    named in the title instead of drawn. Introduced in chapters/06_full_search.py."""
    rows = [(h["epoch"], h[group]) for h in history if h.get(group)]
    if not rows:
        raise ValueError(f"This history logs no {group!r} terms (a method without an architecture step?).")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    epochs = [e for e, _ in rows]
    names = list(rows[0][1])
    zero = [n for n in names if all(r.get(n, 0.0) == 0 for _, r in rows)]
    drawn = [n for n in names if n not in zero]
    positive = True
    for i, name in enumerate(drawn):
        values = np.array([r.get(name, np.nan) for _, r in rows], dtype=float)
        positive &= bool(np.all(values[np.isfinite(values)] > 0))
        dashed = name in ("objective", "penalty")  # sums of the other terms
        ax.plot(epochs, values, marker="o", ms=3, ls="--" if dashed else "-", color=f"C{i}", label=name)
    ax.set_yscale("log" if positive else "symlog")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    heading = title or f"{group} objective"
    ax.set_title(heading + (f"\n(zero at every epoch: {', '.join(zero)})" if zero else ""), fontsize=9)
    return ax


def plot_edge_summary(history: list[dict], cell_type: str = "normal", axes=None):
    """Two panels for the edges of one cell type: the largest mixing weight of each edge (the distribution's
    mean) and its entropy, one grey line per edge, their mean in black, the uniform edge dashed.
    Introduced in chapters/06_full_search.py."""
    rows = [h["edges"][cell_type] for h in history if h.get("edges") and cell_type in h["edges"]]
    if not rows:
        raise ValueError(f"This history has no per-edge statistics for cell type {cell_type!r}.")
    means = np.asarray([r["mean"] for r in rows], dtype=float)  # (epochs, edges, ops)
    entropy = np.asarray([r["entropy"] for r in rows], dtype=float)  # (epochs, edges)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")
    epochs = np.arange(1, len(rows) + 1)
    ops = means.shape[-1]
    for ax, values, uniform, label in ((axes[0], means.max(-1), 1 / ops, "largest mixing weight"),
                                       (axes[1], entropy, math.log(ops), "entropy (nats)")):
        ax.plot(epochs, values, color="0.6", lw=0.8)
        ax.plot(epochs, values.mean(1), color="black", lw=2, label=f"mean over {values.shape[1]} edges")
        ax.axhline(uniform, color="C3", ls="--", lw=1, label=f"uniform over {ops} ops ({uniform:.3f})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)  # early in a search the entropy differs in the 5th digit
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{cell_type} cell: {label}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return axes
