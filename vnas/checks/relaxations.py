"""Checkers for the exercises of chapters/03_stochastic_relaxations.py: a Gumbel-softmax sampler and the
closed-form Dirichlet KL. Each says in words what is wrong, or prints one line saying what passed.
"""

from __future__ import annotations

import math

import torch

from vnas.checks._common import call, checker, require

__all__ = ["check_gumbel_softmax", "check_dirichlet_kl"]

_Z = 5.0  # standard errors allowed before a frequency counts as wrong


def _sample(fn, logits, tau, seed):
    y = call(fn, logits, tau, torch.Generator().manual_seed(seed))
    require(torch.is_tensor(y), f"gumbel_softmax should return a tensor, got {type(y).__name__}.")
    require(y.shape == logits.shape, f"the sample should have the logits' shape {tuple(logits.shape)}, "
                                     f"got {tuple(y.shape)}.")
    return y


def _argmax_freq(y):
    return torch.bincount(y.argmax(-1), minlength=y.shape[-1]).double() / y.shape[0]


@checker
def check_gumbel_softmax(fn) -> str:
    """Check ``fn(logits, tau, generator)`` = softmax((logits + g) / tau), g = -log(-log u), u ~ U(0, 1).

    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.4).
    """
    n, logits = 20_000, torch.tensor([1.5, 0.0, -1.0, 0.5], dtype=torch.float64)
    batch = logits.expand(n, 4)
    y = _sample(fn, batch, 0.5, seed=0)
    require(bool((y >= 0).all()) and torch.allclose(y.sum(-1), torch.ones(n, dtype=y.dtype), atol=1e-5),
            "each sample should lie on the simplex (entries >= 0 that sum to 1 over the last dimension): "
            "finish with a softmax over dim=-1.")
    require(not torch.allclose(y, y[:1].expand_as(y)),
            "every row is the same sample: add fresh Gumbel noise g = -log(-log u) for each row.")
    y2 = _sample(fn, batch, 0.5, seed=0)
    require(torch.equal(y, y2), "two calls with generators seeded alike gave different samples: draw the "
                                "uniform noise with torch.rand(..., generator=generator).")

    p, freq = torch.softmax(logits, 0), _argmax_freq(y)
    se = (p * (1 - p) / n).sqrt()
    if not bool(((freq - p).abs() < _Z * se).all()):
        sharp = torch.softmax(logits / 0.5, 0)
        hint = (" They match softmax(logits / tau): divide the whole sum (logits + g) by tau, not the logits "
                "alone." if bool(((freq - sharp).abs() < _Z * se).all()) else
                " Check the noise: g = -log(-log u) with u ~ U(0, 1) is Gumbel; -log u or a Gaussian is not.")
        require(False, f"argmax of the samples should be distributed as softmax(logits) = "
                       f"{[round(v, 3) for v in p.tolist()]} (Gumbel-max), but the frequencies are "
                       f"{[round(v, 3) for v in freq.tolist()]}.{hint}")

    cold = _sample(fn, batch[:2000], 0.02, seed=1).max(-1).values.mean().item()
    hot = _sample(fn, batch[:2000], 50.0, seed=1).max(-1).values.mean().item()
    require(cold > 0.95, f"with tau = 0.02 the samples should be nearly one-hot, but their largest entry "
                         f"averages {cold:.3f}: divide (logits + g) by tau.")
    require(hot < 0.35, f"with tau = 50 the samples should be nearly uniform (largest entry ~0.25), but it "
                        f"averages {hot:.3f}: divide (logits + g) by tau.")

    leaf = logits.clone().requires_grad_()
    y = call(fn, leaf.expand(8, 4), 1.0, torch.Generator().manual_seed(2))
    require(y.requires_grad, "the sample is not differentiable w.r.t. the logits: build it from the logits "
                             "with torch operations (no .detach(), .item() or numpy).")
    (y * torch.arange(4.0, dtype=y.dtype)).sum().backward()
    require(leaf.grad is not None and bool(torch.isfinite(leaf.grad).all()) and leaf.grad.abs().sum() > 0,
            "the gradient w.r.t. the logits is zero or not finite: keep the soft sample (no argmax/one_hot).")
    return ("gumbel_softmax: samples lie on the simplex, argmax ~ softmax(logits), tau sharpens or flattens "
           "them, and gradients reach the logits.")


@checker
def check_dirichlet_kl(fn) -> str:
    """Check ``fn(beta, c0)`` = KL(Dir(beta_e) || Dir(c0, ..., c0)) per edge (beta: [E, O] -> [E]).

    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.9).
    """
    gen = torch.Generator().manual_seed(0)
    beta = torch.exp(torch.randn(5, 4, generator=gen, dtype=torch.float64))
    out = call(fn, beta, 1.0)
    require(torch.is_tensor(out), f"dirichlet_kl should return a tensor, got {type(out).__name__}.")
    require(out.shape != beta.shape, "the result has one value per op; the KL of an edge sums over its "
                                     "ops: reduce with .sum(-1) over the last dimension.")
    require(out.shape == beta.shape[:-1], f"expected one KL per edge, shape {tuple(beta.shape[:-1])}, got "
                                          f"{tuple(out.shape)}: sum over the last dimension only.")
    same = call(fn, torch.full((3, 4), 0.7, dtype=torch.float64), 0.7)
    require(torch.allclose(same, torch.zeros(3, dtype=same.dtype), atol=1e-6),
            f"KL(Dir(beta) || Dir(c0)) must be 0 when beta = c0 everywhere, got {same.tolist()}.")
    for c0 in (0.5, 1.0, 3.0):
        out = call(fn, beta, c0)
        q, p = torch.distributions.Dirichlet(beta), torch.distributions.Dirichlet(torch.full_like(beta, c0))
        want = torch.distributions.kl_divergence(q, p)
        if torch.allclose(out, want, rtol=1e-4, atol=1e-6):
            continue
        hint = " Look at each term of Eq. (3.9) separately."
        if torch.allclose(out, -want, rtol=1e-4, atol=1e-6):
            hint = " You have the negative of it: check the sign of every term."
        elif torch.allclose(out, torch.distributions.kl_divergence(p, q), rtol=1e-4, atol=1e-6):
            hint = " That is KL(Dir(c0) || Dir(beta)): the expectation is under q = Dir(beta)."
        elif bool((out < -1e-6).any()):
            hint += " A KL is never negative."
        require(False, f"for c0 = {c0} and beta row 0 = {[round(v, 3) for v in beta[0].tolist()]} expected "
                       f"KL {want[0].item():.5f}, got {out[0].item():.5f}.{hint}")
    beta.requires_grad_()
    out = call(fn, beta, 1.0).sum()
    require(out.requires_grad, "the KL is not differentiable w.r.t. beta: use torch.lgamma and "
                               "torch.digamma, not math or scipy.")
    require(math.isfinite(out.item()), "the KL is not finite for moderate beta.")
    return ("dirichlet_kl: matches torch.distributions.kl_divergence per edge, is 0 at beta = c0, and is "
           "differentiable.")
