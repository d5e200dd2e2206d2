"""Plots for the exact bridge: the exact structure posterior beside what the variational q and DARTS make of
it, the ELBO climbing to the relaxed model's evidence, and the comparison over many data sets.

Introduced in chapters/04_bayesian_structure_posterior.py.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

__all__ = ["plot_marginals", "plot_bridge_elbo", "plot_compare"]


def _ax(ax, width: float = 5.5, height: float = 3.6):
    if ax is None:
        _, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return ax


def plot_marginals(exact, q_argmax, darts, ops, ax=None):
    """Grouped bars per edge and op: the exact p(op_e = k | D), q's P(op k is the argmax of theta_e), and DARTS'
    weights (softmax(alpha), or its one-hot). All three are [E, K] matrices; ``ops`` names the K ops.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    series = [("exact p(op | D)", exact), ("q: P(argmax θ = op)", q_argmax), ("DARTS θ", darts)]
    series = [(label, torch.as_tensor(m, dtype=torch.float64).detach()) for label, m in series]
    shape = series[0][1].shape
    if any(m.shape != shape for _, m in series) or len(shape) != 2 or shape[1] != len(ops):
        raise ValueError(f"exact, q_argmax and darts must be [E, K] alike with K = len(ops) = {len(ops)}, got "
                         f"{[tuple(m.shape) for _, m in series]}.")
    edges, k = shape
    ax = _ax(ax, width=max(5.5, 1.6 * edges * k / 4))
    width = 0.8 / len(series)
    for i, (label, m) in enumerate(series):
        positions = [e * (k + 1) + j + (i - 1) * width for e in range(edges) for j in range(k)]
        ax.bar(positions, m.reshape(-1).tolist(), width, label=label, color=f"C{i}")
    ax.set_xticks([e * (k + 1) + j for e in range(edges) for j in range(k)],
                  [f"{op}\nedge {e}" if j == 0 else op for e in range(edges) for j, op in enumerate(ops)],
                  rotation=60, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability / weight")
    ax.legend(fontsize=8)
    return ax


def plot_bridge_elbo(trace, log_evidence, ax=None):
    """The variational fit's ELBO per logged step (the per-step Monte Carlo estimate, times N: a total in nats)
    under the relaxed model's log evidence log p(D) (a float or an ``Estimate``, drawn with +-2 s.e.).
    ``trace`` is a ``bridge.Fit``.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    value, se = (log_evidence, 0.0) if isinstance(log_evidence, (int, float)) else tuple(log_evidence)
    ax = _ax(ax)
    ax.plot(trace.step, [e * trace.num_data for e in trace.elbo], color="C0", label="ELBO (MC, per step)")
    ax.axhline(value, color="black", linestyle="--", linewidth=1.2, label="log p(D) (importance sampling)")
    if se > 0:
        ax.axhspan(value - 2 * se, value + 2 * se, color="black", alpha=0.1)
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_compare(rows, ax=None):
    """From ``bridge.compare`` rows: left, the mean TV distance to the exact marginals against N (q solid, DARTS
    dashed), one colour per c0, with 95% intervals; right, the rate at which the derived structure is the exact
    MAP structure. ``ax`` is a pair of axes (or None); returns it.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    if len(ax) != 2:
        raise ValueError(f"plot_compare draws on 2 axes, got {len(ax)}.")
    c0s = sorted({r["c0"] for r in rows})
    for i, c0 in enumerate(c0s):
        sub = sorted((r for r in rows if r["c0"] == c0), key=lambda r: r["n"])
        ns = [r["n"] for r in sub]
        for a, key, darts_key in ((ax[0], "tv_q", "tv_darts"), (ax[1], "map_agreement", "darts_map_agreement")):
            for k, style, label in ((key, "-o", f"q, c0 = {c0:g}"), (darts_key, "--s", "DARTS")):
                if k == darts_key and i > 0:
                    continue  # DARTS has no prior: its line is the same for every c0
                mean = [r[k] for r in sub]
                err = [[m - r[f"{k}_low"] for m, r in zip(mean, sub, strict=True)],
                       [r[f"{k}_high"] - m for m, r in zip(mean, sub, strict=True)]]
                a.errorbar(ns, mean, yerr=err, fmt=style, capsize=3, color="grey" if k == darts_key else f"C{i}",
                           label=label)
    ns = sorted({r["n"] for r in rows})
    for a, label in ((ax[0], "mean TV to exact marginals"), (ax[1], "MAP agreement rate")):
        a.set_xscale("log")
        a.set_xticks(ns, [str(n) for n in ns], minor=False)
        a.set_xticks([], minor=True)  # the log scale's own ticks (2 x 10^1, ...) only clutter a few N
        a.set_xlabel("N (data points)")
        a.set_ylabel(label)
        a.legend(fontsize=8)
    ax[1].set_ylim(0, 1.05)
    return ax
