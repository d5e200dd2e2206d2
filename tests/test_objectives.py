"""The objective's terms (each a function, as the chapters write them) and the architecture gradients of
the bilevel problem, checked against closed forms and exact autograd computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vnas import evidence, objectives, posteriors, spaces


def build_supernet(space, **kw):
    return spaces.get_space(space).build_supernet(**kw)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    net = build_supernet("nb201", C=4, layers=1, num_classes=3).double()
    space = spaces.get_space("nb201")
    theta = {"cell": torch.softmax(torch.randn(space.num_edges, space.num_ops, dtype=torch.float64), -1)}
    train = (torch.rand(6, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = (torch.rand(6, 3, 8, 8, dtype=torch.float64), torch.tensor([2, 1, 0, 0, 1, 2]))
    return net, theta, train, val


def test_first_order_is_the_validation_gradient(tiny):
    net, theta, _, val = tiny
    grads, loss = objectives.first_order_gradient(net, theta, val)
    t = theta["cell"].clone().requires_grad_()
    expected = torch.autograd.grad(F.cross_entropy(net(val[0], {"cell": t}), val[1]), t)[0]
    assert torch.allclose(grads["cell"], expected) and torch.isfinite(loss)


def test_second_order_matches_double_backward(tiny):
    net, theta, train, val = tiny
    before = [p.detach().clone() for p in net.parameters()]
    xi = 0.05
    # a step far smaller than DARTS' 0.01 / ||v||, so that no ReLU changes sign between w- and w+
    approx, _ = objectives.second_order_gradient(net, theta, train, val, xi, fd_scale=1e-7)
    after = [p.detach().clone() for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "weights must be restored"
    exact = objectives.exact_second_order_gradient(net, theta, train, val, xi)
    first, _ = objectives.first_order_gradient(net, theta, val)
    err = (approx["cell"] - exact["cell"]).norm() / exact["cell"].norm()
    assert err < 1e-5, f"finite-difference hypergradient off by {err:.2e}"
    # and the unrolled step really matters here: first order is measurably different
    assert (first["cell"] - exact["cell"]).norm() / exact["cell"].norm() > 100 * err


def test_second_order_on_a_smooth_model_with_darts_step():
    """Without ReLU kinks, DARTS' own step eps = 0.01 / ||v|| is accurate to O(eps^2)."""

    class Smooth(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))
            self.head = torch.nn.Linear(3, 3)

        def forward(self, x, theta, active=None):
            acts = (torch.tanh, torch.sigmoid, torch.nn.functional.softplus)
            h = sum(t * act(conv(x)) for t, act, conv in zip(theta["cell"][0], acts, self.convs, strict=True))
            return self.head(h.mean((2, 3)))

    torch.manual_seed(1)
    net = Smooth().double()
    theta = {"cell": torch.softmax(torch.randn(1, 3, dtype=torch.float64), -1)}
    train = (torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    val = (torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.tensor([2, 1, 0, 0, 1]))
    approx, _ = objectives.second_order_gradient(net, theta, train, val, xi=0.5)
    exact = objectives.exact_second_order_gradient(net, theta, train, val, xi=0.5)
    first, _ = objectives.first_order_gradient(net, theta, val)
    err = float((approx["cell"] - exact["cell"]).norm() / exact["cell"].norm())
    assert err < 1e-4 and float((first["cell"] - exact["cell"]).norm() / exact["cell"].norm()) > 100 * err


def test_pullback_plus_penalty_is_the_gradient_of_the_objective(tiny):
    """The architecture step's surrogate has the gradient of Eq. (4.2) itself (first order: by autograd)."""
    net, _, _, val = tiny
    q = posteriors.build_posterior("variational", "nb201", c0=0.5, l2=1e-3).double()
    with torch.no_grad():
        q.alphas["cell"].normal_()
    torch.manual_seed(1)
    theta = q.sample()
    grad_theta, nll = objectives.first_order_gradient(net, theta, val)
    terms = objectives.architecture_terms(q, nll, num_data=50)
    mine = torch.autograd.grad(objectives.pullback(theta, grad_theta) + terms["penalty"], q.alphas["cell"])[0]
    torch.manual_seed(1)  # the same Dirichlet draw, now through one graph
    theta = q.sample()
    direct = objectives.architecture_terms(q, F.cross_entropy(net(val[0], theta), val[1]), num_data=50)
    torch.testing.assert_close(direct["objective"], terms["objective"])
    torch.testing.assert_close(mine, torch.autograd.grad(direct["objective"], q.alphas["cell"])[0])
    n = 50
    torch.testing.assert_close(terms["objective"], nll + terms["structure_kl"] / n + terms["l2_alpha"])


def test_per_datum_objective_adds_every_term_once():
    nll, kl_s, kl_w = torch.tensor(2.0), torch.tensor(30.0), torch.tensor(12.0)
    t = objectives.per_datum_objective(nll, 10, structure_kl=kl_s, weight_kl=kl_w, kl_weight=0.5,
                                       auxiliary=torch.tensor(0.4), l2_w=torch.tensor(0.01))
    assert set(t) == {"nll", "auxiliary", "structure_kl", "weight_kl", "l2_w", "penalty", "objective"}
    assert t["penalty"].item() == pytest.approx(0.5 * 42 / 10 + 0.01)
    assert t["objective"].item() == pytest.approx(2.0 + 0.4 + 0.5 * 42 / 10 + 0.01)
    plain = objectives.per_datum_objective(nll, 10)
    assert plain["structure_kl"].item() == plain["weight_kl"].item() == plain["penalty"].item() == 0.0
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_data"):
            objectives.per_datum_objective(nll, bad)
    with pytest.raises(ValueError, match="kl_weight"):
        objectives.per_datum_objective(nll, 10, kl_weight=-1.0)


def test_l2_term_value_and_gradient_match_the_formula():
    torch.manual_seed(0)
    params = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True), torch.randn(7, dtype=torch.float64,
                                                                                    requires_grad=True)]
    term = objectives.l2(params, 3e-4)
    torch.testing.assert_close(term, 0.5 * 3e-4 * sum((p.detach() ** 2).sum() for p in params))
    grads = torch.autograd.grad(term, params)
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(g, 3e-4 * p.detach())  # what SGD's weight_decay=3e-4 adds
    assert torch.autograd.gradcheck(lambda a, b: objectives.l2([a, b], 0.7), tuple(params))
    assert objectives.l2(params, 0.0).item() == 0.0


def test_likelihoods_are_the_distributions_they_name():
    torch.manual_seed(0)
    f, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 3, 1, 2, 2])
    torch.testing.assert_close(objectives.expected_nll(f, y),
                               -torch.distributions.Categorical(logits=f).log_prob(y).mean())
    g = objectives.Gaussian(sigma=0.3)
    f, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(objectives.expected_nll(f, y, g),
                               -torch.distributions.Normal(f, 0.3).log_prob(y).sum(-1).mean())
    with pytest.raises(ValueError, match="sigma"):
        objectives.Gaussian(0.0)


def test_the_objective_is_minus_the_elbo_per_datum_exact_on_bayesian_linear_regression():
    """Chapter 01's exact model through the same functions as a search: N x objective is -ELBO(q) for any q,
    and at the exact posterior its one-sample value (the NLL of one draw w ~ q, the KL replaced by its
    one-sample estimate log q(w) - log p(w)) is -log p(y) for every draw: the integrand of the bound is
    constant there, so a wrong scale, sign or 1/N shows up exactly."""
    gen = torch.Generator().manual_seed(0)
    x, y = evidence.sample_poly_data(25, [0.3, -1.0, 2.0], sigma=0.4, generator=gen)
    model = evidence.LinearModel(evidence.poly_features(x, 3), y, alpha=2.0, sigma=0.4)
    likelihood, n = objectives.Gaussian(sigma=0.4), model.n
    prior = torch.distributions.MultivariateNormal(torch.zeros(model.m, dtype=torch.float64),
                                                   torch.eye(model.m, dtype=torch.float64) / model.alpha)
    mu, cov = evidence.posterior(model)
    q = torch.distributions.MultivariateNormal(mu, cov)
    log_z = evidence.log_evidence(model)
    for _ in range(3):
        w = q.sample()
        nll = objectives.expected_nll((model.phi @ w)[:, None], model.y[:, None], likelihood)
        terms = objectives.per_datum_objective(nll, n, weight_kl=q.log_prob(w) - prior.log_prob(w))
        torch.testing.assert_close(n * terms["objective"], -log_z, rtol=1e-10, atol=1e-10)
    # any other q: the closed-form expected NLL and KL give -ELBO(q) / N, and the bound is loose
    mu_q, cov_q = mu + 0.1, 0.5 * cov
    nll = -evidence.expected_log_lik(model, mu_q, cov_q) / n
    kl = evidence.kl_gaussian(mu_q, cov_q, prior.loc, prior.covariance_matrix)
    objective = objectives.per_datum_objective(nll, n, weight_kl=kl)["objective"]
    torch.testing.assert_close(n * objective, -evidence.elbo(model, mu_q, cov_q), rtol=1e-12, atol=1e-12)
    assert n * objective > -log_z + 1e-3


def test_weight_kl_sums_the_variational_layers_and_is_zero_for_point_weights():
    from vnas import bayes

    point = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    prior = bayes.GaussianPrior(0.5)
    assert objectives.weight_kl(point, prior).item() == 0.0
    model = bayes.make_bayesian(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)), sigma_init=0.1)
    assert objectives.weight_kl(model).item() == 0.0  # no prior: no term
    torch.testing.assert_close(objectives.weight_kl(model, prior), model[0].kl(prior) + model[2].kl(prior))
    assert objectives.weight_kl(model, prior).item() > 0


def test_structure_kl_is_zero_without_a_prior_term():
    for method in ("darts", "snas", "gdas", "drnas", "random_ws"):
        assert objectives.structure_kl(posteriors.build_posterior(method, "darts")).item() == 0.0
    q = posteriors.build_posterior("variational", "darts", c0=2.0)
    want = sum(posteriors.dirichlet_kl(q.concentration(c), 2.0).sum() for c in q.cell_types)
    torch.testing.assert_close(objectives.structure_kl(q), want)
    assert want.item() > 0 and math.isfinite(want.item())


def test_a_cell_switched_off_gets_zero_architecture_gradient():
    """A hard sample with 'none' on every edge into the output node leaves the cell's weights unused."""
    torch.manual_seed(0)
    net = build_supernet("nb201", C=4, layers=1, num_classes=3)
    ops = spaces.nb201.PRIMITIVES
    cell = ["nor_conv_3x3", "nor_conv_3x3", "skip_connect", "none", "none", "none"]
    theta = {"cell": torch.stack([torch.nn.functional.one_hot(torch.tensor(ops.index(o)), 5).float() for o in cell])}
    batch = (torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    active = net.active(theta)
    for grads in (objectives.first_order_gradient(net, theta, batch, active)[0],
                  objectives.second_order_gradient(net, theta, batch, batch, xi=0.01, active=active)[0]):
        assert torch.equal(grads["cell"], torch.zeros(6, 5))
