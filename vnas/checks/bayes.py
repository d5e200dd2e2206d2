"""Checkers for the exercises of chapter 05: the local reparameterisation of a linear layer, and the KL of
a weight under the coupled prior.

Each checker compares the reader's function with ``vnas.bayes`` on random cases and, when they differ,
tries the usual slips (a missing square, a standard deviation for a variance, a prior variance instead of a
prior scale) to say in words which one it is.
Introduced in chapters/05_bayesian_weights.py.
"""

from __future__ import annotations

import torch

from vnas import bayes
from vnas.checks._common import ExerciseError, NotAttempted, call, checker, require

__all__ = ["check_local_reparameterisation", "check_coupled_kl"]

DTYPE = torch.float64


def _tensor(out, name: str, shape) -> torch.Tensor:
    if out is None:
        raise NotAttempted(f"{name} returned None: return the tensor(s) the exercise asks for.")
    require(isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__}; return a torch tensor.")
    require(tuple(out.shape) == tuple(shape), f"{name} returned shape {tuple(out.shape)}; expected {tuple(shape)}.")
    return out.to(DTYPE)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-7, atol=1e-10))


# --- exercise (i): the local reparameterisation of a linear layer -------------------------------------

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


# --- exercise (ii): the KL of a weight under the coupled prior -------------------------------------------

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
