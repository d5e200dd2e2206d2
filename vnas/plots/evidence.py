"""Plots for chapter 01: the ELBO against the exact evidence, its Monte Carlo estimator, and
choosing a model structure by its evidence.

Introduced in chapters/01_bayesian_model_selection.py.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Ellipse

from vnas import evidence as ev

__all__ = ["plot_elbo_gap", "plot_elbo_trace", "plot_mc_estimator", "plot_degree_selection",
           "plot_degree_selection_at", "plot_poly_fits"]

EVIDENCE_STYLE = dict(color="black", linestyle="--", linewidth=1.2)


def _axes(axes, n: int, width: float = 4.6, height: float = 3.6):
    if axes is None:
        _, axes = plt.subplots(1, n, figsize=(width * n, height), layout="constrained")
    if n > 1 and len(axes) != n:
        raise ValueError(f"this plot draws on {n} axes, got {len(axes)}.")
    return axes


def _ellipse(ax, mean, cov, n_sd: float, **style):
    """The n_sd-standard-deviation contour of N(mean, cov) in 2-d."""
    evals, evecs = torch.linalg.eigh(cov)
    angle = math.degrees(math.atan2(evecs[1, 1].item(), evecs[0, 1].item()))
    width, height = (2 * n_sd * evals.flip(0).sqrt()).tolist()
    ax.add_patch(Ellipse(mean.tolist(), width, height, angle=angle, **style))


def _q_from_sliders(model, shift_0, shift_1, scale, corr):
    """q = N(m_N + shift * sd_N, C) with sd_q = scale * sd_N and correlation corr (sd_N: posterior sds)."""
    if not -1 < corr < 1:
        raise ValueError(f"corr must lie strictly between -1 and 1, got {corr}.")
    m_n, s_n = ev.posterior(model)
    sd_n = s_n.diagonal().sqrt()
    mu = m_n + torch.tensor([shift_0, shift_1], dtype=m_n.dtype) * sd_n
    sd = scale * sd_n
    corr_matrix = torch.tensor([[1.0, corr], [corr, 1.0]], dtype=m_n.dtype)
    return mu, sd[:, None] * corr_matrix * sd[None, :], m_n, s_n


def plot_elbo_gap(model, shift_0: float = 1.0, shift_1: float = -1.0, scale: float = 1.0, corr: float = 0.0,
                  span: float = 10.0, axes=None):
    """Left: the exact posterior (grey) and a Gaussian q (colour), 1 and 2 sd contours. Right: the
    ELBO of q under the exact log evidence; the gap between them is KL(q || posterior).

    q's mean is the posterior mean moved by ``shift`` posterior standard deviations; its standard
    deviations are ``scale`` times the posterior's and its correlation is ``corr``.
    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.3).
    """
    if model.m != 2:
        raise ValueError(f"plot_elbo_gap draws a 2-d weight space; this model has {model.m} weights.")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    ax_w, ax_e = _axes(axes, 2)
    mu, cov, m_n, s_n = _q_from_sliders(model, shift_0, shift_1, scale, corr)
    log_z = ev.log_evidence(model).item()
    elbo = ev.elbo(model, mu, cov).item()
    kl = ev.kl_gaussian(mu, cov, m_n, s_n).item()

    for n_sd, alpha in [(1, 0.35), (2, 0.15)]:
        _ellipse(ax_w, m_n, s_n, n_sd, facecolor="grey", alpha=alpha, edgecolor="none")
        _ellipse(ax_w, mu, cov, n_sd, facecolor="none", edgecolor="C0", linewidth=1.5)
    ax_w.plot(*m_n.tolist(), "k+", markersize=10, label="posterior p(w | D)")
    ax_w.plot(*mu.tolist(), "o", color="C0", label="q(w)")
    sd_n = s_n.diagonal().sqrt()
    ax_w.set_xlim(m_n[0].item() - 5 * sd_n[0].item(), m_n[0].item() + 5 * sd_n[0].item())
    ax_w.set_ylim(m_n[1].item() - 5 * sd_n[1].item(), m_n[1].item() + 5 * sd_n[1].item())
    ax_w.set_xlabel("$w_0$")
    ax_w.set_ylabel("$w_1$")
    ax_w.legend(loc="upper right", fontsize=8)
    ax_w.set_title("weight space (1 and 2 sd contours)")

    bottom = log_z - span
    ax_e.bar(0, max(elbo, bottom) - bottom, bottom=bottom, width=0.5, color="C0", label="ELBO(q)")
    ax_e.bar(0, log_z - max(elbo, bottom), bottom=max(elbo, bottom), width=0.5, color="C1", alpha=0.5,
             hatch="//", label="KL(q || p(w | D))")
    ax_e.axhline(log_z, label="log p(D)", **EVIDENCE_STYLE)
    ax_e.set_ylim(bottom, log_z + 0.15 * span)
    ax_e.set_xlim(-0.6, 1.4)
    ax_e.set_xticks([])
    ax_e.set_ylabel("nats")
    note = "  (ELBO below the axis)" if elbo < bottom else ""
    ax_e.set_title(f"ELBO = {elbo:.2f},  KL = {kl:.2f}{note}\nELBO + KL = {elbo + kl:.2f} = log p(D)",
                   fontsize=9)
    ax_e.legend(loc="upper right", fontsize=8)
    return ax_w, ax_e


def plot_elbo_trace(traces: dict, log_evidence: float, best_mean_field: float | None = None,
                    mode: str | None = None, axes=None):
    """Left: the exact ELBO of q during fitting, one line per run in ``traces`` ({label: (steps,)}),
    under the log evidence and the best mean-field ELBO. Right: the gap log p(D) - ELBO = KL(q || posterior)
    on a log scale.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.11).
    """
    ax_e, ax_g = _axes(axes, 2, width=5.0)
    for i, (label, trace) in enumerate(traces.items()):
        steps = torch.arange(1, len(trace) + 1)
        ax_e.semilogx(steps, trace, color=f"C{i}", linewidth=1, label=label)
        ax_g.loglog(steps, (log_evidence - trace).clamp_min(1e-12), color=f"C{i}", linewidth=1, label=label)
    ax_e.axhline(log_evidence, label="log p(D) (exact)", **EVIDENCE_STYLE)
    if best_mean_field is not None:
        for ax, value in [(ax_e, best_mean_field), (ax_g, log_evidence - best_mean_field)]:
            ax.axhline(value, color="grey", linestyle=":", linewidth=1.5, label="best mean-field ELBO")
    floor = best_mean_field if best_mean_field is not None else log_evidence
    ax_e.set_ylim(floor - 4 * max(log_evidence - floor, 1.0), log_evidence + 0.5)
    ax_e.set_xlabel("Adam step (log scale)")
    ax_e.set_ylabel("ELBO of the current q (nats)")
    ax_e.legend(fontsize=8, loc="lower right")
    ax_g.set_xlabel("Adam step (log scale)")
    ax_g.set_ylabel("log p(D) - ELBO = KL(q || posterior)")
    suffix = f" [{mode} mode]" if mode else ""
    ax_e.set_title(f"climbing the ELBO{suffix}", fontsize=10)
    ax_g.set_title(f"the gap, log scale{suffix}", fontsize=10)
    return ax_e, ax_g


def plot_mc_estimator(sample_sizes, estimates: dict, closed_form: float, mode: str | None = None, axes=None):
    """Left: mean +- 2 standard errors of R repeated MC ELBO estimates at each sample size S, against
    the closed form (unbiasedness). Right: their standard deviation against S, log-log, with a
    1/sqrt(S) guide. ``estimates`` maps a label to an (len(sample_sizes), R) tensor.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.11).
    """
    ax_m, ax_s = _axes(axes, 2)
    sizes = torch.as_tensor(list(sample_sizes), dtype=torch.float64)
    for i, (label, est) in enumerate(estimates.items()):
        if est.shape[0] != len(sizes):
            raise ValueError(f"estimates[{label!r}] has {est.shape[0]} rows for {len(sizes)} sample sizes.")
        mean, sd = est.mean(1), est.std(1)
        se = sd / math.sqrt(est.shape[1])
        shift = 1.08 ** (i - (len(estimates) - 1) / 2)  # side by side on the log axis
        ax_m.errorbar(sizes * shift, mean, yerr=2 * se, fmt="o", color=f"C{i}", capsize=3, label=label)
        ax_s.loglog(sizes, sd, "o-", color=f"C{i}", label=label)
        ax_s.loglog(sizes, sd[0] / sizes.sqrt(), ":", color=f"C{i}", linewidth=1)
    ax_m.axhline(closed_form, label="closed-form ELBO", **EVIDENCE_STYLE)
    ax_m.set_xscale("log")
    ax_m.set_xlabel("samples S per estimate")
    ax_m.set_ylabel("mean of the estimates +- 2 s.e.")
    ax_m.legend(fontsize=8)
    ax_s.plot([], [], "k:", linewidth=1, label=r"$\propto 1/\sqrt{S}$")
    ax_s.set_xlabel("samples S per estimate")
    ax_s.set_ylabel("standard deviation of one estimate")
    ax_s.legend(fontsize=8)
    suffix = f" [{mode} mode]" if mode else ""
    ax_m.set_title(f"unbiased{suffix}", fontsize=10)
    ax_s.set_title(f"spread shrinks as 1/sqrt(S){suffix}", fontsize=10)
    return ax_m, ax_s


def plot_degree_selection(selection, mode: str | None = None, zoom: float = 8.0, axes=None):
    """Left: log evidence per polynomial degree, best marked; the axis shows ``zoom`` nats below the
    best, and lower values are marked at its edge. Right: training and held-out RMSE, with the
    degree the evidence chose and the held-out optimum marked. ``selection`` is an
    ``evidence.DegreeSelection``.

    Introduced in chapters/01_bayesian_model_selection.py, section 3(c).
    """
    ax_z, ax_r = _axes(axes, 2)
    d, log_z = selection.degrees, selection.log_evidence
    top = log_z.max().item()
    bottom = max(log_z.min().item(), top - zoom) - 0.05 * min(zoom, top - log_z.min().item() + 1e-9)
    ax_z.plot(d, log_z.clamp_min(bottom), "o-", color="C0")
    for degree, value in zip(d, log_z.tolist(), strict=True):
        if value < bottom:  # zoomed out of view: mark it at the edge with its value
            ax_z.plot(degree, bottom, "v", color="C0", markersize=9)
            ax_z.annotate(f"{value:.0f}", (degree, bottom), textcoords="offset points", xytext=(0, 6),
                          ha="center", fontsize=7)
    best = selection.best
    ax_z.plot(best, top, "*", color="C3", markersize=16, label=f"highest evidence: degree {best}")
    ax_z.set_ylim(bottom, top + 0.1 * (top - bottom))
    ax_z.set_xlabel("polynomial degree")
    ax_z.set_ylabel("log p(D | degree)")
    ax_z.legend(fontsize=8, loc="best")
    ax_r.plot(d, selection.train_rmse, "o-", color="C2", label="training RMSE")
    ax_r.plot(d, selection.test_rmse, "s-", color="C1", label="held-out RMSE")
    ax_r.axvline(best, color="C3", linestyle="--", linewidth=1, label=f"evidence's choice ({best})")
    held = selection.best_held_out
    ax_r.plot(held, selection.test_rmse.min(), "*", color="C1", markersize=14, markeredgecolor="k",
              label=f"lowest held-out error ({held})")
    ax_r.set_xlabel("polynomial degree")
    ax_r.set_ylabel("RMSE of the posterior mean")
    ax_r.legend(fontsize=8)
    for ax in (ax_z, ax_r):
        ax.set_xticks(d)
    suffix = f" [{mode} mode]" if mode else ""
    ax_z.set_title(f"evidence (Occam's razor){suffix}", fontsize=10)
    ax_r.set_title(f"errors{suffix}", fontsize=10)
    return ax_z, ax_r


def plot_degree_selection_at(x, y, x_test, y_test, log10_alpha: float = 0.0, sigma: float = 0.2,
                             degrees=range(10), axes=None):
    """``plot_degree_selection`` for fixed hyperparameters alpha = 10**log10_alpha and sigma (for a widget).

    Introduced in chapters/01_bayesian_model_selection.py, section 3(c).
    """
    sel = ev.select_degree(x, y, x_test, y_test, degrees, alpha=10**log10_alpha, sigma=sigma)
    axes = plot_degree_selection(sel, axes=axes)
    axes[0].set_title(f"alpha = {10**log10_alpha:.3g}, sigma = {sigma:.3g}", fontsize=10)
    return axes


def plot_poly_fits(x, y, fits: dict, x_grid, truth=None, ax=None):
    """Data, and per model the posterior predictive mean with a +-2 sd band.
    ``fits`` maps a label to (mean, variance) on ``x_grid``; ``truth`` is the true function there.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.13).
    """
    ax = _axes(ax, 1, width=5.0)
    if truth is not None:
        ax.plot(x_grid, truth, "k--", linewidth=1, label="true function")
    for i, (label, (mean, var)) in enumerate(fits.items()):
        sd = var.sqrt()
        ax.plot(x_grid, mean, color=f"C{i}", label=label)
        ax.fill_between(x_grid, mean - 2 * sd, mean + 2 * sd, color=f"C{i}", alpha=0.15)
    ax.plot(x, y, "k.", markersize=7, label="training data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="best")
    return ax
