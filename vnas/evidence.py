"""Bayesian model selection by the evidence, and the ELBO, on a model where everything is exact.

Bayesian linear regression (Bishop 2006, PRML sections 3.3-3.5):

    y = Phi w + eps,   eps ~ N(0, sigma^2 I),   prior  w ~ N(0, alpha^-1 I).

The posterior p(w | D) and the evidence log p(D) are closed form, so every step of the
variational argument of chapter 01 (log p(D) = ELBO(q) + KL(q || p(w | D))) can be checked to
numerical precision. Everything here is float64: the identities are tested to ~1e-10.

Place in the flow: a teaching model beside the search. Later chapters optimise the same
bound, ``elbo = expected_ll - kl``, for networks whose evidence is not tractable.
Introduced in chapters/01_bayesian_model_selection.py.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LinearModel", "poly_features", "legendre_features", "sample_poly_data",
    "posterior_precision", "posterior", "log_evidence", "predict",
    "kl_gaussian", "kl_gaussian_diag",
    "expected_log_lik", "elbo", "log_lik_samples", "elbo_mc",
    "MeanFieldFit", "fit_mean_field", "best_mean_field",
    "fit_hyperparameters", "DegreeSelection", "select_degree",
]

DTYPE = torch.float64


# --- validation -----------------------------------------------------------------------------------

def _vector(v, name: str) -> Tensor:
    v = torch.as_tensor(v, dtype=DTYPE)
    if v.dim() != 1:
        raise ValueError(f"{name} must be a vector (1-d), got shape {tuple(v.shape)}.")
    return v


def _positive(v: float, name: str) -> float:
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {v}.")
    return v


def _count(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}.")
    return v


def _cholesky(matrix: Tensor, name: str) -> Tensor:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(matrix.shape)}.")
    chol, info = torch.linalg.cholesky_ex(matrix)
    if info.item() != 0:
        raise ValueError(f"{name} is not symmetric positive definite (Cholesky failed).")
    return chol


@contextlib.contextmanager
def _one_thread():
    """Run torch single-threaded for loops of tiny ops: intra-op threads only add synchronisation,
    and on a busy 2-core machine that synchronisation was measured to slow such loops 10-30x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _logdet(chol: Tensor) -> Tensor:
    """log|Sigma| from the Cholesky factor L of Sigma = L L^T."""
    return 2 * chol.diagonal().log().sum()


# --- the model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearModel:
    """Bayesian linear regression: features ``phi`` (N, M), targets ``y`` (N,), prior precision
    ``alpha`` (w ~ N(0, alpha^-1 I)) and noise standard deviation ``sigma`` (eps ~ N(0, sigma^2)).

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.6).
    """

    phi: Tensor
    y: Tensor
    alpha: float
    sigma: float

    def __post_init__(self):
        phi = torch.as_tensor(self.phi, dtype=DTYPE)
        if phi.dim() != 2:
            raise ValueError(f"phi must be an (N, M) design matrix, got shape {tuple(phi.shape)}.")
        y = _vector(self.y, "y")
        if y.shape[0] != phi.shape[0]:
            raise ValueError(f"y has {y.shape[0]} targets but phi has {phi.shape[0]} rows.")
        object.__setattr__(self, "phi", phi)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "alpha", _positive(self.alpha, "alpha (prior precision)"))
        object.__setattr__(self, "sigma", _positive(self.sigma, "sigma (noise standard deviation)"))

    @property
    def n(self) -> int:
        return self.phi.shape[0]

    @property
    def m(self) -> int:
        return self.phi.shape[1]


def poly_features(x, degree: int) -> Tensor:
    """Polynomial design matrix Phi[n, k] = x_n^k for k = 0..degree.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.6).
    """
    x = _vector(x, "x")
    _count(degree, "degree", minimum=0)
    return x[:, None] ** torch.arange(degree + 1, dtype=DTYPE)


def legendre_features(x, degree: int) -> Tensor:
    """Legendre design matrix Phi[n, k] = P_k(x_n), k = 0..degree, by the recurrence
    (k + 1) P_{k+1}(x) = (2k + 1) x P_k(x) - k P_{k-1}(x). The same functions as ``poly_features``
    of that degree, but far less alike on [-1, 1], so an isotropic prior on their weights is a
    different (and there, better matched) prior.

    Introduced in chapters/01_bayesian_model_selection.py, section 3(c).
    """
    x = _vector(x, "x")
    _count(degree, "degree", minimum=0)
    columns = [torch.ones_like(x), x]
    for k in range(1, degree):
        columns.append(((2 * k + 1) * x * columns[k] - k * columns[k - 1]) / (k + 1))
    return torch.stack(columns[: degree + 1], dim=1)


def sample_poly_data(n: int, coeffs, sigma: float, generator: torch.Generator | None = None,
                     low: float = -1.0, high: float = 1.0) -> tuple[Tensor, Tensor]:
    """Synthetic data: x ~ U(low, high), y = sum_k coeffs[k] x^k + sigma * noise.

    Introduced in chapters/01_bayesian_model_selection.py, section 3.
    """
    _count(n, "n")
    coeffs = _vector(coeffs, "coeffs")
    if not high > low:
        raise ValueError(f"need low < high, got [{low}, {high}].")
    x = low + (high - low) * torch.rand(n, generator=generator, dtype=DTYPE)
    noise = torch.randn(n, generator=generator, dtype=DTYPE)
    y = poly_features(x, len(coeffs) - 1) @ coeffs + _positive(sigma, "sigma") * noise
    return x, y


# --- exact posterior and evidence -----------------------------------------------------------------

def posterior_precision(model: LinearModel) -> Tensor:
    """Lambda = S_N^-1 = alpha I + sigma^-2 Phi^T Phi.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.7).
    """
    eye = torch.eye(model.m, dtype=DTYPE)
    return model.alpha * eye + model.phi.T @ model.phi / model.sigma**2


def posterior(model: LinearModel) -> tuple[Tensor, Tensor]:
    """Exact posterior N(m_N, S_N): S_N = Lambda^-1, m_N = sigma^-2 S_N Phi^T y.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.7).
    """
    chol = _cholesky(posterior_precision(model), "the posterior precision")
    cov = torch.cholesky_inverse(chol)
    mean = torch.cholesky_solve((model.phi.T @ model.y / model.sigma**2)[:, None], chol)[:, 0]
    return mean, cov


def log_evidence(model: LinearModel) -> Tensor:
    """Exact log p(y) = M/2 log alpha - N/2 log(2 pi sigma^2) - E(m_N) - 1/2 log|Lambda|,
    with E(m) = ||y - Phi m||^2 / (2 sigma^2) + alpha/2 m^T m (Bishop Eq. 3.86). This equals
    log N(y | 0, sigma^2 I + alpha^-1 Phi Phi^T) but costs an M x M, not an N x N, factorisation.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.8).
    """
    m_n, _ = posterior(model)
    energy = (model.y - model.phi @ m_n).square().sum() / (2 * model.sigma**2) \
        + model.alpha / 2 * m_n @ m_n
    logdet_precision = _logdet(_cholesky(posterior_precision(model), "the posterior precision"))
    return (model.m / 2 * math.log(model.alpha) - model.n / 2 * math.log(2 * math.pi * model.sigma**2)
            - energy - logdet_precision / 2)


def predict(model: LinearModel, phi_star: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior predictive at new inputs: mean Phi_* m_N, variance sigma^2 + diag(Phi_* S_N Phi_*^T).

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.13).
    """
    phi_star = torch.as_tensor(phi_star, dtype=DTYPE)
    if phi_star.dim() != 2 or phi_star.shape[1] != model.m:
        raise ValueError(f"phi_star must have shape (K, {model.m}), got {tuple(phi_star.shape)}.")
    m_n, s_n = posterior(model)
    return phi_star @ m_n, model.sigma**2 + ((phi_star @ s_n) * phi_star).sum(-1)


# --- Gaussian KL divergences ----------------------------------------------------------------------

def kl_gaussian(mu_q: Tensor, cov_q: Tensor, mu_p: Tensor, cov_p: Tensor) -> Tensor:
    """KL(N(mu_q, Sigma_q) || N(mu_p, Sigma_p)) = 1/2 [tr(Sigma_p^-1 Sigma_q)
    + (mu_p - mu_q)^T Sigma_p^-1 (mu_p - mu_q) - M + log|Sigma_p| - log|Sigma_q|].

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.9).
    """
    if mu_q.shape != mu_p.shape or mu_q.dim() != 1:
        raise ValueError(f"means must be vectors of one shape, got {tuple(mu_q.shape)} and "
                         f"{tuple(mu_p.shape)}.")
    chol_q, chol_p = _cholesky(cov_q, "cov_q"), _cholesky(cov_p, "cov_p")
    if cov_q.shape[0] != mu_q.shape[0] or cov_p.shape[0] != mu_q.shape[0]:
        raise ValueError(f"covariances must be {mu_q.shape[0]} x {mu_q.shape[0]} to match the means.")
    diff = (mu_p - mu_q)[:, None]
    trace = torch.cholesky_solve(cov_q, chol_p).diagonal().sum()
    mahalanobis = (diff * torch.cholesky_solve(diff, chol_p)).sum()
    return (trace + mahalanobis - mu_q.shape[0] + _logdet(chol_p) - _logdet(chol_q)) / 2


def kl_gaussian_diag(mu_q: Tensor, s_q: Tensor, mu_p: Tensor, s_p: Tensor) -> Tensor:
    """KL between diagonal Gaussians with standard deviations s (summed over dimensions):
    sum_j [ log(s_p,j / s_q,j) + (s_q,j^2 + (mu_q,j - mu_p,j)^2) / (2 s_p,j^2) - 1/2 ].
    Arguments broadcast, so a scalar prior scale s_p works.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.9).
    """
    s_q, s_p = torch.as_tensor(s_q, dtype=DTYPE), torch.as_tensor(s_p, dtype=DTYPE)
    if (s_q <= 0).any() or (s_p <= 0).any():
        raise ValueError("standard deviations s_q and s_p must be positive.")
    per_dim = (s_p / s_q).log() + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5
    return per_dim.sum()


# --- the ELBO, in closed form and by Monte Carlo --------------------------------------------------

def _check_q(model: LinearModel, mu: Tensor, spread: Tensor, name: str, square: bool) -> None:
    if mu.shape != (model.m,):
        raise ValueError(f"mu must have shape ({model.m},) for this model, got {tuple(mu.shape)}.")
    want = (model.m, model.m) if square else (model.m,)
    if spread.shape != want:
        raise ValueError(f"{name} must have shape {want}, got {tuple(spread.shape)}.")


def expected_log_lik(model: LinearModel, mu: Tensor, cov: Tensor) -> Tensor:
    """E_q[log p(y | w)] for q = N(mu, Sigma), in closed form:
    -N/2 log(2 pi sigma^2) - (||y - Phi mu||^2 + tr(Phi^T Phi Sigma)) / (2 sigma^2).

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.10).
    """
    _check_q(model, mu, cov, "cov", square=True)
    sq_error = (model.y - model.phi @ mu).square().sum() + (model.phi.T @ model.phi * cov).sum()
    return -model.n / 2 * math.log(2 * math.pi * model.sigma**2) - sq_error / (2 * model.sigma**2)


def elbo(model: LinearModel, mu: Tensor, cov: Tensor) -> Tensor:
    """Closed-form ELBO(q) = E_q[log p(y | w)] - KL(q(w) || p(w)) for q = N(mu, Sigma).

    Introduced in chapters/01_bayesian_model_selection.py, Eqs. (1.4) and (1.10).
    """
    expected_ll = expected_log_lik(model, mu, cov)
    prior_cov = torch.eye(model.m, dtype=DTYPE) / model.alpha
    kl = kl_gaussian(mu, cov, torch.zeros_like(mu), prior_cov)
    return expected_ll - kl


def log_lik_samples(model: LinearModel, mu: Tensor, s: Tensor, n_samples: int, local: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
    """log p(y | w_i) for S reparameterised draws from q = N(mu, diag(s^2)), shape (S,).

    Plain: w_i = mu + s * eps_i, eps_i ~ N(0, I) (Kingma & Welling 2014).
    Local (Kingma, Salimans & Welling 2015): draw the outputs f = Phi w directly,
    f_n = phi_n^T mu + sqrt(sum_j phi_nj^2 s_j^2) zeta_n, zeta_n ~ N(0, 1) independent over n.
    Both are differentiable in (mu, s) and unbiased for E_q[log p(y | w)], which is a sum over
    n of terms that each depend only on the marginal of f_n.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.11).
    """
    _check_q(model, mu, s, "s", square=False)
    _count(n_samples, "n_samples")
    if local:
        f_mean, f_sd = model.phi @ mu, ((model.phi**2) @ s**2).sqrt()
        f = f_mean + f_sd * torch.randn(n_samples, model.n, generator=generator, dtype=DTYPE)
    else:
        w = mu + s * torch.randn(n_samples, model.m, generator=generator, dtype=DTYPE)
        f = w @ model.phi.T
    log_norm = -0.5 * math.log(2 * math.pi * model.sigma**2)
    return (log_norm - (model.y - f) ** 2 / (2 * model.sigma**2)).sum(-1)


def elbo_mc(model: LinearModel, mu: Tensor, s: Tensor, n_samples: int = 1, local: bool = False,
            generator: torch.Generator | None = None) -> Tensor:
    """Reparameterised Monte Carlo ELBO for q = N(mu, diag(s^2)):
    (1/S) sum_i log p(y | w_i) - KL(q || p), with the KL in closed form, as it is here (Bayes by
    Backprop, Blundell et al. 2015, samples it too).

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.11).
    """
    expected_ll = log_lik_samples(model, mu, s, n_samples, local, generator).mean()
    kl = kl_gaussian_diag(mu, s, torch.zeros_like(mu), model.alpha**-0.5)
    return expected_ll - kl


# --- fitting a mean-field q -----------------------------------------------------------------------

@dataclass
class MeanFieldFit:
    """A fitted q = N(mu, diag(s^2)) and, per step, the MC ELBO it climbed on and the exact ELBO.

    Introduced in chapters/01_bayesian_model_selection.py, section 3(b).
    """

    mu: Tensor
    s: Tensor
    elbo_mc: Tensor
    elbo: Tensor


def fit_mean_field(model: LinearModel, steps: int, lr: float = 0.05, n_samples: int = 1, local: bool = False,
                   generator: torch.Generator | None = None, init_log_s: float = -2.0,
                   lr_end: float | None = None) -> MeanFieldFit:
    """Maximise the MC ELBO over (mu, log s) with Adam, i.e. minimise the loss -ELBO.

    Starts from mu = 0, s = exp(init_log_s). With ``lr_end`` the learning rate decays geometrically
    from ``lr`` to ``lr_end``: with a constant step, noisy gradients keep q jittering around the
    optimum instead of settling. Records the noisy MC ELBO that drives each step and the exact
    closed-form ELBO of the current q.
    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.11).
    """
    _count(steps, "steps")
    _positive(lr, "lr")
    mu = torch.zeros(model.m, dtype=DTYPE, requires_grad=True)
    log_s = torch.full((model.m,), float(init_log_s), dtype=DTYPE, requires_grad=True)
    optimiser = torch.optim.Adam([mu, log_s], lr=lr)
    gamma = (_positive(lr_end, "lr_end") / lr) ** (1 / steps) if lr_end is not None else 1.0
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma)
    trace_mc, trace = [], []
    with _one_thread():
        for _ in range(steps):
            loss = -elbo_mc(model, mu, log_s.exp(), n_samples, local, generator)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            trace_mc.append(-loss.item())
            with torch.no_grad():
                trace.append(elbo(model, mu, torch.diag(log_s.exp() ** 2)).item())
    return MeanFieldFit(mu.detach(), log_s.detach().exp(), torch.tensor(trace_mc, dtype=DTYPE),
                        torch.tensor(trace, dtype=DTYPE))


def best_mean_field(model: LinearModel) -> tuple[Tensor, Tensor]:
    """The ELBO's maximiser over q = N(mu, diag(s^2)): mu = m_N and s_j^2 = 1 / Lambda_jj
    (Bishop section 10.1.2). It matches the posterior's precision, not its marginal variances.

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.12).
    """
    m_n, _ = posterior(model)
    return m_n, posterior_precision(model).diagonal().rsqrt()


# --- choosing a model structure by its evidence ---------------------------------------------------

def fit_hyperparameters(model: LinearModel, iters: int = 200, tol: float = 1e-10) -> LinearModel:
    """Type-II maximum likelihood: the (alpha, sigma) that maximise log p(y | alpha, sigma), by
    Bishop's fixed point (Eqs. 3.92, 3.95), with lambda_i the eigenvalues of Phi^T Phi / sigma^2:
    gamma = sum_i lambda_i / (alpha + lambda_i),  alpha <- gamma / m_N^T m_N,
    sigma^2 <- ||y - Phi m_N||^2 / (N - gamma).

    Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.14).
    """
    _count(iters, "iters")
    eig = torch.linalg.eigvalsh(model.phi.T @ model.phi).clamp_min(0)
    alpha, sigma = model.alpha, model.sigma
    for _ in range(iters):
        current = LinearModel(model.phi, model.y, alpha, sigma)
        m_n, _ = posterior(current)
        lam = eig / sigma**2
        gamma = (lam / (alpha + lam)).sum().item()
        # Floors keep a degenerate fit (y = 0, or N - gamma -> 0) finite instead of dividing by 0.
        new_alpha = gamma / max((m_n @ m_n).item(), 1e-300)
        new_sigma = math.sqrt(max((model.y - model.phi @ m_n).square().sum().item(), 1e-300)
                              / max(model.n - gamma, 1e-12))
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_sigma - sigma) <= tol * sigma
        alpha, sigma = min(max(new_alpha, 1e-12), 1e12), max(new_sigma, 1e-12)
        if done:
            break
    return LinearModel(model.phi, model.y, alpha, sigma)


@dataclass
class DegreeSelection:
    """Per polynomial degree: log evidence, train and held-out RMSE of the posterior mean, and the
    hyperparameters used (fixed, or fitted by type-II maximum likelihood).

    Introduced in chapters/01_bayesian_model_selection.py, section 3(c).
    """

    degrees: list[int]
    log_evidence: Tensor
    train_rmse: Tensor
    test_rmse: Tensor
    alpha: Tensor
    sigma: Tensor

    @property
    def best(self) -> int:
        """The degree with the highest evidence."""
        return self.degrees[int(self.log_evidence.argmax())]

    @property
    def best_held_out(self) -> int:
        """The degree with the lowest held-out error (needs the held-out data the evidence does not)."""
        return self.degrees[int(self.test_rmse.argmin())]


def _rmse(model: LinearModel, phi: Tensor, y: Tensor) -> float:
    mean, _ = predict(model, phi)
    return (mean - y).square().mean().sqrt().item()


def select_degree(x, y, x_test, y_test, degrees=range(10), alpha: float = 1.0, sigma: float = 1.0,
                  type2: bool = False, features=poly_features) -> DegreeSelection:
    """Score each polynomial degree by its log evidence log p(y | degree), alongside the
    training and held-out RMSE of its posterior mean. With ``type2`` the (alpha, sigma) of each
    degree are fitted by type-II maximum likelihood, starting from the given values.
    ``features(x, degree)`` builds the design matrix (monomials by default).

    Introduced in chapters/01_bayesian_model_selection.py, section 3(c).
    """
    x, y = _vector(x, "x"), _vector(y, "y")
    x_test, y_test = _vector(x_test, "x_test"), _vector(y_test, "y_test")
    if x.shape != y.shape or x_test.shape != y_test.shape:
        raise ValueError("x and y (and x_test and y_test) must have the same length.")
    degrees = [_count(d, "degree", minimum=0) for d in degrees]
    if not degrees:
        raise ValueError("give at least one degree.")
    rows = []
    with _one_thread():
        for d in degrees:
            model = LinearModel(features(x, d), y, alpha, sigma)
            if type2:
                model = fit_hyperparameters(model)
            rows.append((log_evidence(model).item(), _rmse(model, model.phi, y),
                         _rmse(model, features(x_test, d), y_test), model.alpha, model.sigma))
    cols = [torch.tensor(c, dtype=DTYPE) for c in zip(*rows, strict=True)]
    return DegreeSelection(degrees, *cols)
