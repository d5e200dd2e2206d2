"""Transfer pictures: one dataset's accuracy against another's over all cells, where the cells found by each
method rank, and network sizes against a multiply-add budget.

Introduced in chapters/08_imagenet.py.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_budgets", "plot_percentiles", "plot_transfer"]


def plot_transfer(x, y, ax=None, top=None, marked: dict | None = None, xlabel: str = "CIFAR-10 test accuracy (%)",
                  ylabel: str = "ImageNet16-120 test accuracy (%)", title: str | None = None,
                  top_label: str = "top {n:,} by x", all_label: str = "all {n:,} cells"):
    """Every cell as a point (x: accuracy on the search dataset, y: on the target), labelled ``all_label`` ({n}:
    their number). ``top`` (a boolean mask) draws those cells in colour, e.g. the top 1% by x, labelled
    ``top_label``; ``marked`` is
    {label: (xs, ys)}: cells to draw as large markers (found cells, optima). Introduced in chapters/08_imagenet.py."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"plot_transfer needs two 1-D arrays of the same length, got shapes {x.shape} and {y.shape}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 4.4), layout="constrained")
    few = len(x) < 2000  # a few hundred cells: larger, darker points
    ax.scatter(x, y, s=12 if few else 2, color="0.45" if few else "0.6", alpha=0.7 if few else 0.4, linewidths=0,
               label=all_label.format(n=len(x)),
               rasterized=True)
    if top is not None:
        top = np.asarray(top, dtype=bool)
        ax.scatter(x[top], y[top], s=8, color="C1", alpha=0.8, linewidths=0, zorder=2,
                   label=top_label.format(n=int(top.sum())))
    for i, (label, (xs, ys)) in enumerate((marked or {}).items()):
        ax.scatter(np.atleast_1d(xs), np.atleast_1d(ys), s=40, marker="oXs^vD*P<>"[i % 10], color=f"C{(i + 2) % 10}",
                   edgecolors="black", linewidths=0.5, zorder=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", markerscale=1.5)
    return ax


def plot_percentiles(rows: dict, ax=None, reference: dict | None = None, ylabel: str = "percentile among all cells",
                     title: str | None = None):
    """Where each method's cells rank: ``rows`` is {method: {series: (per-seed values, mean, half-width)}}, e.g.
    series "CIFAR-10" and "ImageNet16-120"; dots are seeds, error bars the interval (none when the half-width is
    not finite). ``reference`` is {label: value}: horizontal lines (a random cell's 50, an optimum).
    Introduced in chapters/08_imagenet.py."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    series = list(dict.fromkeys(s for by_series in rows.values() for s in by_series))
    width = 0.7 / max(len(series), 1)
    for j, name in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * width
        for i, by_series in enumerate(rows.values()):
            if name not in by_series:
                continue
            values, mean, half = by_series[name]
            values = np.asarray(values, dtype=float)
            ax.scatter(np.full(len(values), i + offset), values, s=10, color=f"C{j}", alpha=0.5, zorder=2)
            ax.errorbar(i + offset, mean, yerr=half if np.isfinite(half) else None, fmt="o", color=f"C{j}",
                        markeredgecolor="black", capsize=3, zorder=3, label=name if i == 0 else None)
    for k, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color="0.3", linestyle=(":", "--", "-.")[k % 3], linewidth=0.9, label=label)
    ax.set_xticks(range(len(rows)), list(rows), rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_budgets(published: dict, ours: dict, ax=None, limit: float | None = None, cloud: tuple | None = None,
                 title: str | None = None):
    """Parameters (M) against multiply-adds (M) per 224 x 224 image (size the figure before: the labels are
    placed where they overlap nothing at its size): ``published`` and ``ours`` are
    {label: (params M, mult-adds M)}, drawn as grey squares labelled beside them and as coloured circles in the
    legend; ``cloud`` is
    (params M, mult-adds M) arrays of other networks (e.g. random cells) drawn as small points, labelled
    "random cells"; ``limit`` draws the budget as a vertical line (the mobile setting: 600 M).
    Introduced in chapters/08_imagenet.py."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    if cloud is not None and len(cloud[0]):
        ax.scatter(cloud[1], cloud[0], s=8, color="0.7", label=f"{len(cloud[0])} random cells (ours)", zorder=1)
    for i, (params, macs) in enumerate(published.values()):
        ax.scatter([macs], [params], marker="s", s=30, color="0.35", zorder=2, label="published" if i == 0 else None)
    for i, (label, (params, macs)) in enumerate(ours.items()):
        ax.scatter([macs], [params], s=45, color=f"C{i % 10}", edgecolors="black", linewidths=0.5, zorder=3,
                   label=label)
    if limit is not None:
        ax.axvline(limit, color="C3", linestyle="--", linewidth=1, label=f"budget {limit:g} M")
    ax.set_xlabel("multiply-adds per 224 × 224 image (M)")
    ax.set_ylabel("parameters (M)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    _label_points(ax, {label: (macs, params) for label, (params, macs) in published.items()},
                  others=[(macs, params) for params, macs in ours.values()])
    return ax


def _label_points(ax, points: dict, others=()) -> None:
    """Write each label beside its point (x, y): at the first place around it, nearest first, where it covers
    neither a label written before nor any point of ``points`` or ``others``; a thin line joins a label set apart
    to its point. The test is made in display coordinates, after the figure is laid out."""
    from matplotlib.transforms import Bbox

    ax.figure.draw_without_rendering()  # lay the figure out first (constrained layout moves the axes)
    renderer = ax.figure.canvas.get_renderer()
    centres = [ax.transData.transform(xy) for xy in [*points.values(), *others]]
    taken = [Bbox.from_extents(cx - 4, cy - 4, cx + 4, cy + 4) for cx, cy in centres]
    places = [((sign * (5 + 18 * far), dy), "left" if sign > 0 else "right")
              for far in range(4) for dy in (-3, 6, -12, 15, -21, 24) for sign in (1, -1)]
    for label, xy in points.items():
        for k, (offset, ha) in enumerate(places):
            line = {"arrowstyle": "-", "color": "0.6", "linewidth": 0.5} if abs(offset[0]) > 5 or offset[1] > 6 \
                or offset[1] < -3 else None
            text = ax.annotate(label, xy, textcoords="offset points", xytext=offset, ha=ha, va="center",
                               fontsize=7, color="0.25", arrowprops=line)
            box = text.get_window_extent(renderer)
            if k == len(places) - 1 or not any(box.overlaps(other) for other in taken):
                break
            text.remove()
        taken.append(box)
