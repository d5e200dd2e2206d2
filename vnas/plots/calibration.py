"""Calibration pictures: the reliability diagram, and a metric against the severity of a distribution shift.

Introduced in chapters/05_bayesian_weights.py.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from vnas import metrics

__all__ = ["plot_reliability", "plot_shift"]


def _ax(ax, width: float = 4.6, height: float = 3.6):
    if ax is None:
        _, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return ax


def plot_reliability(probs, labels, bins: int = 15, ax=None, label=None):
    """Reliability diagram: the accuracy of each non-empty equal-width confidence bin (outlined bars) against the
    diagonal of perfect calibration, with each bin's mean confidence marked (dots at the bin centre); the ECE
    (``metrics.expected_calibration_error``) is in the legend. Call it again on the same ``ax`` with another
    ``label`` to overlay a second model. Introduced in chapters/05_bayesian_weights.py.
    """
    r = metrics.reliability(probs, labels, bins)
    ece = metrics.expected_calibration_error(probs, labels, bins)
    ax = _ax(ax)
    color = f"C{len(ax.containers)}"  # one colour per diagram drawn on these axes
    edges, filled = r["edges"], r["count"] > 0  # empty bins draw nothing
    name = f"{label}: " if label else ""
    ax.bar(edges[:-1][filled].tolist(), r["accuracy"][filled].tolist(), width=1 / bins, align="edge",
           fill=False, edgecolor=color, linewidth=1.5, label=f"{name}accuracy per bin (ECE {100 * ece:.1f}%)")
    centres = (edges[:-1] + edges[1:]) / 2
    ax.plot(centres[filled].tolist(), r["confidence"][filled].tolist(), ".", color=color, markersize=5)
    if not any(line.get_label() == "perfect calibration" for line in ax.get_lines()):
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy in bin")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def plot_shift(results: dict, ax=None, ylabel: str = "value"):
    """A metric against shift severity: ``results`` is {model: {kind: [value at severity 1, 2, ...]}}; one colour
    per model, one marker and line style per kind. Introduced in chapters/05_bayesian_weights.py.
    """
    ax = _ax(ax, width=5.5)
    kinds = sorted({kind for per_kind in results.values() for kind in per_kind})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    for i, (model, per_kind) in enumerate(results.items()):
        for kind, values in per_kind.items():
            j = kinds.index(kind)
            ax.plot(range(1, len(values) + 1), list(values), color=f"C{i}", linestyle=styles[j % len(styles)],
                    marker=markers[j % len(markers)], label=f"{model}, {kind}")
    longest = max((len(v) for per_kind in results.values() for v in per_kind.values()), default=0)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("severity")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return ax
