"""Checkers for the exercises of chapter 01: a Gaussian KL in closed form, a reparameterised ELBO
estimator, and the closed-form log evidence of Bayesian linear regression.

Each checker compares the reader's function with Monte Carlo and the closed forms of
``vnas.evidence``, and when they differ, tests the usual slips (a sign, a missing term, a
factor) to say in words which one it is.
Introduced in chapters/01_bayesian_model_selection.py.
"""

from __future__ import annotations

import math

import torch

from vnas import evidence as ev
from vnas.checks._common import ExerciseError, NotAttempted, call, checker, require

__all__ = ["check_gaussian_kl", "check_elbo_estimator", "check_log_evidence", "check_bridge_elbo"]

DTYPE = torch.float64


def _number(out, fn_name: str) -> torch.Tensor:
    """The reader's output as a 0-d tensor, or a message about its type or shape."""
    if isinstance(out, (int, float)):
        out = torch.tensor(float(out), dtype=DTYPE)
    require(isinstance(out, torch.Tensor), f"{fn_name} returned {type(out).__name__}; return a torch tensor.")
    require(out.numel() == 1, f"{fn_name} returned shape {tuple(out.shape)}; return one number "
                              "(sum the KL over dimensions / average over samples).")
    return out.reshape(())


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


def _diagnose(value: float, candidates: list[tuple[float, str]], tol: float) -> str | None:
    """The message of the wrong formula nearest the reader's value, if it is within ``tol``."""
    wrong, message = min(candidates, key=lambda c: abs(value - c[0]))
    return message if _close(value, wrong, tol) else None


# --- exercise (i): KL between diagonal Gaussians --------------------------------------------------

def _kl_cases(generator: torch.Generator):
    """(mu_q, s_q, mu_p, s_p) test cases: q == p first (KL = 0), then random ones of growing size."""
    mu = torch.randn(3, generator=generator, dtype=DTYPE)
    s = torch.rand(3, generator=generator, dtype=DTYPE) + 0.5
    cases = [(mu, s, mu.clone(), s.clone())]
    for dim in (1, 3, 6):
        def draw(shape=(dim,)):
            return torch.randn(shape, generator=generator, dtype=DTYPE)
        cases.append((draw(), 0.4 + torch.rand(dim, generator=generator, dtype=DTYPE),
                      draw(), 0.6 + torch.rand(dim, generator=generator, dtype=DTYPE)))
    return cases


def _kl_monte_carlo(mu_q, s_q, mu_p, s_p, n: int, generator) -> tuple[float, float]:
    """E_q[log q(w) - log p(w)] from n samples of q: (estimate, standard error)."""
    w = mu_q + s_q * torch.randn(n, len(mu_q), generator=generator, dtype=DTYPE)
    log_ratio = (torch.distributions.Normal(mu_q, s_q).log_prob(w)
                 - torch.distributions.Normal(mu_p, s_p).log_prob(w)).sum(-1)
    return log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(n)


def _kl_slips(mu_q, s_q, mu_p, s_p, ref: float) -> list[tuple[float, str]]:
    """Values that common wrong formulas give, each with what to fix."""
    kl = ev.kl_gaussian_diag
    log_det = (s_p / s_q).log().sum().item()
    return [
        (-ref, "wrong sign: KL(q || p) >= 0, and yours is minus the right value."),
        (ref - log_det, "the log-determinant term sum_j log(s_p,j / s_q,j) is missing."),
        (ref + log_det, "the log-determinant term has the wrong sign: it is + sum_j log(s_p,j / s_q,j)."),
        (2 * ref, "off by a factor of 2: the whole bracket is multiplied by 1/2."),
        (ref / 2, "off by a factor of 1/2: the 1/2 was applied twice."),
        (kl(mu_p, s_p, mu_q, s_q).item(), "you computed KL(p || q): the arguments are swapped, and KL is "
                                          "not symmetric."),
        (kl(mu_q, s_q.sqrt(), mu_p, s_p.sqrt()).item(), "the s arguments are standard deviations, but your "
                                                        "formula treats them as variances."),
        (ref / len(mu_q), "you averaged over dimensions; the KL of a diagonal Gaussian is their sum."),
    ]


@checker
def check_gaussian_kl(fn) -> str:
    """Check ``fn(mu_q, s_q, mu_p, s_p)`` = KL(N(mu_q, diag s_q^2) || N(mu_p, diag s_p^2)) (s: standard
    deviations, result summed over dimensions) against Monte Carlo and the closed form.

    Introduced in chapters/01_bayesian_model_selection.py, exercise (i), Eq. (1.9).
    """
    generator = torch.Generator().manual_seed(101)
    worst = (0.0, 0.0, 0.0)
    for i, (mu_q, s_q, mu_p, s_p) in enumerate(_kl_cases(generator)):
        value = _number(call(fn, mu_q.clone(), s_q.clone(), mu_p.clone(), s_p.clone()), fn.__name__).item()
        ref = ev.kl_gaussian_diag(mu_q, s_q, mu_p, s_p).item()
        tol = 1e-6 * (1 + abs(ref))
        if i == 0:
            require(_close(value, 0.0, tol), f"KL(q || q) must be 0 (q and p identical), got {value:.4g}.")
            continue
        mc, se = _kl_monte_carlo(mu_q, s_q, mu_p, s_p, 40_000, generator)
        if not _close(value, ref, tol):
            slip = _diagnose(value, _kl_slips(mu_q, s_q, mu_p, s_p, ref), tol)
            where = f"In {len(mu_q)} dimension(s) your KL = {value:.4f}; Monte Carlo E_q[log q - log p] = " \
                    f"{mc:.4f} +- {se:.4f}."
            raise ExerciseError(f"{where} {slip or 'Compare your formula with Eq. (1.9) term by term.'}")
        if se > worst[2]:
            worst = (value, mc, se)
    value, mc, se = worst
    return (f"KL matches the closed form and Monte Carlo on {i} random cases "
           f"(e.g. {value:.4f} vs MC {mc:.4f} +- {se:.4f}), and KL(q || q) = 0.")


# --- exercise (ii): the reparameterised ELBO estimator -------------------------------------------

def _elbo_case() -> tuple[ev.LinearModel, torch.Tensor, torch.Tensor]:
    """A small quadratic-regression model and a q = N(mu, diag s^2) away from its posterior."""
    generator = torch.Generator().manual_seed(202)
    x, y = ev.sample_poly_data(15, [0.3, -1.0, 0.8], 0.3, generator)
    model = ev.LinearModel(ev.poly_features(x, 2), y, alpha=0.5, sigma=0.3)
    m_n, s_n = ev.posterior(model)
    sd_n = s_n.diagonal().sqrt()
    # Near the posterior, so that the estimator's spread is small next to the slips it must tell apart.
    mu = m_n + torch.tensor([1.0, -0.5, 0.5], dtype=DTYPE) * sd_n
    log_s = (torch.tensor([0.5, 0.8, 0.3], dtype=DTYPE) * sd_n).log()
    return model, mu, log_s


def _draws(fn, model, mu, log_s, n_samples: int, repeats: int):
    """Repeated estimates and their gradients w.r.t. (mu, log s): tensors (R,), (R, M), (R, M)."""
    values, grads_mu, grads_log_s = [], [], []
    for i in range(repeats):
        mu_, log_s_ = mu.clone().requires_grad_(True), log_s.clone().requires_grad_(True)
        out = _number(call(fn, model, mu_, log_s_.exp(), n_samples), fn.__name__)
        require(out.requires_grad, "the estimate is not differentiable w.r.t. mu and s: it must stay a "
                                   "torch computation of w = mu + s * eps (no .item(), .detach(), numpy, "
                                   ".sample()).")
        g_mu, g_log_s = torch.autograd.grad(out, [mu_, log_s_], allow_unused=True)
        for name, grad in [("mu", g_mu), ("s", g_log_s)]:
            require(grad is not None, f"the estimate does not depend on {name}: build the samples as "
                                      "w = mu + s * eps.")
        values.append(out.item())
        if i == 1:  # fail fast on a deterministic answer
            require(values[1] != values[0], "two calls returned the same number: the estimator must draw "
                                            "fresh noise eps on every call.")
        grads_mu.append(g_mu)
        grads_log_s.append(g_log_s)
    return torch.tensor(values, dtype=DTYPE), torch.stack(grads_mu), torch.stack(grads_log_s)


def _elbo_slips(model, mu, s, n_samples: int) -> list[tuple[float, str]]:
    cov = torch.diag(s**2)
    expected_ll = ev.expected_log_lik(model, mu, cov).item()
    kl = ev.kl_gaussian(mu, cov, torch.zeros_like(mu), torch.eye(model.m, dtype=DTYPE) / model.alpha).item()
    log_det = (model.alpha**-0.5 / s).log().sum().item()
    log_norm = -model.n / 2 * math.log(2 * math.pi * model.sigma**2)
    return [
        (-(expected_ll - kl), "sign flipped: you returned -ELBO (the loss an optimiser minimises); "
                              "return the ELBO itself."),
        (expected_ll + kl, "the KL term has the wrong sign: ELBO = E_q[log p(y | w)] - KL(q || p)."),
        (expected_ll, "the KL(q || p) term is missing."),
        (expected_ll - kl + log_det, "the KL is missing its log-determinant term sum_j log(s_p / s_j)."),
        (expected_ll - log_norm - kl, "the log-likelihood is missing its normalising constant "
                                      "-N/2 log(2 pi sigma^2)."),
        (n_samples * expected_ll - kl, f"off by a factor of S = {n_samples} in the data term: average the "
                                       "log-likelihood over the samples, don't sum it."),
        (expected_ll / model.n - kl, f"the log-likelihood is averaged over the N = {model.n} data points; "
                                     "log p(y | w) is their sum."),
        (expected_ll - 2 * kl, "off by a factor of 2 in the KL term."),
    ]


@checker
def check_elbo_estimator(fn, repeats: int = 300, n_samples: int = 4) -> str:
    """Check ``fn(model, mu, s, n_samples)``: a Monte Carlo estimate of the ELBO of
    q = N(mu, diag s^2) for ``model`` (an ``evidence.LinearModel``) that is unbiased against the
    closed form within Monte Carlo error, random, with no more spread than the average of ``n_samples`` draws
    (an estimator that ignores n_samples is unbiased too), and differentiable w.r.t. mu and s with unbiased
    gradients (the reparameterisation w = mu + s * eps).

    Introduced in chapters/01_bayesian_model_selection.py, exercise (ii), Eq. (1.11).
    """
    model, mu, log_s = _elbo_case()
    s = log_s.exp()
    with torch.random.fork_rng(), ev._one_thread():  # leave the reader's random stream where it was
        torch.manual_seed(303)
        values, g_mu, g_log_s = _draws(fn, model, mu, log_s, n_samples, repeats)
    mean, se = values.mean().item(), values.std().item() / math.sqrt(repeats)
    require(se > 0, "every call returned the same number: the estimator must draw fresh noise eps each call.")
    exact = ev.elbo(model, mu, torch.diag(s**2)).item()
    if not _close(mean, exact, 5 * se + 1e-9):
        slip = _diagnose(mean, _elbo_slips(model, mu, s, n_samples), 5 * se + 1e-9)
        raise ExerciseError(f"Over {repeats} calls your estimates average {mean:.3f} +- {se:.3f}, but the "
                            f"closed-form ELBO is {exact:.3f}. "
                            f"{slip or 'The estimate is biased: compare it with Eq. (1.11) term by term.'}")
    # The spread: S draws divide the variance of one draw by S. An estimator that ignores n_samples (one draw
    # per call, or one eps repeated) is unbiased too, and only its spread gives it away. The local
    # reparameterisation is also right and has a smaller spread, so only a spread above the plain S-sample
    # estimator's counts (the sample variance of 300 calls is within ~8% of its expectation; 2x is far out).
    with torch.random.fork_rng(), ev._one_thread():
        one_draw = ev.log_lik_samples(model, mu, s, 20_000, False, torch.Generator().manual_seed(304))
    expected_var, var = one_draw.var().item() / n_samples, values.var().item()
    require(var < 2 * expected_var,
            f"your estimates vary as if they used fewer draws than n_samples = {n_samples}: their variance over "
            f"{repeats} calls is {var:.3g}, while the average of {n_samples} draws of log p(y | w) has variance "
            f"{expected_var:.3g} (one draw: {expected_var * n_samples:.3g}). Draw n_samples independent eps, a "
            "tensor [n_samples, M], and average the log-likelihood over them.")
    # Gradients: the average of the per-call gradients must match the closed form's gradient.
    mu_, log_s_ = mu.clone().requires_grad_(True), log_s.clone().requires_grad_(True)
    exact = ev.elbo(model, mu_, torch.diag(log_s_.exp() ** 2))
    exact_mu, exact_log_s = torch.autograd.grad(exact, [mu_, log_s_])
    for name, grads, exact_grad in [("mu", g_mu, exact_mu), ("s", g_log_s, exact_log_s)]:
        se_grad = grads.std(0) / math.sqrt(repeats)
        ok = (grads.mean(0) - exact_grad).abs() <= 6 * se_grad + 1e-6 * (1 + exact_grad.abs())
        require(bool(ok.all()), f"the gradient w.r.t. {name} is biased (its average over {repeats} calls "
                                "is not the exact gradient): the samples must be a differentiable "
                                "function w = mu + s * eps, not drawn with .sample() or detached.")
    return (f"unbiased: mean of {repeats} estimates {mean:.3f} +- {se:.3f} vs closed form {exact:.3f}; "
           f"random, with the spread of {n_samples} draws; gradients w.r.t. mu and s unbiased.")


# --- exercise (iii): the log evidence in closed form ------------------------------------------------

def _evidence_cases():
    """Linear models: a constant (M = 1), a line on [0, 1] (a correlated posterior), a cubic, and more features
    than data (M = 7 > N = 4), with priors and noise levels that make every term of (1.8) count."""
    generator = torch.Generator().manual_seed(808)
    for n, degree, alpha, sigma, low in ((6, 0, 2.0, 0.5, -1.0), (20, 1, 1.0, 0.3, 0.0), (12, 3, 0.3, 0.2, -1.0),
                                         (4, 6, 5.0, 1.5, -1.0)):
        x, y = ev.sample_poly_data(n, [0.5, -1.0, 0.8, 1.2][: degree + 1], sigma, generator, low=low, high=1.0)
        yield ev.LinearModel(ev.poly_features(x, degree), y, alpha=alpha, sigma=sigma)


def _evidence_slips(model) -> list[tuple[float, str]]:
    """The log evidence with one term of (1.8) wrong, each with what to fix."""
    m_n, _ = ev.posterior(model)
    fit = (model.y - model.phi @ m_n).square().sum().item() / (2 * model.sigma**2)
    weights = model.alpha / 2 * (m_n @ m_n).item()
    logdet = torch.logdet(ev.posterior_precision(model)).item()
    prior = model.m / 2 * math.log(model.alpha)
    noise = -model.n / 2 * math.log(2 * math.pi * model.sigma**2)
    ref = prior + noise - fit - weights - logdet / 2
    at_zero = model.y.square().sum().item() / (2 * model.sigma**2)
    return [
        (ref - prior, "the prior's normaliser M/2 log alpha is missing."),
        (ref - 2 * prior, "M/2 log alpha has the wrong sign: a prior precision alpha enters as +M/2 log alpha."),
        (ref + logdet, "-1/2 log|Lambda| has the wrong sign (or you took log|S_N| = -log|Lambda|): the Occam factor "
                       "lowers the evidence."),
        (ref + logdet / 2, "the Occam factor -1/2 log|Lambda| is missing."),
        (ref - logdet / 2, "log|Lambda| is counted twice: it enters as -1/2 log|Lambda|."),
        (ref + weights, "E(m_N) lacks the prior's term alpha/2 m_N^T m_N."),
        (ref + fit + weights - at_zero, "E is evaluated at w = 0; evaluate it at the posterior mean m_N of (1.7)."),
        (ref - noise - model.n / 2 * math.log(2 * math.pi * model.sigma), "the noise normaliser is "
                                                                         "-N/2 log(2 pi sigma^2): sigma squared."),
        (ref - noise, "the noise normaliser -N/2 log(2 pi sigma^2) is missing."),
        (ref + fit - fit * model.sigma, "the data fit is ||y - Phi m_N||^2 / (2 sigma^2): divide by sigma squared."),
    ]


@checker
def check_log_evidence(fn) -> str:
    """Check ``fn(model)`` = log p(D) of Bayesian linear regression (an ``evidence.LinearModel``) in closed form,
    M/2 log alpha - N/2 log(2 pi sigma^2) - E(m_N) - 1/2 log|Lambda|, against ``evidence.log_evidence`` and the
    N-dimensional Gaussian density log N(y | 0, sigma^2 I + alpha^-1 Phi Phi^T), on four models (M = 1 to M > N).

    Introduced in chapters/01_bayesian_model_selection.py, exercise (iii), Eq. (1.8).
    """
    name = getattr(fn, "__name__", "your function")
    for i, model in enumerate(_evidence_cases()):
        value = _number(call(fn, model), name).item()
        ref = ev.log_evidence(model).item()
        cov = model.sigma**2 * torch.eye(model.n, dtype=DTYPE) + model.phi @ model.phi.T / model.alpha
        density = torch.distributions.MultivariateNormal(torch.zeros(model.n, dtype=DTYPE), cov).log_prob(model.y)
        tol = 1e-7 * (1 + abs(ref))
        if _close(value, ref, tol):
            continue
        slip = _diagnose(value, _evidence_slips(model), tol)
        raise ExerciseError(f"Case {i} (N = {model.n} points, M = {model.m} features, alpha = {model.alpha}, "
                            f"sigma = {model.sigma}): log p(D) = {ref:.6f} (as an N-dimensional Gaussian density "
                            f"{density.item():.6f}); yours is {value:.6f}. "
                            f"{slip or 'Compare with Eq. (1.8) term by term.'}")
    return ("log evidence: matches Eq. (1.8) and the N-dimensional Gaussian density on 4 models, from M = 1 "
            "to more features than data.")


# --- chapter 04: the search's per-datum objective on the exact bridge --------------------------------

def _bridge_cases():
    """(log_lik_samples [S], kl_per_edge [E], num_data) cases with S > 1 and N > 1, so that every slip shows."""
    generator = torch.Generator().manual_seed(404)
    cases = []
    for samples, edges, num_data in ((4, 3, 50), (16, 6, 7), (9, 1, 1000)):
        log_lik = -num_data * (1 + torch.rand(samples, generator=generator, dtype=DTYPE))
        kl = 0.1 + 3 * torch.rand(edges, generator=generator, dtype=DTYPE)
        cases.append((log_lik, kl, num_data))
    return cases


def _bridge_slips(log_lik, kl, n: int) -> list[tuple[float, str]]:
    mean_ll, kl_sum = log_lik.mean().item(), kl.sum().item()
    return [
        (-mean_ll / n + kl_sum, "divide the KL by num_data too: the objective is per datum, and so is its KL "
                                "term (the likelihood is divided, the KL is not)."),
        (-mean_ll + kl_sum / n, "divide the log-likelihood by num_data too: it is the total over the data set."),
        (mean_ll / n - kl_sum / n, "wrong sign: that is the ELBO / N; the search minimises its negative."),
        (-mean_ll / n - kl_sum / n, "the KL enters with a + sign in -ELBO: objective = nll + KL / N."),
        (-log_lik.sum().item() / n + kl_sum / n, "average the log-likelihood over the samples of theta, don't "
                                                 "sum them (a Monte Carlo estimate is a mean)."),
        (-mean_ll / n + kl.mean().item() / n, "sum the KL over the edges: each edge has its own prior term."),
        (-mean_ll + kl_sum, "this is -ELBO in total; divide the whole objective by num_data."),
    ]


@checker
def check_bridge_elbo(fn) -> str:
    """Check ``fn(log_lik_samples, kl_per_edge, num_data)``: the per-datum negative ELBO that the search
    minimises, -mean_s log p(D | theta_s) / N + sum_e KL(q(theta_e) || p(theta_e)) / N (``log_lik_samples``: the
    total log-likelihood of the data set for each of S samples of theta, shape [S]; ``kl_per_edge``: [E]). It
    must be one number, differentiable in both inputs.

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2).
    """
    name = getattr(fn, "__name__", "your function")
    for i, (log_lik, kl, n) in enumerate(_bridge_cases()):
        log_lik_, kl_ = log_lik.clone().requires_grad_(True), kl.clone().requires_grad_(True)
        out = call(fn, log_lik_, kl_, n)
        if out is None:
            raise NotAttempted(f"{name} returned None: return the objective (a 0-d tensor).")
        require(isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__}; return a torch tensor "
                                               "(keep it a torch computation so that it can be differentiated).")
        require(out.numel() == 1, f"{name} returned shape {tuple(out.shape)}; return one number: average the "
                                  "log-likelihood over the samples and sum the KL over the edges.")
        value = out.reshape(()).item()
        want = (-log_lik.mean() / n + kl.sum() / n).item()
        tol = 1e-9 * (1 + abs(want))
        if not _close(value, want, tol):
            slip = _diagnose(value, _bridge_slips(log_lik, kl, n), tol)
            raise ExerciseError(f"Case {i} (S = {len(log_lik)} samples, E = {len(kl)} edges, num_data = {n}): "
                                f"expected {want:.6g}, got {value:.6g}. "
                                f"{slip or 'Compare with Eq. (4.2): objective = nll + KL / N.'}")
        grads = torch.autograd.grad(out.reshape(()), [log_lik_, kl_], allow_unused=True) if out.requires_grad \
            else (None, None)
        require(all(g is not None for g in grads), "the objective is not differentiable in both inputs: keep it a "
                                                   "torch computation (no .item(), .detach() or floats).")
    return "per-datum -ELBO: -mean over samples of log p(D | theta) / N + sum over edges of KL / N."
