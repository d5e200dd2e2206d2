"""Pictures on the 3-op simplex: Concrete samples, Dirichlet densities, and the gradient-estimator
comparison of chapters/03_stochastic_relaxations.py.

A weight vector w = (w_1, w_2, w_3) on the simplex is drawn at w_1 * A + w_2 * B + w_3 * C, where A, B, C
are the corners of an equilateral triangle (barycentric coordinates).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.tri as mtri
import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from vnas.posteriors import gumbel_softmax_sample

__all__ = ["simplex_xy", "plot_simplex_points", "plot_dirichlet_density", "plot_concrete", "plot_dirichlet",
           "plot_estimators"]

_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def simplex_xy(points) -> np.ndarray:
    """Barycentric [N, 3] points -> [N, 2] plane coordinates in the triangle.

    Introduced in chapters/03_stochastic_relaxations.py.
    """
    p = np.asarray(torch.as_tensor(points).detach().cpu(), dtype=float)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3] (weights of 3 ops), got {p.shape}.")
    return p @ _CORNERS


def _triangle(ax, labels, title):
    if ax is None:
        _, ax = plt.subplots(figsize=(3.4, 3.2))
    closed = np.vstack([_CORNERS, _CORNERS[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color="0.3", lw=1)
    for (x, y), label, dy in zip(_CORNERS, labels, (-0.07, -0.07, 0.04), strict=True):
        ax.text(x, y + dy, label, ha="center", va="center", fontsize=9)
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.13, 0.95)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_simplex_points(points, ax=None, labels=("op 1", "op 2", "op 3"), title=None, color="C0",
                        size=6.0, mean=None):
    """Scatter [N, 3] weight vectors on the triangle; ``mean`` (3 weights) is marked with a red cross.

    Introduced in chapters/03_stochastic_relaxations.py.
    """
    ax = _triangle(ax, labels, title)
    xy = simplex_xy(points)
    ax.scatter(xy[:, 0], xy[:, 1], s=size, color=color, alpha=0.4, linewidths=0)
    if mean is not None:
        m = simplex_xy(np.asarray(mean, dtype=float).reshape(1, 3))
        ax.scatter(m[:, 0], m[:, 1], marker="x", s=60, color="red", zorder=3)
    return ax


def plot_dirichlet_density(concentration, ax=None, labels=("op 1", "op 2", "op 3"), title=None, subdiv=6):
    """Filled contours of the Dir(beta) density on the triangle (clipped at its 97th percentile so that
    the corners of a beta < 1 density do not swamp the picture). Introduced in
    chapters/03_stochastic_relaxations.py, Eq. (3.6).
    """
    beta = torch.as_tensor(concentration, dtype=torch.float64)
    if beta.shape != (3,) or not bool((beta > 0).all()):
        raise ValueError(f"concentration must be 3 numbers > 0, got {concentration!r}.")
    ax = _triangle(ax, labels, title)
    mesh = mtri.UniformTriRefiner(mtri.Triangulation(_CORNERS[:, 0], _CORNERS[:, 1])).refine_triangulation(
        subdiv=subdiv)
    xy = np.stack([mesh.x, mesh.y], 1)
    # plane -> barycentric, pulled slightly inside so that log_prob stays finite on the edges
    w3 = xy[:, 1] / _CORNERS[2, 1]
    w2 = xy[:, 0] - 0.5 * w3
    bary = np.clip(np.stack([1 - w2 - w3, w2, w3], 1), 0, 1) * (1 - 3e-3) + 1e-3
    density = torch.distributions.Dirichlet(beta).log_prob(torch.from_numpy(bary)).exp().numpy()
    density = np.minimum(density, np.percentile(density, 97))
    ax.tricontourf(mesh, density, levels=14, cmap="Blues")
    return ax


def plot_concrete(logits=(1.0, 0.0, -1.0), tau=0.5, num_samples=400, seed=0, hard=False, ax=None):
    """Concrete samples softmax((logits + g) / tau) on the 3-op simplex, with softmax(logits) marked.

    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.4).
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    y = gumbel_softmax_sample(logits.expand(num_samples, 3), tau, torch.Generator().manual_seed(seed), hard)
    return plot_simplex_points(y, ax=ax, title=f"Concrete, tau = {tau:.3g}", mean=torch.softmax(logits, 0))


def plot_dirichlet(scale=3.0, mean=(0.5, 0.3, 0.2), num_samples=200, seed=0, ax=None):
    """Density and samples of Dir(beta) with beta = scale * mean, titled with its entropy.

    Introduced in chapters/03_stochastic_relaxations.py, Eqs. (3.6)-(3.7).
    """
    m = np.asarray(mean, dtype=float)
    if m.shape != (3,) or np.any(m <= 0) or scale <= 0:
        raise ValueError(f"mean must be 3 positive numbers and scale > 0, got mean={mean!r}, "
                         f"scale={scale!r}.")
    beta = scale * m / m.sum()
    entropy = torch.distributions.Dirichlet(torch.as_tensor(beta)).entropy().item()
    ax = plot_dirichlet_density(beta, ax=ax, title=f"Dir({', '.join(f'{b:.2g}' for b in beta)})\n"
                                f"sum {beta.sum():.3g}, entropy {entropy:.2f} nats")
    x = np.random.default_rng(seed).dirichlet(beta, num_samples)
    return plot_simplex_points(x, ax=ax, color="C1", size=4, mean=beta / beta.sum(), title=ax.get_title())


def plot_estimators(rows, ax=None, title=None):
    """Relative bias against relative standard deviation of gradient estimators, log-log, one point per row
    (circles: categorical target, squares: Dirichlet target). A resolved bias is drawn filled with +-2
    standard errors; a bias within 2 standard errors of 0 is drawn hollow at that upper bound, with a
    downward arrow.

    ``rows``: dicts with "estimator", "target", "bias", "bias_se", "std" (relative to the exact gradient).
    Introduced in chapters/03_stochastic_relaxations.py, Section 8.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, row in enumerate(rows):
        color, marker = f"C{i % 10}", "s" if row.get("target") == "Dirichlet" else "o"
        x, bias, se = row["std"], row["bias"], row["bias_se"]
        if bias > 2 * se:
            ax.errorbar(x, bias, yerr=2 * se, fmt=marker, color=color, capsize=3, label=row["estimator"])
        else:  # not resolved: only an upper bound is known
            upper = bias + 2 * se
            ax.errorbar(x, upper, yerr=0.3 * upper, uplims=True, fmt=marker, color=color, mfc="none",
                        label=f"{row['estimator']} (bias < bound)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # ticks at 1, 2, 5 x 10^k, written plainly
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("std of one-sample estimate / |exact gradient|")
    ax.set_ylabel("|bias| / |exact gradient|")
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
