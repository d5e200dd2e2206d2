"""Pictures of a search: cells as graphs, mixing-weight trajectories, posterior concentration, curves.

All read a search history (the list of per-epoch rows of vnas.search) or a genotype.
Introduced in chapters/02_darts.py and chapters/04_bayesian_structure_posterior.py.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from vnas import spaces

__all__ = ["plot_cell", "plot_weight_trajectories", "plot_edge_statistic", "plot_search_curves",
           "plot_op_shares"]

OP_COLOURS = {
    "none": "#bbbbbb", "skip_connect": "#e15759", "max_pool_3x3": "#59a14f", "avg_pool_3x3": "#8cd17d",
    "sep_conv_3x3": "#4e79a7", "sep_conv_5x5": "#a0cbe8", "dil_conv_3x3": "#f28e2b", "dil_conv_5x5": "#ffbe7d",
    "nor_conv_1x1": "#b07aa1", "nor_conv_3x3": "#4e79a7",
}


def _axes(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_cell(genotype, cell_type: str | None = None, ax=None):
    """A cell drawn as a DAG with matplotlib (no graphviz): nodes left to right, edges coloured and
    labelled by their op; long edges arc above or below the row of nodes. ``cell_type`` defaults to the
    space's first (DARTS: "normal"; NB201: "cell").

    Introduced in chapters/02_darts.py.
    """
    ax = _axes(ax, (8, 3.2))
    space = spaces.space_of(genotype)
    cell_type = cell_type or space.cell_types[0]
    edges, labels, pos = space.cell_graph(genotype, cell_type)
    for src, dst, op in edges:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        dx, dy = x1 - x0, y1 - y0
        long_in_row = y0 == y1 and abs(dst - src) > 1
        rad = (0.35 if src % 2 else -0.35) if long_in_row else 0.0
        colour = OP_COLOURS.get(op, "#999999")
        arrow = dict(arrowstyle="-|>", color=colour, lw=2 if op != "concat" else 1,
                     connectionstyle=f"arc3,rad={rad}", shrinkA=11, shrinkB=11)
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=arrow)
        if op != "concat":
            # on a curve, the label sits at its midpoint, mid + rad/2 * (dy, -dx) (matplotlib's arc3); on a
            # straight edge, two thirds of the way, where edges fanning out of one node have parted
            t = 0.5 if rad else 0.67
            lx, ly = x0 + t * dx + rad / 2 * dy, y0 + t * dy - rad / 2 * dx
            ax.text(lx, ly, op, fontsize=7, ha="center", va="center", color=colour,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))
    for i, label in enumerate(labels):
        x, y = pos[i]
        ax.scatter([x], [y], s=500, c="#f0f0f0", edgecolors="#333333", zorder=3)
        ax.text(x, y, f"${label}$" if "_" in label else label, ha="center", va="center", zorder=4, fontsize=8)
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ys = [p[1] for p in pos.values()]
    flat = max(ys) == min(ys)  # all nodes in one row: leave room for the arcs above and below it
    ax.set_ylim(min(ys) - 0.6 - flat, max(ys) + 0.6 + flat)
    ax.set_aspect("equal")  # arc3 bends in display space: equal axes keep the label on its curve
    ax.set_axis_off()
    ax.set_title(f"{cell_type} cell" if len(space.cell_types) > 1 else "cell")
    return ax


def _stat(history: list[dict], cell_type: str, key: str) -> np.ndarray:
    """history[epoch]["edges"][cell_type][key] as an array (epochs, ...)."""
    rows = [h["edges"][cell_type][key] for h in history if "edges" in h]
    if not rows:
        raise ValueError("This history has no per-edge statistics (a baseline without a distribution?).")
    return np.asarray(rows, dtype=float)


def plot_weight_trajectories(history: list[dict], ops: tuple[str, ...], cell_type: str = "normal",
                             edges: list[int] | None = None, ncols: int = 7, axes=None):
    """One small panel per edge: every op's mixing weight (the distribution's mean) over the epochs.

    Introduced in chapters/02_darts.py.
    """
    means = _stat(history, cell_type, "mean")  # (epochs, E, O)
    edges = list(range(means.shape[1])) if edges is None else edges
    if axes is None:
        nrows = -(-len(edges) // ncols)
        _, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 1.7 * nrows), sharex=True, sharey=True,
                               squeeze=False)
    flat = np.asarray(axes).ravel()
    epochs = np.arange(1, means.shape[0] + 1)
    for ax, e in zip(flat, edges, strict=False):
        for o, op in enumerate(ops):
            ax.plot(epochs, means[:, e, o], color=OP_COLOURS.get(op), lw=1.5, label=op)
        ax.set_title(f"edge {e}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in flat[len(edges):]:
        ax.set_axis_off()
    fig = flat[0].figure
    fig.supxlabel("epoch", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.legend(*flat[0].get_legend_handles_labels(), loc="upper center", ncol=len(ops), fontsize=7, frameon=False)
    return axes


def plot_edge_statistic(history: list[dict], key: str = "entropy", cell_type: str = "cell", ax=None,
                        label: str | None = None):
    """A per-edge statistic over the epochs ("entropy" or "concentration"), one line per edge and their mean.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    ax = _axes(ax, (5, 3))
    values = _stat(history, cell_type, key)
    if np.isnan(values).all():
        raise ValueError(f"{key!r} is not recorded for this distribution.")
    epochs = np.arange(1, len(values) + 1)
    ax.plot(epochs, values, color="#999999", lw=0.8, alpha=0.6)
    ax.plot(epochs, values.mean(1), color="black", lw=2, label=label or f"mean over {values.shape[1]} edges")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    return ax


def plot_search_curves(history: list[dict], ax=None, label: str = ""):
    """Training and validation accuracy of the supernet over the epochs. Introduced in chapters/02_darts.py."""
    ax = _axes(ax, (5, 3))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_acc"] for h in history], "-", label=f"{label} train".strip())
    ax.plot(epochs, [h["val_acc"] for h in history], "--", label=f"{label} val (mean architecture)".strip())
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return ax


def plot_op_shares(history: list[dict], ops: tuple[str, ...], cell_type: str = "cell", ax=None):
    """How often each op is the argmax of an edge, over the epochs (shows a skip-connection collapse).

    Introduced in chapters/02_darts.py.
    """
    ax = _axes(ax, (5, 3))
    means = _stat(history, cell_type, "mean")
    winners = means.argmax(-1)  # (epochs, E)
    epochs = np.arange(1, len(means) + 1)
    shares = np.stack([(winners == o).mean(1) for o in range(len(ops))], 1)
    ax.stackplot(epochs, shares.T, labels=ops, colors=[OP_COLOURS.get(op) for op in ops])
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of edges")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return ax
