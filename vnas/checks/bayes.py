"""Checkers for the exercises of chapter 05: the KL of a mean-field layer from its parameters (μ, ρ), the local
reparameterisation of a linear layer, and the KL of a weight under the coupled prior.

Each checker compares the reader's function with ``vnas.bayes`` on random cases and, when they differ,
tries the usual slips (a missing square, a standard deviation for a variance, a prior variance instead of a
prior scale) to say in words which one it is.
Introduced in chapters/05_bayesian_weights.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vnas import bayes
from vnas.checks._common import ExerciseError, NotAttempted, call, checker, require

__all__ = ["check_mean_field_kl", "check_local_reparameterisation", "check_coupled_kl"]

DTYPE = torch.float64


def _tensor(out, name: str, shape) -> torch.Tensor:
    if out is None:
        raise NotAttempted(f"{name} returned None: return the tensor(s) the exercise asks for.")
    require(isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__}; return a torch tensor.")
    require(tuple(out.shape) == tuple(shape), f"{name} returned shape {tuple(out.shape)}; expected {tuple(shape)}.")
    return out.to(DTYPE)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-7, atol=1e-10))


# --- exercise (i): the KL of a mean-field layer from its parameters, Eqs. (5.1)-(5.2) --------------------

def _mean_field_cases(generator):
    """(mu, rho, s): q = p exactly (KL 0), a vector, a convolution's weight [out, in, k, k] at Bayes by backprop's
    usual start (small σ), and weights whose ρ is so negative that σ = softplus(ρ) ≈ e^ρ underflows a naive
    log(1 + e^ρ)."""
    yield torch.zeros(1, dtype=DTYPE), torch.tensor([math.log(math.expm1(0.5))], dtype=DTYPE), 0.5
    yield (torch.randn(5, generator=generator, dtype=DTYPE), -3 + 4 * torch.rand(5, generator=generator, dtype=DTYPE),
           1.0)
    yield (0.1 * torch.randn(4, 3, 3, 3, generator=generator, dtype=DTYPE),
           -5 + torch.rand(4, 3, 3, 3, generator=generator, dtype=DTYPE), 0.1)
    yield (0.2 * torch.randn(6, generator=generator, dtype=DTYPE),
           torch.tensor([-40.0, -38.0, -2.0, 0.0, 1.0, 3.0], dtype=DTYPE), 0.3)


@checker
def check_mean_field_kl(fn) -> str:
    """Check ``fn(mu, rho, s)``: Σ_i KL(N(μ_i, σ_i²) || N(0, s²)) with σ = softplus(ρ), Eqs. (5.1)-(5.2), for μ and
    ρ of any shape: one number, differentiable in μ and ρ, compared with ``vnas.bayes.gaussian_kl``.

    Introduced in chapters/05_bayesian_weights.py, Eq. (5.2)."""
    name = getattr(fn, "__name__", "your function")
    generator = torch.Generator().manual_seed(51)
    for i, (mu, rho, s) in enumerate(_mean_field_cases(generator)):
        mu_, rho_ = mu.clone().requires_grad_(True), rho.clone().requires_grad_(True)
        out = call(fn, mu_, rho_, s)
        require(not (isinstance(out, torch.Tensor) and out.numel() > 1),
                f"{name} returned shape {tuple(out.shape)}: return one number, the KL summed over the weights.")
        value = _tensor(out.reshape(()) if isinstance(out, torch.Tensor) and out.numel() == 1 else out, name, ())
        value = value.detach()
        sigma = F.softplus(rho)
        want = bayes.gaussian_kl(mu, sigma, s)
        where = f"Case {i} (μ of shape {tuple(mu.shape)}, s = {s})"
        if not _close(value, want):
            require(not bool(torch.isnan(value)), f"{where}: the KL is NaN. Is there a log or a square root of ρ? ρ "
                                                  "may be any real number; σ = softplus(ρ) is the positive one.")
            require(not (math.isinf(value.item()) and bool((torch.log(1 + torch.exp(rho)) == 0).any())),
                    f"{where}: the KL is infinite. For ρ = {rho.min().item():g}, log(1 + e^ρ) rounds 1 + e^ρ to 1 and "
                    "gives σ = 0, log σ = −∞: use F.softplus(ρ) (or torch.log1p(torch.exp(ρ))), which keeps σ ≈ e^ρ.")
            n = mu.numel()
            slips = [(bayes.gaussian_kl(mu, torch.exp(rho), s), "σ = softplus(ρ) = log(1 + e^ρ), not e^ρ."),
                     (bayes.gaussian_kl(mu, sigma.sqrt(), s), "softplus(ρ) is the standard deviation σ, not the "
                                                              "variance: the KL has σ², softplus(ρ)²."),
                     (bayes.gaussian_kl(mu, sigma, s * s), "s is the prior's standard deviation, N(0, s²): the KL "
                                                           "has log s and s², not log s² and s⁴."),
                     (bayes.gaussian_kl(mu, sigma, math.sqrt(s)), "s is the prior's standard deviation, N(0, s²), "
                                                                  "not its variance."),
                     (want + 0.5 * n, "the KL has a −½ per weight (it is 0 when q = p)."),
                     (-want, "wrong sign: a KL is never negative."),
                     (want / n, "sum over the weights, do not average."),
                     ((torch.log(sigma / s) + (s**2 + mu**2) / (2 * sigma**2) - 0.5).sum(),
                      "that is KL(p || q): the expectation is under q(w), Eq. (5.2).")]
            hint = next((m for wrong, m in slips if _close(value, wrong.reshape(()))),
                        "compare with Eqs. (5.1) and (5.2).")
            raise ExerciseError(f"{where}: expected {want.item():.6g}, got {value.item():.6g}; {hint}")
        require(out.requires_grad, f"{name}'s result is not differentiable: keep it a torch computation of μ and ρ "
                                   "(no .item(), .detach() or numpy), as Bayes by backprop trains both.")
        grads = torch.autograd.grad(out.reshape(()), [mu_, rho_], allow_unused=True)
        mu_ref, rho_ref = mu.clone().requires_grad_(True), rho.clone().requires_grad_(True)
        ref = torch.autograd.grad(bayes.gaussian_kl(mu_ref, F.softplus(rho_ref), s), [mu_ref, rho_ref])
        for label, got, exact in zip(("μ", "ρ"), grads, ref, strict=True):
            require(got is not None and _close(got, exact), f"{where}: the gradient with respect to {label} is wrong "
                                                            "or missing: keep every term a torch computation of μ and "
                                                            "ρ (no .detach()), with σ = softplus(ρ) inside.")
    return "Σ KL(N(μ, softplus(ρ)²) || N(0, s²)) over a layer's weights, differentiable in μ and ρ."


# --- exercise (ii): the local reparameterisation of a linear layer ------------------------------------

def _linear_cases(generator):
    for n, d_in, d_out in ((1, 1, 1), (4, 3, 2), (7, 5, 6)):
        x = torch.randn(n, d_in, generator=generator, dtype=DTYPE)
        mu = torch.randn(d_out, d_in, generator=generator, dtype=DTYPE)
        sigma = 0.1 + torch.rand(d_out, d_in, generator=generator, dtype=DTYPE)
        yield x, mu, sigma


@checker
def check_local_reparameterisation(fn) -> str:
    """Check ``fn(x, mu, sigma) -> (mean, var)``: for a linear layer b = x wᵀ with independent weights
    w_ij ~ N(μ_ij, σ_ij²), the mean [n, out] and the variance [n, out] of every output unit b_ni, Eq. (5.3).

    Introduced in chapters/05_bayesian_weights.py, Eq. (5.3)."""
    name = getattr(fn, "__name__", "your function")
    generator = torch.Generator().manual_seed(5)
    for i, (x, mu, sigma) in enumerate(_linear_cases(generator)):
        out = call(fn, x.clone(), mu.clone(), sigma.clone())
        if out is None:
            raise NotAttempted(f"{name} returned None: return (mean, var).")
        require(isinstance(out, tuple | list) and len(out) == 2,
                f"{name} returned {type(out).__name__}; return a pair (mean, var).")
        shape = (x.shape[0], mu.shape[0])
        mean, var = (_tensor(t, name, shape) for t in out)
        want_mean, want_var = x @ mu.T, (x * x) @ (sigma * sigma).T
        if i == 0:  # gradients must reach μ and σ: Bayes by backprop trains them through these moments
            mu_, sigma_ = mu.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
            pair = call(fn, x.clone(), mu_, sigma_)
            require(all(isinstance(t, torch.Tensor) and t.requires_grad for t in pair),
                    f"{name}'s mean and variance must be differentiable in μ and σ (no .detach(), .item() or "
                    "numpy): the training step differentiates through them.")
        require(_close(mean, want_mean), f"Case {i}: the mean is wrong. Each output unit is Σ_j x_j w_ij, whose "
                                         "mean is Σ_j x_j μ_ij: x @ mu.T.")
        if not _close(var, want_var):
            slips = [(x @ (sigma * sigma).T, "the variance of x_j w_ij is x_j² σ_ij²: square x as well as σ."),
                     ((x @ sigma.T) ** 2, "variances of independent terms add, standard deviations do not: "
                                          "Σ_j x_j² σ_ij², not (Σ_j x_j σ_ij)²."),
                     (torch.sqrt(want_var), "that is the standard deviation; return the variance."),
                     ((x * x) @ sigma.T, "σ is a standard deviation: use σ², not σ."),
                     (x.abs() @ sigma.T, "that sums standard deviations; the variance is Σ_j x_j² σ_ij².")]
            hint = next((m for wrong, m in slips if wrong.shape == var.shape and _close(var, wrong)),
                        "compare with Eq. (5.3): var = x² ⋆ σ².")
            raise ExerciseError(f"Case {i} (x {tuple(x.shape)}, μ {tuple(mu.shape)}): the variance is wrong; {hint}")
    return "mean x μᵀ and variance x² (σ²)ᵀ per output unit: the local reparameterisation of a linear layer."


# --- exercise (iii): the KL of a weight under the coupled prior ------------------------------------------

def _coupled_cases(generator):
    yield torch.tensor([0.0], dtype=DTYPE), torch.tensor([1.0], dtype=DTYPE), 1.0, 1.0, 0.05
    for n in (3, 10):
        mu = 0.3 * torch.randn(n, generator=generator, dtype=DTYPE)
        sigma = 0.05 + 0.2 * torch.rand(n, generator=generator, dtype=DTYPE)
        theta = float(torch.rand((), generator=generator, dtype=DTYPE))
        yield mu, sigma, theta, 0.5 + float(torch.rand((), generator=generator, dtype=DTYPE)), 0.05
    yield 0.3 * torch.ones(4, dtype=DTYPE), 0.1 * torch.ones(4, dtype=DTYPE), 0.0, 1.0, 0.1


def _kl(mu, sigma, s):
    return bayes.gaussian_kl(mu, sigma, torch.as_tensor(s, dtype=DTYPE))


@checker
def check_coupled_kl(fn) -> str:
    """Check ``fn(mu, sigma, theta, sigma0, eps)``: Σ_i KL(N(μ_i, σ_i²) || N(0, s²)) for the weights of one op
    whose mixing weight is θ, under the coupled prior s(θ) = σ0 (θ + ε) / (1 + ε), Eq. (5.5). One number,
    differentiable in θ (``theta`` is passed as a 0-d tensor that requires grad).

    Introduced in chapters/05_bayesian_weights.py, Eq. (5.5)."""
    name = getattr(fn, "__name__", "your function")
    generator = torch.Generator().manual_seed(55)
    for i, (mu, sigma, theta, sigma0, eps) in enumerate(_coupled_cases(generator)):
        t = torch.tensor(theta, dtype=DTYPE, requires_grad=True)
        out = call(fn, mu.clone(), sigma.clone(), t, sigma0, eps)
        value = _tensor(out.reshape(()) if isinstance(out, torch.Tensor) and out.numel() == 1 else out, name, ())
        s = sigma0 * (theta + eps) / (1 + eps)
        want = _kl(mu, sigma, s)
        if not _close(value.detach(), want):
            n = mu.numel()
            slips = [(_kl(mu, sigma, sigma0 * (theta + eps)), "s(θ) is σ0 (θ + ε) / (1 + ε): divide by 1 + ε, so "
                                                              "that a fully selected op (θ = 1) has the plain prior."),
                     (_kl(mu, sigma, sigma0 * ((theta + eps) / (1 + eps)) ** 0.5),
                      "that makes the prior *variance* grow with θ; the course's coupling scales the standard "
                      "deviation: s(θ) = σ0 (θ + ε) / (1 + ε)."),
                     (_kl(mu, sigma, sigma0), "the prior does not depend on θ here: scale it by (θ + ε) / (1 + ε)."),
                     (_kl(mu, sigma, s) + 0.5 * n, "the KL has a −½ per weight (it is 0 when q = p)."),
                     (_kl(mu, sigma, s) - n * torch.log(torch.tensor(s, dtype=DTYPE)),
                      "the log s term is missing: log(s / σ) per weight."),
                     (_kl(mu, sigma, s) / n, "sum over the weights, do not average.")]
            hint = next((m for wrong, m in slips if _close(value.detach(), wrong.reshape(()))),
                        "compare with Eqs. (5.2) and (5.5).")
            raise ExerciseError(f"Case {i} (θ = {theta:.3g}, σ0 = {sigma0:.3g}, ε = {eps}): expected "
                                f"{want.item():.6g}, got {value.item():.6g}; {hint}")
        require(out.requires_grad, f"{name}'s result does not depend on θ through torch: keep θ a tensor (no "
                                   ".item() or float()) so that the gradient reaches the structure posterior.")
        (grad,) = torch.autograd.grad(out.reshape(()), t, allow_unused=True)
        require(grad is not None, f"{name}'s result has no gradient with respect to θ.")
    return "Σ KL(q(w) || N(0, s(θ)²)) with s(θ) = σ0 (θ + ε)/(1 + ε), differentiable in θ."
