"""The exact bridge: a tiny NAS-like model whose posterior over discrete structures is exact, so the relaxed
Dirichlet posterior that the search learns can be checked against it.

The model. A cell has E edges; edge e reads its own input x_e ~ U(-1, 1) and applies one op among K basis
functions op_k (unit variance on U(-1, 1); the default four are orthonormal Legendre polynomials). A
structure s in {0..K-1}^E gives

    y = sum_e w_e op_{s_e}(x_e) + eps,   w ~ N(0, alpha^-1 I_E),   eps ~ N(0, sigma^2).

With design matrix Phi[n, e] = op_{s_e}(x_ne), the weights integrate out in closed form (chapter 01, Eq. (1.8)):

    log p(D | s) = E/2 log alpha - N/2 log(2 pi sigma^2) - y^T y / (2 sigma^2) + 1/2 r^T Lambda^-1 r - 1/2 log|Lambda|,
    Lambda = alpha I + Phi^T Phi / sigma^2,   r = Phi^T y / sigma^2,

which needs only the sufficient statistics G[e,k,f,l] = sum_n op_k(x_ne) op_l(x_nf), b[e,k] = sum_n op_k(x_ne) y_n
and y^T y, so it is batched over many structures at the cost of E x E factorisations.

Exact posterior. Under a uniform prior over the K^E structures, p(s | D) = p(D | s) / sum_s' p(D | s'), by
enumeration; from it the per-edge marginals p(op_e = k | D) and the MAP structure.

Relaxed model (what DARTS and the Dirichlet search optimise). Edge e's feature is the mixture
sum_k theta_ek op_k(x_e), theta_e on the simplex: Phi(theta)[n, e] = sum_k theta_ek op_k(x_ne), and p(D | theta)
is the same closed form with Phi^T Phi = theta G theta and Phi^T y = theta . b (differentiable in theta). At a
one-hot theta it is the structure's evidence. With the prior p(theta_e) = Dir(c0 1):

    log p(D) = log E_p(theta)[p(D | theta)]                      (importance sampling, ``log_evidence_is``)
    ELBO(q)  = E_q[log p(D | theta)] - sum_e KL(q(theta_e) || Dir(c0))  <=  log p(D)   (``elbo``)

with q(theta_e) = Dir(beta_e) the very ``vnas.posteriors`` method "variational" of the search, fitted by the
search's per-datum objective (``objectives.architecture_terms``, Eq. (4.2)); "darts" (theta = softmax(alpha),
no KL) maximises log p(D | theta) itself: type-II maximum likelihood over theta. The two posteriors are
different models: the exact one is over discrete structures, q over the simplex; the bridge compares the
structure q implies (the probability that op k is the argmax of theta_e) with the exact marginals.

Place in the flow: a teaching model beside the search (like ``vnas.evidence``); it uses posteriors and
objectives and nothing downstream of them.
Introduced in chapters/04_bayesian_structure_posterior.py.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from vnas import objectives, posteriors
from vnas.evidence import DTYPE, _one_thread

__all__ = ["OPS", "DEFAULT_OPS", "CellSpace", "Problem", "Estimate", "Exact", "Fit", "Run",
           "make_problem", "sample_problem", "log_lik", "structure_log_evidence", "exact_posterior",
           "fit_many", "fit_variational", "fit_darts", "argmax_probabilities", "elbo", "log_evidence_is",
           "total_variation", "run_bridge", "compare"]

SQRT3, SQRT5, SQRT7 = math.sqrt(3), math.sqrt(5), math.sqrt(7)

OPS: dict[str, Callable[[Tensor], Tensor]] = {
    # Legendre polynomials scaled to unit variance on U(-1, 1): exactly orthonormal there
    "linear": lambda x: SQRT3 * x,
    "square": lambda x: SQRT5 * (3 * x**2 - 1) / 2,
    "cubic": lambda x: SQRT7 * (5 * x**3 - 3 * x) / 2,
    "quartic": lambda x: 3 * (35 * x**4 - 30 * x**2 + 3) / 8,
    # unit variance too, but far from orthogonal to the polynomials (corr(sine, linear) = 0.78,
    # corr(abs, square) = 0.97): for harder, less identifiable problems
    "sine": lambda x: math.sqrt(2) * torch.sin(math.pi * x),
    "abs": lambda x: math.sqrt(12) * (x.abs() - 0.5),
}
"""The op registry: name -> basis function of one input column."""

DEFAULT_OPS = ("linear", "square", "cubic", "quartic")

DEFAULT_LIMIT = 4096


# --- validation ----------------------------------------------------------------------------------------------

def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _ops(names) -> tuple[str, ...]:
    names = tuple(names)
    for name in names:
        if name not in OPS:
            close = difflib.get_close_matches(str(name), OPS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown op {name!r}; valid ops: {', '.join(OPS)}.{hint}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"give at least 2 distinct ops, got {names!r}.")
    return names


@contextlib.contextmanager
def _rng(generator: torch.Generator | None):
    """Draw from torch's global RNG (Dirichlet.rsample takes no generator), seeded from ``generator`` when one
    is given, and leave the global stream where it was."""
    if generator is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        yield


# --- the problem -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellSpace:
    """The smallest thing ``posteriors.build_posterior`` accepts as a space: one cell type of E edges, K ops."""

    num_edges: int
    num_ops: int
    cell_types: tuple[str, ...] = ("cell",)


@dataclass(frozen=True)
class Problem:
    """A data set of the bridge model: inputs ``x`` [N, E] in (-1, 1), targets ``y`` [N], the ops' names, the
    prior precision ``alpha`` of the weights and the noise sd ``sigma``; ``structure`` [E] and ``weights`` [E]
    are the truth when known (``mixture``: (edge, k1, k2) whose true feature was 0.5 op_k1 + 0.5 op_k2).
    The features ``phi`` [N, E, K] and the sufficient statistics ``gram`` [E, K, E, K], ``xty`` [E, K] and
    ``yty`` are computed once. Make one with ``make_problem`` or ``sample_problem``.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """

    x: Tensor
    y: Tensor
    ops: tuple[str, ...]
    alpha: float
    sigma: float
    phi: Tensor
    gram: Tensor
    xty: Tensor
    yty: float
    structure: Tensor | None = None
    weights: Tensor | None = None
    mixture: tuple[int, int, int] | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.x.shape[1]

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def space(self) -> CellSpace:
        return CellSpace(self.num_edges, self.num_ops)


def _features(x: Tensor, ops: tuple[str, ...]) -> Tensor:
    """phi[n, e, k] = op_k(x_ne)."""
    return torch.stack([OPS[name](x) for name in ops], dim=-1)


def make_problem(x, y, ops=DEFAULT_OPS, alpha: float = 1.0, sigma: float = 0.5, structure=None, weights=None,
                 mixture=None) -> Problem:
    """A validated ``Problem`` from data ``x`` [N, E] and ``y`` [N].

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    x, y = torch.as_tensor(x, dtype=DTYPE), torch.as_tensor(y, dtype=DTYPE)
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be an (N, E) matrix with N >= 1, E >= 1, got shape {tuple(x.shape)}.")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}.")
    ops = _ops(ops)
    phi = _features(x, ops)
    return Problem(x, y, ops, _positive(alpha, "alpha (prior precision)"),
                   _positive(sigma, "sigma (noise standard deviation)"), phi,
                   gram=torch.einsum("nek,nfl->ekfl", phi, phi), xty=torch.einsum("nek,n->ek", phi, y),
                   yty=float(y @ y), structure=structure, weights=weights, mixture=mixture)


def sample_problem(n: int, num_edges: int = 3, num_ops: int = 4, alpha: float = 1.0, sigma: float = 0.5,
                   generator: torch.Generator | None = None, structure=None, mixture=None, weights=None,
                   ops=None) -> Problem:
    """Draw a data set: x ~ U(-1, 1)^[N, E], a structure (uniform if None), weights w ~ N(0, alpha^-1 I) (unless
    given), y = sum_e w_e op_{s_e}(x_e) + sigma noise. ``mixture=(edge, k1, k2)`` makes that edge's true feature
    0.5 op_k1 + 0.5 op_k2, which no single op represents: there the relaxation is the better model.
    ``ops`` defaults to the first ``num_ops`` of DEFAULT_OPS + the rest of OPS.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    _count(n, "n (the number of data points)")
    _count(num_edges, "num_edges")
    if ops is None:
        pool = DEFAULT_OPS + tuple(k for k in OPS if k not in DEFAULT_OPS)
        _count(num_ops, "num_ops", minimum=2)
        if num_ops > len(pool):
            raise ValueError(f"num_ops={num_ops} but only {len(pool)} ops exist: {', '.join(pool)}.")
        ops = pool[:num_ops]
    ops = _ops(ops)
    k_ops = len(ops)
    alpha = _positive(alpha, "alpha (prior precision)")
    x = 2 * torch.rand(n, num_edges, generator=generator, dtype=DTYPE) - 1
    if structure is None:
        structure = torch.randint(k_ops, (num_edges,), generator=generator)
    structure = torch.as_tensor(structure, dtype=torch.long)
    if structure.shape != (num_edges,) or bool(((structure < 0) | (structure >= k_ops)).any()):
        raise ValueError(f"structure must hold {num_edges} op indices in 0..{k_ops - 1}, got {structure.tolist()}.")
    if weights is None:
        weights = torch.randn(num_edges, generator=generator, dtype=DTYPE) / math.sqrt(alpha)
    weights = torch.as_tensor(weights, dtype=DTYPE)
    if weights.shape != (num_edges,):
        raise ValueError(f"weights must have shape ({num_edges},), got {tuple(weights.shape)}.")
    theta = torch.nn.functional.one_hot(structure, k_ops).to(DTYPE)
    if mixture is not None:
        edge, k1, k2 = mixture
        if not (0 <= edge < num_edges and 0 <= k1 < k_ops and 0 <= k2 < k_ops and k1 != k2):
            raise ValueError(f"mixture must be (edge, k1, k2) with edge < {num_edges} and two distinct ops "
                             f"< {k_ops}, got {mixture!r}.")
        theta[edge] = 0.0
        theta[edge, k1] = theta[edge, k2] = 0.5
        mixture = (int(edge), int(k1), int(k2))
    features = torch.einsum("nek,ek->ne", _features(x, ops), theta)
    y = features @ weights + _positive(sigma, "sigma (noise standard deviation)") * torch.randn(
        n, generator=generator, dtype=DTYPE)
    return make_problem(x, y, ops, alpha, sigma, structure=structure, weights=weights, mixture=mixture)


# --- the evidence of a structure, and of a point of the simplex ------------------------------------------------

def _stack(problems) -> tuple[Tensor, Tensor, Tensor]:
    """The sufficient statistics of D data sets of one shape, stacked: gram [D, E, K, E, K], xty [D, E, K],
    yty [D]."""
    first = problems[0]
    for p in problems[1:]:
        if (p.n, p.num_edges, p.ops, p.alpha, p.sigma) != (first.n, first.num_edges, first.ops, first.alpha,
                                                           first.sigma):
            raise ValueError("data sets fitted together must share N, E, the ops, alpha and sigma.")
    return (torch.stack([p.gram for p in problems]), torch.stack([p.xty for p in problems]),
            torch.tensor([p.yty for p in problems], dtype=DTYPE))


def _log_lik(problem: Problem, theta: Tensor, gram: Tensor, xty: Tensor, yty: Tensor) -> Tensor:
    """log p(D_d | theta_bd) [B, D] for theta [B, D, E, K] and D data sets' statistics (N, alpha, sigma from
    ``problem``)."""
    e = theta.shape[-2]
    var = problem.sigma**2
    phi_t_phi = torch.einsum("bdek,dekfl,bdfl->bdef", theta, gram, theta)
    r = torch.einsum("bdek,dek->bde", theta, xty) / var
    precision = problem.alpha * torch.eye(e, dtype=DTYPE) + phi_t_phi / var  # Lambda >= alpha I: always SPD
    chol = torch.linalg.cholesky(precision)
    quad = (r * torch.cholesky_solve(r[..., None], chol)[..., 0]).sum(-1)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    const = e / 2 * math.log(problem.alpha) - problem.n / 2 * math.log(2 * math.pi * var) - yty / (2 * var)
    return const + quad / 2 - logdet / 2


def log_lik(problem: Problem, theta) -> Tensor:
    """log p(D | theta) = log integral p(D | w, theta) p(w) dw for mixing weights theta [..., E, K] (batched over
    the leading dimensions; differentiable in theta), by the closed form of the module docstring.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    theta = torch.as_tensor(theta, dtype=DTYPE)
    e, k = problem.num_edges, problem.num_ops
    if theta.dim() < 2 or theta.shape[-2:] != (e, k):
        raise ValueError(f"theta must have shape [..., {e}, {k}] (edges x ops), got {tuple(theta.shape)}.")
    batch = theta.shape[:-2]
    stats = problem.gram[None], problem.xty[None], torch.tensor([problem.yty], dtype=DTYPE)
    return _log_lik(problem, theta.reshape(-1, 1, e, k), *stats).reshape(batch)


def structure_log_evidence(problem: Problem, structures) -> Tensor:
    """log p(D | s) for structures [..., E] of op indices: ``log_lik`` at the one-hot theta.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    structures = torch.as_tensor(structures, dtype=torch.long)
    return log_lik(problem, torch.nn.functional.one_hot(structures, problem.num_ops).to(DTYPE))


@dataclass(frozen=True)
class Exact:
    """The exact posterior over the K^E structures: ``structures`` [S, E], ``log_evidence`` [S] = log p(D | s),
    ``probs`` [S] = p(s | D), ``marginals`` [E, K] = p(op_e = k | D), ``map`` [E], and ``log_marginal`` = log p(D)
    under the uniform prior over structures.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """

    structures: Tensor
    log_evidence: Tensor
    probs: Tensor
    marginals: Tensor
    map: Tensor
    log_marginal: float


def exact_posterior(problem: Problem, limit: int = DEFAULT_LIMIT) -> Exact:
    """p(s | D) ∝ p(D | s) by enumerating every structure (uniform prior); refuses more than ``limit`` of them.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    e, k = problem.num_edges, problem.num_ops
    size = k**e
    if size > _count(limit, "limit"):
        raise ValueError(f"exact enumeration needs K^E = {k}^{e} = {size} structures, more than the limit "
                         f"{limit}; use fewer edges or ops, or raise limit.")
    structures = torch.tensor(list(itertools.product(range(k), repeat=e)), dtype=torch.long)
    log_ev = structure_log_evidence(problem, structures)
    probs = torch.softmax(log_ev, 0)
    one_hot = torch.nn.functional.one_hot(structures, k).to(DTYPE)
    marginals = torch.einsum("s,sek->ek", probs, one_hot)
    log_marginal = float(torch.logsumexp(log_ev, 0) - math.log(size))
    return Exact(structures, log_ev, probs, marginals, structures[int(probs.argmax())], log_marginal)


# --- fitting q(theta) with the search's own distributions and objective ----------------------------------------

@dataclass
class Fit:
    """A fitted ``posterior`` (a ``vnas.posteriors`` distribution) and its trace per logged step: ``step``,
    ``elbo`` (the per-datum Monte Carlo ELBO of that step, -objective), ``nll`` (per datum) and ``kl`` (total
    structure KL in nats); ``num_data`` = N turns per-datum values into totals.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """

    posterior: posteriors.ArchDistribution
    step: list[int]
    elbo: list[float]
    nll: list[float]
    kl: list[float]
    num_data: int


def _thetas(posterior: posteriors.ArchDistribution, samples: int) -> Tensor:
    """``samples`` draws of theta [S, E, K] of the single cell type, reparameterised when the method is."""
    if isinstance(posterior, posteriors.Dirichlet):  # one batched rsample instead of S calls of sample()
        return torch.distributions.Dirichlet(posterior.concentration("cell"), validate_args=False).rsample((samples,))
    return torch.stack([posterior.sample()["cell"] for _ in range(samples)])


def _split(joint: posteriors.ArchDistribution, method: str, problem: Problem, d: int,
           options: dict) -> posteriors.ArchDistribution:
    """Data set d's own posterior: the same method, holding edges d E .. (d + 1) E - 1 of the joint one."""
    posterior = posteriors.build_posterior(method, problem.space, **options).double()
    e = problem.num_edges
    with torch.no_grad():
        posterior.alphas["cell"].copy_(joint.alphas["cell"][d * e:(d + 1) * e])
    return posterior


def fit_many(problems, method: str = "variational", steps: int = 500, samples: int = 16, lr: float = 1.0,
             lr_end: float | None = 0.05, log_every: int = 10, generator: torch.Generator | None = None,
             **options) -> list[Fit]:
    """Fit ``method``'s distribution ("variational" or "darts", ``options`` passed to ``build_posterior``) to
    each data set by the search's per-datum objective, Eq. (4.2), with Adam:

        objective_d = -mean_S log p(D_d | theta_s) / N + kl_weight sum_e KL(q(theta_e) || p(theta_e)) / N + reg.

    All D data sets (of one N) are fitted at once by ONE distribution over D E edges whose objective is the sum
    of theirs (``architecture_terms`` of the joint nll): the sum is separable and Adam acts elementwise, so this
    is exactly D independent fits, at the cost of one. Each fit then gets its own posterior with its edges.
    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2).
    """
    problems = [problems] if isinstance(problems, Problem) else list(problems)
    if not problems:
        raise ValueError("give at least one data set.")
    _count(steps, "steps")
    _count(samples, "samples")
    _count(log_every, "log_every")
    lr = _positive(lr, "lr")
    first, d_sets, e = problems[0], len(problems), problems[0].num_edges
    stats = _stack(problems)
    joint = posteriors.build_posterior(method, CellSpace(d_sets * e, first.num_ops), generator, **options).double()
    optimiser = torch.optim.Adam(joint.parameters(), lr=lr)
    # a decaying step lets q settle instead of jittering around the optimum on noisy gradients
    gamma = (_positive(lr_end, "lr_end") / lr) ** (1 / steps) if lr_end is not None else 1.0
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma)
    samples = samples if joint.structure_kl() is not None else 1  # a point method has nothing to average
    trace = {"step": [], "elbo": [], "nll": [], "kl": []}
    with _one_thread(), _rng(generator):
        for step in range(1, steps + 1):
            theta = _thetas(joint, samples).reshape(samples, d_sets, e, first.num_ops)
            nll = -_log_lik(first, theta, *stats).mean(0) / first.n  # [D]
            terms = objectives.architecture_terms(joint, nll.sum(), num_data=first.n)
            optimiser.zero_grad()
            terms["objective"].backward()
            optimiser.step()
            schedule.step()
            if step % log_every == 0 or step == steps:
                kl = joint.structure_kl()
                kl = torch.zeros(d_sets, dtype=DTYPE) if kl is None else kl["cell"].detach().reshape(d_sets, e).sum(-1)
                nll = nll.detach()
                trace["step"].append(step)
                trace["elbo"].append((-(nll + joint.kl_weight * kl / first.n)).tolist())
                trace["nll"].append(nll.tolist())
                trace["kl"].append(kl.tolist())
    joint.check_finite()
    return [Fit(_split(joint, method, first, d, options), trace["step"], [row[d] for row in trace["elbo"]],
                [row[d] for row in trace["nll"]], [row[d] for row in trace["kl"]], first.n) for d in range(d_sets)]


def fit_variational(problem: Problem, c0: float = 1.0, steps: int = 500, samples: int = 16, lr: float = 1.0,
                    lr_end: float | None = 0.05, kl_scale: float = 1.0, log_every: int = 10,
                    generator: torch.Generator | None = None) -> Fit:
    """Fit q(theta) = prod_e Dir(beta_e), the search's "variational" method with prior Dir(c0) and no L2 on alpha,
    by the search's objective with ``samples`` reparameterised draws of theta per step (``fit_many``).

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2).
    """
    c0 = _positive(c0, "c0 (the prior concentration)")
    return fit_many([problem], "variational", steps, samples, lr, lr_end, log_every, generator,
                    c0=c0, kl_scale=kl_scale, l2=0.0)[0]


def fit_darts(problem: Problem, steps: int = 500, lr: float = 1.0, lr_end: float | None = 0.05,
              log_every: int = 10, generator: torch.Generator | None = None) -> Fit:
    """DARTS' counterpart: a point theta = softmax(alpha) maximising log p(D | theta) (no prior, no L2): type-II
    maximum likelihood over theta. Its trace's ``elbo`` is log p(D | theta) / N (there is no KL).

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    return fit_many([problem], "darts", steps, 1, lr, lr_end, log_every, generator, l2=0.0)[0]


# --- what q says about the structure ------------------------------------------------------------------------

@torch.no_grad()
def argmax_probabilities(posterior: posteriors.ArchDistribution, samples: int = 4000,
                         generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """P_q(argmax_k theta_ek = k) [E, K] per cell type, by sampling theta ~ q: the structure that q implies.
    A point method (DARTS' softmax) gives the one-hot of its argmax; a Dirichlet is sampled in one batch; any
    other distribution by calling ``sample()`` ``samples`` times.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    _count(samples, "samples")
    k = posterior.num_ops
    if isinstance(posterior, posteriors.Softmax):
        return {c: torch.nn.functional.one_hot(m.argmax(-1), k).to(m.dtype) for c, m in posterior.mean().items()}
    with _rng(generator):
        if isinstance(posterior, posteriors.Dirichlet):
            draws = {c: torch.distributions.Dirichlet(posterior.concentration(c)).sample((samples,))
                     for c in posterior.cell_types}
        else:
            many = [posterior.sample() for _ in range(samples)]
            draws = {c: torch.stack([d[c] for d in many]) for c in posterior.cell_types}
    return {c: torch.nn.functional.one_hot(d.argmax(-1), k).to(d.dtype).mean(0) for c, d in draws.items()}


class Estimate(NamedTuple):
    """A Monte Carlo estimate ``value`` with its standard error ``se``."""

    value: float
    se: float


@torch.no_grad()
def elbo(posterior: posteriors.Dirichlet, problem: Problem, samples: int = 20_000,
         generator: torch.Generator | None = None) -> Estimate:
    """The total ELBO E_q[log p(D | theta)] - sum_e KL(Dir(beta_e) || Dir(c0)) (Monte Carlo in the first term,
    closed form in the second), with the standard error of the first.

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2).
    """
    if not isinstance(posterior, posteriors.Dirichlet):
        raise ValueError(f"elbo needs a Dirichlet posterior (it has a KL to the prior), got "
                         f"{type(posterior).__name__}.")
    _count(samples, "samples")
    with _one_thread(), _rng(generator):
        ll = log_lik(problem, _thetas(posterior, samples))
    kl = sum(v.sum() for v in posterior.kl().values())
    return Estimate(float(ll.mean() - kl), float(ll.std()) / math.sqrt(samples))


def _dirichlet_log_prob(theta: Tensor, concentration: Tensor) -> Tensor:
    """sum_e log Dir(theta_e; concentration_e) for theta [S, E, K]."""
    return torch.distributions.Dirichlet(concentration, validate_args=False).log_prob(theta).sum(-1)


@torch.no_grad()
def log_evidence_is(problem: Problem, c0: float = 1.0, proposal: posteriors.Dirichlet | Tensor | None = None,
                    samples: int = 100_000, defensive: float = 0.5,
                    generator: torch.Generator | None = None) -> Estimate:
    """log p(D) = log E_p(theta)[p(D | theta)] of the relaxed model, prior Dir(c0) per edge, by importance
    sampling from r = defensive * prior + (1 - defensive) * q, with q = prod_e Dir(beta_e) (a fitted Dirichlet
    posterior or beta [E, K]; None samples the prior alone). The prior component keeps the weights
    p(D | theta) p(theta) / r(theta) <= p(D | theta) / defensive bounded, however narrow q is. The standard
    error is the delta method's: sd(w) / (sqrt(S) mean(w)).

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    c0 = _positive(c0, "c0 (the prior concentration)")
    _count(samples, "samples")
    prior = torch.full((problem.num_edges, problem.num_ops), c0, dtype=DTYPE)
    if proposal is None:
        beta, defensive = prior, 1.0
    else:
        beta = proposal.concentration("cell") if isinstance(proposal, posteriors.Dirichlet) else proposal
        beta = torch.as_tensor(beta, dtype=DTYPE).detach()
        if beta.shape != prior.shape or not bool((beta > 0).all()):
            raise ValueError(f"proposal must be a Dirichlet posterior or beta > 0 of shape {tuple(prior.shape)}.")
        if not 0 < defensive <= 1:
            raise ValueError(f"defensive (the prior's share of the proposal) must be in (0, 1], got {defensive!r}.")
    with _one_thread(), _rng(generator):
        from_prior = torch.rand(samples) < defensive
        theta = torch.where(from_prior[:, None, None], torch.distributions.Dirichlet(prior).sample((samples,)),
                            torch.distributions.Dirichlet(beta).sample((samples,)))
        # a tiny concentration can underflow a component to exactly 0, where a log density is +-inf
        theta = theta.clamp_min(1e-300)
        log_p = _dirichlet_log_prob(theta, prior)
        log_r = log_p if defensive == 1.0 else torch.logaddexp(
            math.log(defensive) + log_p, math.log1p(-defensive) + _dirichlet_log_prob(theta, beta))
        log_w = log_lik(problem, theta) + log_p - log_r
    shift = log_w.max()
    w = (log_w - shift).exp()
    value = shift + w.mean().log()
    return Estimate(float(value), float(w.std() / (math.sqrt(samples) * w.mean())))


# --- one data set, and many ------------------------------------------------------------------------------------

def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """1/2 sum_k |p_k - q_k| per row (edge) of two [E, K] matrices of probabilities.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    return 0.5 * (p - q).abs().sum(-1)


@dataclass
class Run:
    """One data set through the bridge: the ``exact`` posterior; the ``variational`` and ``darts`` fits;
    ``q_argmax`` [E, K] (P_q(op k is the argmax of theta_e)), ``darts_weights`` [E, K] (softmax(alpha)) and
    ``darts_argmax`` (its one-hot); the mean over edges of the TV distance of each to the exact marginals; and
    whether each derived structure (argmax of the mean per edge) is the exact MAP structure.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """

    problem: Problem
    exact: Exact
    variational: Fit
    darts: Fit
    q_argmax: Tensor
    darts_weights: Tensor
    darts_argmax: Tensor
    tv_q: float
    tv_darts: float
    map_agrees: bool
    darts_map_agrees: bool


def _run(problem: Problem, exact: Exact, fit: Fit, darts: Fit, argmax_samples: int, generator) -> Run:
    q_argmax = argmax_probabilities(fit.posterior, argmax_samples, generator)["cell"]
    darts_argmax = argmax_probabilities(darts.posterior)["cell"]
    with torch.no_grad():
        darts_weights, q_mean = darts.posterior.mean()["cell"], fit.posterior.mean()["cell"]
    return Run(problem, exact, fit, darts, q_argmax, darts_weights, darts_argmax,
               tv_q=total_variation(exact.marginals, q_argmax).mean().item(),
               tv_darts=total_variation(exact.marginals, darts_argmax).mean().item(),
               map_agrees=bool((q_mean.argmax(-1) == exact.map).all()),
               darts_map_agrees=bool((darts_weights.argmax(-1) == exact.map).all()))


def run_bridge(problem: Problem, c0: float = 1.0, steps: int = 500, samples: int = 16, lr: float = 1.0,
               argmax_samples: int = 4000, generator: torch.Generator | None = None) -> Run:
    """Exact posterior, variational fit (prior Dir(c0)) and DARTS fit on one data set, and how they compare.

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    c0 = _positive(c0, "c0 (the prior concentration)")
    exact = exact_posterior(problem)
    fit = fit_variational(problem, c0, steps, samples, lr, generator=generator)
    darts = fit_darts(problem, steps, lr, generator=generator)
    return _run(problem, exact, fit, darts, argmax_samples, generator)


def _t_quantile(dof: int, z: float = statistics.NormalDist().inv_cdf(0.975)) -> float:
    """Student t 97.5% quantile by the Cornish-Fisher expansion in 1/dof (within 1% for dof >= 3)."""
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _mean_interval(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = _t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _wilson(successes: int, total: int, z: float = statistics.NormalDist().inv_cdf(0.975)) -> tuple[float, float]:
    """Wilson's 95% interval for a binomial proportion (sensible at 0 and 1, unlike the normal one)."""
    p = successes / total
    centre = (p + z**2 / (2 * total)) / (1 + z**2 / total)
    half = z / (1 + z**2 / total) * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2))
    return centre - half, centre + half


def compare(ns=(10, 40, 160), c0s=(0.5, 1.0), datasets: int = 30, seed: int = 0, steps: int = 500,
            samples: int = 16, lr: float = 1.0, num_edges: int = 3, num_ops: int = 4, alpha: float = 1.0,
            sigma: float = 0.5, argmax_samples: int = 2000) -> list[dict]:
    """Over ``datasets`` random data sets per N (paired: the same data for every c0 and both methods), one row
    per (N, c0): the mean TV distance (over edges, then data sets) from the exact marginals to q's argmax
    probabilities (``tv_q``) and to DARTS' one-hot (``tv_darts``), each with a 95% t interval (``_low``,
    ``_high``); the rate at which the derived structure is the exact MAP structure (``map_agreement`` for q,
    ``darts_map_agreement``), each with a 95% Wilson interval; and the row's wall time in ``seconds`` (the DARTS
    fits, shared by the c0s, are split among them). The data sets of one N are fitted together (``fit_many``).

    Introduced in chapters/04_bayesian_structure_posterior.py.
    """
    _count(datasets, "datasets")
    ns = [_count(n, "n (the number of data points)") for n in ns]
    c0s = [_positive(c0, "c0 (the prior concentration)") for c0 in c0s]
    rows = []
    for n in ns:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + n)
        problems = [sample_problem(n, num_edges, num_ops, alpha, sigma, generator) for _ in range(datasets)]
        start = time.perf_counter()
        exact = [exact_posterior(p) for p in problems]
        darts = fit_many(problems, "darts", steps, 1, lr, generator=generator, l2=0.0)
        shared_seconds = time.perf_counter() - start
        for c0 in c0s:
            start = time.perf_counter()
            fits = fit_many(problems, "variational", steps, samples, lr, generator=generator, c0=c0, l2=0.0)
            runs = [_run(*args, argmax_samples, generator) for args in zip(problems, exact, fits, darts, strict=True)]
            row = {"n": n, "c0": c0, "datasets": datasets}
            for key in ("tv_q", "tv_darts"):
                row[key], row[f"{key}_low"], row[f"{key}_high"] = _mean_interval([getattr(r, key) for r in runs])
            for key, attr in (("map_agreement", "map_agrees"), ("darts_map_agreement", "darts_map_agrees")):
                hits = sum(getattr(r, attr) for r in runs)
                row[key] = hits / datasets
                row[f"{key}_low"], row[f"{key}_high"] = _wilson(hits, datasets)
            row["seconds"] = time.perf_counter() - start + shared_seconds / len(c0s)
            rows.append(row)
    return rows
