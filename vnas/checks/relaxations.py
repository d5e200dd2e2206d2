"""Checkers for the exercises of chapters/03_stochastic_relaxations.py: a Gumbel-softmax sampler, the
straight-through hard Gumbel sample, and the closed-form Dirichlet KL. Each says in words what is wrong, or
prints one line saying what passed.
"""

from __future__ import annotations

import math

import torch

from vnas.checks._common import call, checker, require
from vnas.posteriors import dirichlet_kl, gumbel_softmax_sample

__all__ = ["check_gumbel_softmax", "check_straight_through", "check_dirichlet_kl"]

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


def _straight_through_cases():
    """(logits, g, tau, want): the noise drawn as ``gumbel_softmax_sample`` draws it from a seeded generator, and
    want = ``gumbel_softmax_sample(logits, tau, generator, hard=True)`` with the same seed. Shapes: one edge, an
    NB201 cell [6, 5], and a batch of DARTS cells [2, 14, 8]; temperatures below, at and above 1."""
    for seed, shape, tau in ((0, (4,), 1.0), (1, (6, 5), 0.5), (2, (2, 14, 8), 5.0)):
        logits = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        g = -torch.log(-torch.log(u))
        want = gumbel_softmax_sample(logits, tau, torch.Generator().manual_seed(seed), hard=True)
        library_grad = _logit_gradient(
            lambda a, tau=tau, seed=seed: gumbel_softmax_sample(a, tau, torch.Generator().manual_seed(seed), hard=True),
            logits, _grad_weights(logits))
        yield logits, g, tau, want, library_grad


def _grad_weights(logits):
    """A fixed random direction: the check differentiates sum(y * weights) with respect to the logits."""
    return torch.randn(logits.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _logit_gradient(y_fn, logits, weights):
    leaf = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((y_fn(leaf) * weights).sum(), leaf)
    return grad


@checker
def check_straight_through(fn) -> str:
    """Check ``fn(logits, g, tau)``: the straight-through hard Gumbel sample of Eq. (3.5) for given Gumbel noise
    g, y = onehot(argmax(logits + g)) + y_soft - sg(y_soft), y_soft = softmax((logits + g) / tau) over the last
    dimension. Forward: exactly one-hot (the zeros exactly 0.0). Backward: the soft sample's gradient. Compared
    with ``vnas.posteriors.gumbel_softmax_sample(..., hard=True)`` drawn with the same noise.

    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.5).
    """
    name = getattr(fn, "__name__", "your function")
    for k, (logits, g, tau, want, ref) in enumerate(_straight_through_cases()):
        where = f"Case {k} (logits of shape {tuple(logits.shape)}, tau = {tau})"
        y = call(fn, logits.clone(), g.clone(), tau)
        require(torch.is_tensor(y), f"{name} returned {type(y).__name__}; return a tensor.")
        require(y.shape == logits.shape, f"{where}: the sample must have the logits' shape {tuple(logits.shape)}, "
                                         f"got {tuple(y.shape)}.")
        y = y.detach().to(torch.float64)
        soft = torch.softmax((logits + g) / tau, -1)
        if not torch.allclose(y, want, rtol=0, atol=1e-9):
            no_noise = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(y)
            require(not torch.allclose(y, soft, atol=1e-6), f"{where}: that is the soft sample y_soft; the forward "
                                                            "value of (3.5) is the one-hot onehot(argmax y_soft).")
            require(not torch.equal(y, no_noise), f"{where}: that is the one-hot of argmax(logits), without the "
                                                  "noise: it is the same op every time. Take the argmax of "
                                                  "logits + g.")
            require(not bool(((y - want).abs() < 1e-3).all()),
                    f"{where}: the forward value must be exactly one-hot, and yours is only close to it (largest "
                    f"difference {(y - want).abs().max().item():.1e}): use onehot(argmax) plus "
                    "(y_soft - y_soft.detach()), which is exactly 0 forward.")
            require(False, f"{where}: each row must be the one-hot of argmax(logits + g) over the last dimension "
                           "(the ops), and it is not.")
        require(bool((y[want == 0] == 0).all()), f"{where}: the unselected ops must get exactly 0.0 (the supernet "
                                                 "skips them), and yours are only near 0 (up to "
                                                 f"{y[want == 0].abs().max().item():.1e}): a cold softmax is not an "
                                                 "argmax. Use onehot(argmax) plus (y_soft - y_soft.detach()).")
        weights = _grad_weights(logits)
        leaf = logits.clone().requires_grad_(True)
        out = call(fn, leaf, g.clone(), tau)
        require(out.requires_grad, f"{where}: no gradient reaches the logits: the one-hot has none, so add "
                                   "y_soft - sg(y_soft), which is 0 forward and carries y_soft's gradient.")
        (grad,) = torch.autograd.grad((out * weights).sum(), leaf, allow_unused=True)
        grad = torch.zeros_like(logits) if grad is None else grad
        if torch.allclose(grad, ref, rtol=1e-6, atol=1e-9):
            continue
        slips = [(torch.zeros_like(ref), "no gradient gets through to the logits: the backward pass must be that of "
                                         "y_soft, so add y_soft - y_soft.detach() (without the .detach() the two "
                                         "cancel in the backward pass too)."),
                 (-ref, "the gradient has the wrong sign: it is + y_soft - sg(y_soft), not - y_soft + sg(y_soft)."),
                 (_logit_gradient(lambda a, g=g: torch.softmax(a + g, -1), logits, weights),
                  "that is the gradient of softmax(logits + g): divide by tau, y_soft = softmax((logits + g) / tau)."),
                 (_logit_gradient(lambda a: torch.softmax(a, -1), logits, weights),
                  "that is the gradient of softmax(logits), without the noise: y_soft = softmax((logits + g) / tau).")]
        hint = next((m for wrong, m in slips if torch.allclose(grad, wrong, rtol=1e-6, atol=1e-9)),
                    "the backward pass must be that of y_soft = softmax((logits + g) / tau).")
        require(False, f"{where}: the forward value is right, but {hint}")
    return ("straight-through: exactly one-hot forward at argmax(logits + g), the soft sample's gradient "
            "backward.")


def _kl_without_psi0(beta, c0):
    """Eq. (3.9) with E_q[log theta_k] taken as psi(beta_k): a slip the checker names."""
    gamma = torch.full_like(beta, c0)
    return dirichlet_kl(beta, c0) + ((beta - gamma) * torch.digamma(beta.sum(-1, keepdim=True))).sum(-1)


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
        elif torch.allclose(out * beta.shape[-1], want, rtol=1e-4, atol=1e-6):
            hint = " You averaged over the ops; the KL of an edge is a sum over them."
        elif torch.allclose(out, _kl_without_psi0(beta, c0), rtol=1e-4, atol=1e-6):
            hint = " E_q[log theta_k] = psi(beta_k) - psi(beta_0): the psi(beta_0) term is missing."
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
