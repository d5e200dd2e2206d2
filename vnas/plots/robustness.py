"""Robustness pictures: robust accuracy against the attack budget ε, one curve per model with its interval.

Introduced in chapters/07_robustness.py.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_robust_accuracy"]


def plot_robust_accuracy(curves: dict, ax=None, title: str | None = None, reference: dict | None = None):
    """Accuracy against ε (in units of 1/255): ``curves`` is {model: (eps [pixels], mean, half-width or None)};
    a half-width draws a shaded 95% band. ``reference`` is {label: (eps, accuracy)}: published points, drawn as
    black stars. The ε axis is symmetric-log so that ε = 0 (clean) sits beside 1/255.
    Introduced in chapters/07_robustness.py."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.2, 3.8), layout="constrained")
    for i, (model, (eps, mean, half)) in enumerate(curves.items()):
        x = 255 * np.asarray(eps, dtype=float)
        y = np.asarray(mean, dtype=float)
        ax.plot(x, y, marker="o", color=f"C{i % 10}", linestyle="-" if i < 10 else "--", label=model)
        if half is not None and np.all(np.isfinite(half)):
            ax.fill_between(x, y - np.asarray(half), y + np.asarray(half), color=f"C{i % 10}", alpha=0.15)
    for label, (eps, acc) in (reference or {}).items():
        ax.plot([255 * eps], [acc], marker="*", color="black", markersize=11, linestyle="none", label=label)
    ax.set_xscale("symlog", linthresh=1.0)
    ticks = sorted({round(255 * float(e), 6) for eps, _, _ in curves.values() for e in eps})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("ε (× 1/255, L∞)")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return ax
