"""Tests of vnas.evidence (chapter 01): exact evidence, the ELBO identity, Monte Carlo estimators,
mean-field fitting, degree selection, and the chapter's exercise checkers."""

import math

import matplotlib.pyplot as plt
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from vnas import checks, plots
from vnas import evidence as ev

F64 = torch.float64


@pytest.fixture
def model():
    """A cubic-feature model with a correlated posterior (x on [0, 1])."""
    g = torch.Generator().manual_seed(0)
    x, y = ev.sample_poly_data(15, [0.2, 1.0, -0.5, 0.3], 0.25, g, low=0.0, high=1.0)
    return ev.LinearModel(ev.poly_features(x, 3), y, alpha=0.7, sigma=0.25)


def random_gaussian(m: int, g: torch.Generator, full: bool = True):
    mu = torch.randn(m, generator=g, dtype=F64)
    if full:
        root = torch.randn(m, m, generator=g, dtype=F64)
        return mu, root @ root.T / m + 0.1 * torch.eye(m, dtype=F64)
    return mu, torch.diag(0.1 + torch.rand(m, generator=g, dtype=F64))


def test_log_evidence_is_the_marginal_gaussian_density(model):
    cov_y = model.sigma**2 * torch.eye(model.n, dtype=F64) + model.phi @ model.phi.T / model.alpha
    direct = MultivariateNormal(torch.zeros(model.n, dtype=F64), cov_y).log_prob(model.y)
    assert torch.allclose(ev.log_evidence(model), direct, rtol=1e-10, atol=1e-10)


def test_posterior_is_proportional_to_likelihood_times_prior(model):
    # log p(w | D) - log p(y | w) - log p(w) = -log p(D) for every w (Bayes' rule).
    m_n, s_n = ev.posterior(model)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        w = torch.randn(model.m, generator=g, dtype=F64)
        log_post = MultivariateNormal(m_n, s_n).log_prob(w)
        log_lik = Normal(model.phi @ w, model.sigma).log_prob(model.y).sum()
        log_prior = Normal(0.0, model.alpha**-0.5).log_prob(w).sum()
        assert torch.allclose(log_lik + log_prior - log_post, ev.log_evidence(model), atol=1e-9)


@pytest.mark.parametrize("full", [True, False])
def test_elbo_plus_kl_to_posterior_is_log_evidence(model, full):
    m_n, s_n = ev.posterior(model)
    log_z = ev.log_evidence(model)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        mu, cov = random_gaussian(model.m, g, full)
        elbo = ev.elbo(model, mu, cov)
        assert elbo < log_z
        assert torch.allclose(elbo + ev.kl_gaussian(mu, cov, m_n, s_n), log_z, rtol=1e-9, atol=1e-9)


def test_elbo_is_tight_at_the_exact_posterior(model):
    m_n, s_n = ev.posterior(model)
    assert torch.allclose(ev.elbo(model, m_n, s_n), ev.log_evidence(model), atol=1e-10)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    (mu_q, cov_q), (mu_p, cov_p) = random_gaussian(4, g), random_gaussian(4, g)
    expected = kl_divergence(MultivariateNormal(mu_q, cov_q), MultivariateNormal(mu_p, cov_p))
    assert torch.allclose(ev.kl_gaussian(mu_q, cov_q, mu_p, cov_p), expected, rtol=1e-10)
    s_q, s_p = torch.rand(4, generator=g, dtype=F64) + 0.2, torch.rand(4, generator=g, dtype=F64) + 0.2
    expected = kl_divergence(Normal(mu_q, s_q), Normal(mu_p, s_p)).sum()
    assert torch.allclose(ev.kl_gaussian_diag(mu_q, s_q, mu_p, s_p), expected, rtol=1e-10)
    # The diagonal form is the full form with diagonal covariances.
    full = ev.kl_gaussian(mu_q, torch.diag(s_q**2), mu_p, torch.diag(s_p**2))
    assert torch.allclose(ev.kl_gaussian_diag(mu_q, s_q, mu_p, s_p), full, rtol=1e-10)
    assert ev.kl_gaussian(mu_q, cov_q, mu_q, cov_q).abs() < 1e-12


@pytest.mark.parametrize("local", [False, True])
def test_mc_elbo_is_unbiased_and_differentiable(model, local):
    mu, s = ev.best_mean_field(model)
    s = 1.3 * s
    exact = ev.expected_log_lik(model, mu, torch.diag(s**2))
    draws = ev.log_lik_samples(model, mu, s, 20_000, local, torch.Generator().manual_seed(4))
    se = draws.std() / math.sqrt(len(draws))
    assert (draws.mean() - exact).abs() < 4 * se
    mu, log_s = mu.clone().requires_grad_(True), s.log().clone().requires_grad_(True)
    ev.elbo_mc(model, mu, log_s.exp(), 8, local).backward()
    assert mu.grad is not None and log_s.grad is not None and log_s.grad.abs().sum() > 0


def test_fitted_mean_field_climbs_but_stays_below_the_evidence(model):
    fit = ev.fit_mean_field(model, steps=300, lr=0.05, generator=torch.Generator().manual_seed(5))
    mu_star, s_star = ev.best_mean_field(model)
    best = ev.elbo(model, mu_star, torch.diag(s_star**2))
    assert fit.elbo[-20:].mean() > fit.elbo[0] + 10
    assert (fit.elbo <= best + 1e-9).all()  # nothing in the mean-field family beats q*
    assert best < ev.log_evidence(model) - 0.1  # this posterior is correlated
    assert fit.elbo_mc.shape == fit.elbo.shape == (300,)


def test_best_mean_field_is_the_optimum_and_its_gap_is_hadamards(model):
    mu, s = ev.best_mean_field(model)
    best = ev.elbo(model, mu, torch.diag(s**2))
    for delta in (1e-3, -1e-3):
        for j in range(model.m):
            bump = torch.zeros(model.m, dtype=F64)
            bump[j] = delta
            assert ev.elbo(model, mu + bump, torch.diag(s**2)) < best
            assert ev.elbo(model, mu, torch.diag((s * (1 + bump)) ** 2)) < best
    precision = ev.posterior_precision(model)
    gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    assert torch.allclose(ev.log_evidence(model) - best, gap, rtol=1e-9)


def test_type2_ml_maximises_the_evidence(model):
    fitted = ev.fit_hyperparameters(model)
    best = ev.log_evidence(fitted)
    assert best > ev.log_evidence(model)
    for factor_a, factor_s in [(1.1, 1.0), (0.9, 1.0), (1.0, 1.05), (1.0, 0.95)]:
        nearby = ev.LinearModel(model.phi, model.y, fitted.alpha * factor_a, fitted.sigma * factor_s)
        assert ev.log_evidence(nearby) < best


def test_evidence_picks_the_true_degree_on_a_clear_case():
    g = torch.Generator().manual_seed(6)
    coeffs = [0.3, -1.0, 0.5, 1.2]
    x, y = ev.sample_poly_data(60, coeffs, 0.1, g)
    x_test, y_test = ev.sample_poly_data(500, coeffs, 0.1, g)
    sel = ev.select_degree(x, y, x_test, y_test, range(8), alpha=1.0, sigma=0.1)
    assert sel.best == 3
    assert sel.train_rmse[-1] < sel.train_rmse[3]  # the training error would pick a bigger model
    assert sel.log_evidence.shape == (8,) and (sel.alpha == 1.0).all()


def test_bad_inputs_raise_value_errors(model):
    with pytest.raises(ValueError, match="alpha"):
        ev.LinearModel(model.phi, model.y, alpha=-1.0, sigma=1.0)
    with pytest.raises(ValueError, match="rows"):
        ev.LinearModel(model.phi, model.y[:-1], alpha=1.0, sigma=1.0)
    with pytest.raises(ValueError, match="degree"):
        ev.poly_features(torch.zeros(3), -1)
    with pytest.raises(ValueError, match="n_samples"):
        ev.elbo_mc(model, torch.zeros(model.m, dtype=F64), torch.ones(model.m, dtype=F64), n_samples=0)
    with pytest.raises(ValueError, match="positive definite"):
        ev.kl_gaussian(torch.zeros(2, dtype=F64), -torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64),
                       torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="positive"):
        ev.kl_gaussian_diag(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="mu must have shape"):
        ev.elbo(model, torch.zeros(model.m + 1, dtype=F64), torch.eye(model.m, dtype=F64))


# --- the exercise checkers ------------------------------------------------------------------------

def kl_right(mu_q, s_q, mu_p, s_p):
    return (torch.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5).sum()


def test_kl_checker_passes_a_correct_solution():
    result = checks.check_gaussian_kl(kl_right)
    assert result.passed and "KL matches" in result.reason


@pytest.mark.parametrize("wrong, message", [
    (lambda mq, sq, mp, sp: -kl_right(mq, sq, mp, sp), "wrong sign"),
    (lambda mq, sq, mp, sp: ((sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(), "log-determinant"),
    (lambda mq, sq, mp, sp: kl_right(mp, sp, mq, sq), "swapped"),
    (lambda mq, sq, mp, sp: 2 * kl_right(mq, sq, mp, sp), "factor of 2"),
    (lambda mq, sq, mp, sp: torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5, "one number"),
])
def test_kl_checker_names_the_mistake(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_gaussian_kl(wrong)


def make_estimator(sign=1.0, kl_sign=-1.0, use_sample=False, as_float=False, one_draw=False, data_mean=False):
    def estimate(model, mu, s, n_samples):
        draws = 1 if one_draw else n_samples  # one_draw: n_samples ignored, still unbiased
        eps = torch.randn(draws, len(mu), dtype=F64)
        w = Normal(mu, s).sample((draws,)) if use_sample else mu + s * eps
        log_p = Normal(w @ model.phi.T, model.sigma).log_prob(model.y)
        log_lik = (log_p.mean(-1) if data_mean else log_p.sum(-1)).mean()
        kl = ev.kl_gaussian_diag(mu, s, torch.zeros_like(mu), model.alpha**-0.5)
        out = sign * (log_lik + kl_sign * kl)
        return out.item() if as_float else out
    return estimate


def test_elbo_checker_passes_a_correct_solution():
    result = checks.check_elbo_estimator(make_estimator())
    assert result.passed and "unbiased" in result.reason


@pytest.mark.parametrize("kwargs, message", [
    (dict(sign=-1.0), "sign flipped"),
    (dict(kl_sign=1.0), "KL term has the wrong sign"),
    (dict(kl_sign=0.0), "KL.* term is missing"),
    (dict(use_sample=True), "gradient w.r.t. mu is biased"),
    (dict(as_float=True), "not differentiable"),
    (dict(one_draw=True), "fewer draws than n_samples"),  # unbiased, so only its spread gives it away
    (dict(data_mean=True), "averaged over the N = 15 data points"),
])
def test_elbo_checker_names_the_mistake(kwargs, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_elbo_estimator(make_estimator(**kwargs))


def test_elbo_checker_accepts_the_local_reparameterisation():
    """Sampling the outputs f_n instead of the weights is unbiased too, with a smaller spread: a right answer."""
    def local(model, mu, s, n_samples):
        f = model.phi @ mu + ((model.phi**2) @ (s**2)).sqrt() * torch.randn(n_samples, model.n, dtype=F64)
        log_lik = Normal(f, model.sigma).log_prob(model.y).sum(-1).mean()
        return log_lik - ev.kl_gaussian_diag(mu, s, torch.zeros_like(mu), model.alpha**-0.5)
    assert checks.check_elbo_estimator(local).passed


def test_elbo_checker_rejects_a_deterministic_answer():
    def closed_form(model, mu, s, n_samples):
        return ev.elbo(model, mu, torch.diag(s**2))
    with pytest.raises(checks.ExerciseError, match="same number"):  # found on the second call
        checks.check_elbo_estimator(closed_form)


def log_evidence_right(model, prior=1.0, noise_squared=True, logdet=-0.5, weight_term=1.0, at_zero=False):
    """Eq. (1.8) by hand; the keywords make the plausible slips."""
    precision = model.alpha * torch.eye(model.m, dtype=F64) + model.phi.T @ model.phi / model.sigma**2
    m_n = torch.zeros(model.m, dtype=F64) if at_zero else \
        torch.linalg.solve(precision, model.phi.T @ model.y) / model.sigma**2
    energy = (model.y - model.phi @ m_n).square().sum() / (2 * model.sigma**2) \
        + weight_term * model.alpha / 2 * m_n @ m_n
    noise = model.sigma**2 if noise_squared else model.sigma
    return (prior * model.m / 2 * math.log(model.alpha) - model.n / 2 * math.log(2 * math.pi * noise)
            - energy + logdet * torch.logdet(precision))


def test_log_evidence_checker_passes_a_correct_solution_and_the_library():
    assert checks.check_log_evidence(log_evidence_right).passed
    assert checks.check_log_evidence(lambda model: ev.log_evidence(model).item()).passed  # a float will do

    def stub(model):
        raise NotImplementedError
    assert checks.check_log_evidence(stub, stop=False).status == "not attempted"


@pytest.mark.parametrize("kwargs, message", [
    (dict(prior=0.0), "M/2 log alpha is missing"),
    (dict(prior=-1.0), "M/2 log alpha has the wrong sign"),
    (dict(logdet=0.5), "-1/2 log|Lambda| has the wrong sign"),
    (dict(logdet=0.0), "Occam factor -1/2 log|Lambda| is missing"),
    (dict(logdet=-1.0), "counted twice"),
    (dict(weight_term=0.0), "alpha/2 m_N^T m_N"),
    (dict(at_zero=True), "evaluate it at the posterior mean"),
    (dict(noise_squared=False), "sigma squared"),
])
def test_log_evidence_checker_names_the_mistake(kwargs, message):
    result = checks.check_log_evidence(lambda model: log_evidence_right(model, **kwargs), stop=False)
    assert result.status == "wrong" and message in result.reason, result.reason


def test_log_evidence_checker_rejects_other_answers_with_what_to_compare():
    per_datum = checks.check_log_evidence(lambda model: log_evidence_right(model) / model.n, stop=False)
    assert per_datum.status == "wrong" and "Compare with Eq. (1.8)" in per_datum.reason
    one_per_point = checks.check_log_evidence(lambda model: log_evidence_right(model).expand(model.n), stop=False)
    assert one_per_point.status == "wrong" and "return one number" in one_per_point.reason
    assert checks.check_log_evidence(lambda model: None, stop=False).status == "wrong"


# --- the plots draw ------------------------------------------------------------------------------

def test_plots_draw_and_refuse_a_wrong_model(model):
    g = torch.Generator().manual_seed(7)
    x, y = ev.sample_poly_data(20, [0.5, 1.5], 0.3, g, low=0.0, high=1.0)
    line = ev.LinearModel(ev.poly_features(x, 1), y, alpha=1.0, sigma=0.3)
    ax_w, ax_e = plots.plot_elbo_gap(line, shift_0=0.0, shift_1=0.0)
    assert len(ax_w.patches) == 4 and ax_e.get_ylim()[1] > ev.log_evidence(line)
    with pytest.raises(ValueError, match="2-d"):
        plots.plot_elbo_gap(model)
    fit = ev.fit_mean_field(line, steps=20, generator=g)
    plots.plot_elbo_trace({"fit": fit.elbo}, ev.log_evidence(line).item(), fit.elbo.max().item())
    plots.plot_mc_estimator([1, 4], {"plain": torch.randn(2, 10, dtype=F64)}, closed_form=0.0)
    plots.plot_degree_selection_at(x, y, x, y, degrees=range(4))
    plt.close("all")


def test_legendre_features_span_the_monomials_and_are_orthogonal():
    x = torch.linspace(-1, 1, 4001, dtype=F64)
    legendre, monomials = ev.legendre_features(x, 5), ev.poly_features(x, 5)
    coef = torch.linalg.lstsq(monomials, legendre).solution
    assert torch.allclose(monomials @ coef, legendre, atol=1e-9)  # same function space
    assert torch.allclose(legendre[-1], torch.ones(6, dtype=F64))  # P_k(1) = 1
    gram = torch.trapezoid(legendre[:, :, None] * legendre[:, None, :], x, dim=0)
    expected = torch.diag(2 / (2 * torch.arange(6, dtype=F64) + 1))  # int_{-1}^{1} P_j P_k dx
    assert torch.allclose(gram, expected, atol=1e-5)
