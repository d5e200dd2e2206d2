"""Tests of vnas.posteriors: closed forms against torch and Monte Carlo, estimator gradients against
finite differences of exact expectations, shapes, schedules and error messages.

Statistical tolerances are z standard errors of the estimate (seeded, so the tests are deterministic).
"""

import math

import pytest
import torch

from vnas import objectives, spaces
from vnas.posteriors import (
    METHODS,
    Concrete,
    Dirichlet,
    HardGumbel,
    build_posterior,
    dirichlet_kl,
    gumbel_softmax_sample,
)
from vnas.supernet import edge_key

Z = 4.5  # standard errors allowed in statistical checks
SPACES = {"darts": (("normal", "reduce"), 14, 8), "nb201": (("cell",), 6, 5)}
LEARNED = [m for m, entry in METHODS.items() if entry.trained]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_beta(*shape):
    return torch.exp(torch.randn(*shape, dtype=torch.float64))  # spans ~0.1 .. 10


# --- Dirichlet KL ---------------------------------------------------------------------------------

@pytest.mark.parametrize("c0", [0.5, 1.0, 3.0])
def test_dirichlet_kl_matches_torch(c0):
    beta = random_beta(6, 5)
    expected = torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta),
                                                 torch.distributions.Dirichlet(torch.full_like(beta, c0)))
    torch.testing.assert_close(dirichlet_kl(beta, c0), expected)


def test_dirichlet_kl_tensor_prior_and_zero_at_equality():
    beta, c = random_beta(4, 3), random_beta(4, 3)
    expected = torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta),
                                                 torch.distributions.Dirichlet(c))
    torch.testing.assert_close(dirichlet_kl(beta, c), expected)
    torch.testing.assert_close(dirichlet_kl(beta, beta), torch.zeros(4, dtype=beta.dtype))


def test_dirichlet_kl_matches_monte_carlo():
    beta, c0, n = random_beta(3, 4), 0.7, 200_000
    q, p = torch.distributions.Dirichlet(beta), torch.distributions.Dirichlet(torch.full_like(beta, c0))
    x = q.sample((n,))
    log_ratio = q.log_prob(x) - p.log_prob(x)  # [n, E]
    se = log_ratio.std(0) / math.sqrt(n)
    assert torch.all((log_ratio.mean(0) - dirichlet_kl(beta, c0)).abs() < Z * se)


def test_dirichlet_kl_rejects_bad_inputs():
    with pytest.raises(ValueError, match="> 0"):
        dirichlet_kl(torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match="> 0"):
        dirichlet_kl(torch.tensor([[1.0, -1.0]]), 1.0)


# --- Dirichlet samples and pathwise gradients ------------------------------------------------------

def dirichlet_moments(beta):
    """E[x] and E[x x^T] of Dir(beta) in closed form."""
    b0 = beta.sum()
    return beta / b0, (torch.outer(beta, beta) + torch.diag(beta)) / (b0 * (b0 + 1))


def test_rsample_gradient_matches_finite_differences_of_exact_expectation():
    # f(x) = c.x + x^T D x, so E[f] = c.E[x] + tr(D E[x x^T]) is known in closed form
    c, D = torch.randn(4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    beta0 = torch.tensor([0.8, 1.5, 2.0, 4.0], dtype=torch.float64)

    def exact(beta):
        m1, m2 = dirichlet_moments(beta)
        return c @ m1 + (D * m2).sum()

    h = 1e-5
    fd = torch.stack([(exact(beta0 + h * e) - exact(beta0 - h * e)) / (2 * h) for e in torch.eye(4).double()])
    n = 50_000
    beta = beta0.repeat(n, 1).requires_grad_()  # one row per sample: row i's grad is sample i's estimate
    x = torch.distributions.Dirichlet(beta).rsample()
    (x @ c + torch.einsum("ni,ij,nj->n", x, D, x)).sum().backward()
    grads = beta.grad
    se = grads.std(0) / math.sqrt(n)
    assert torch.all((grads.mean(0) - fd).abs() < Z * se + 1e-6), (grads.mean(0), fd, se)


def test_posterior_samples_match_dirichlet_moments():
    q = Dirichlet(("cell",), 2, 3, param="softplus")  # any shape, as the exact bridge of chapter 04 needs
    with torch.no_grad():
        q.alphas["cell"].copy_(torch.tensor([[0.5, 1.0, 2.0], [-1.0, 0.0, 3.0]]))
    n = 20_000
    x = torch.stack([q.sample()["cell"] for _ in range(n)]).double()  # [n, E, O]
    beta = torch.nn.functional.softplus(q.alphas["cell"].detach()).double()
    b0 = beta.sum(-1, keepdim=True)
    mean, var = beta / b0, beta * (b0 - beta) / (b0**2 * (b0 + 1))
    assert torch.all((x.mean(0) - mean).abs() < Z * (var / n).sqrt())
    centred = x - x.mean(0)
    var_se = ((centred**4).mean(0) - var**2).clamp_min(0).div(n).sqrt()
    assert torch.all((x.var(0) - var).abs() < Z * var_se + 1e-9)


def test_dirichlet_mean_entropy_log_prob_and_structure_kl():
    q = Dirichlet(("normal", "reduce"), 3, 4, regularise="kl", c0=0.5, kl_scale=2.0)
    with torch.no_grad():
        for a in q.alphas.values():
            a.normal_()
    stats = q.edge_stats()
    total_kl = 0.0
    for c in q.cell_types:
        beta = torch.nn.functional.elu(q.alphas[c].detach()) + 1
        dist = torch.distributions.Dirichlet(beta)
        torch.testing.assert_close(torch.tensor(stats[c]["entropy"]), dist.entropy())
        torch.testing.assert_close(torch.tensor(stats[c]["concentration"]), beta.sum(-1))
        torch.testing.assert_close(q.mean()[c], beta / beta.sum(-1, keepdim=True))
        theta = q.sample()
        torch.testing.assert_close(q.log_prob(theta)[c], dist.log_prob(theta[c]))
        prior = torch.distributions.Dirichlet(torch.full_like(beta, 0.5))
        torch.testing.assert_close(q.structure_kl()[c], torch.distributions.kl_divergence(dist, prior))
        total_kl += torch.distributions.kl_divergence(dist, prior)
    terms = objectives.architecture_terms(q, torch.tensor(1.5), num_data=100)
    torch.testing.assert_close(terms["structure_kl"], total_kl.sum())
    l2 = 0.5 * 1e-3 * sum((a.detach() ** 2).sum() for a in q.alphas.values())
    torch.testing.assert_close(terms["l2_alpha"], l2)
    torch.testing.assert_close(terms["objective"], 1.5 + 2.0 * total_kl.sum() / 100 + l2)  # kl_scale = 2
    terms["penalty"].backward()
    assert all(a.grad.abs().sum() > 0 for a in q.alphas.values())
    drnas = build_posterior("drnas", "nb201")
    assert drnas.structure_kl() is None and objectives.structure_kl(drnas).item() == 0.0
    assert isinstance(drnas.kl()["cell"], torch.Tensor)  # the KL is there; drnas' objective leaves it out


# --- Gumbel: Concrete and straight-through ---------------------------------------------------------

def test_gumbel_max_frequencies_match_softmax():
    logits, n = torch.tensor([1.0, 0.0, -0.5, 2.0]), 40_000
    y = gumbel_softmax_sample(logits.expand(n, 4), tau=0.5)
    freq = torch.bincount(y.argmax(-1), minlength=4).double() / n
    p = torch.softmax(logits.double(), 0)
    assert torch.all((freq - p).abs() < Z * (p * (1 - p) / n).sqrt())


def test_concrete_samples_on_simplex_and_near_one_hot_at_low_temperature():
    logits = torch.randn(1000, 5)
    for tau in (5.0, 1.0, 0.05):
        y = gumbel_softmax_sample(logits, tau)
        assert torch.all(y >= 0) and torch.allclose(y.sum(-1), torch.ones(1000))
    y_cold, y_hot = gumbel_softmax_sample(logits, 0.01), gumbel_softmax_sample(logits, 10.0)
    assert y_cold.max(-1).values.median() > 0.999
    assert y_hot.max(-1).values.median() < 0.5


def test_generator_makes_samples_reproducible():
    logits = torch.randn(3, 4)
    a = gumbel_softmax_sample(logits, 1.0, torch.Generator().manual_seed(7))
    b = gumbel_softmax_sample(logits, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    for method in METHODS:
        torch.manual_seed(3)
        first = build_posterior(method, "nb201").sample()["cell"]
        torch.manual_seed(3)
        assert torch.equal(first, build_posterior(method, "nb201").sample()["cell"]), method


def test_hard_gumbel_is_exactly_one_hot_with_soft_gradients():
    q = HardGumbel(("normal", "reduce"), 14, 8, tau0=1.0)
    theta = q.sample()
    for x in theta.values():
        assert torch.all((x == 0.0) | (x == 1.0)) and torch.all((x == 1.0).sum(-1) == 1)
    cost = torch.randn(8)
    sum((x * cost).sum() for x in theta.values()).backward()
    assert all(torch.all(a.grad.abs().sum(-1) > 0) for a in q.alphas.values())


def test_set_progress_anneals_as_documented():
    for schedule in ("exp", "linear"):
        q = Concrete(("cell",), 2, 3, tau0=2.0, tau_min=0.1, schedule=schedule)
        taus = []
        for epoch in range(11):
            q.set_progress(epoch, 11)
            taus.append(q.tau)
        assert taus[0] == pytest.approx(2.0) and taus[-1] == pytest.approx(0.1)
        assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
        middle = math.sqrt(2.0 * 0.1) if schedule == "exp" else (2.0 + 0.1) / 2
        assert taus[5] == pytest.approx(middle)
    with pytest.raises(ValueError, match="epoch"):
        q.set_progress(5, 3)


# --- the shared interface ----------------------------------------------------------------------------

@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("method", METHODS)
def test_interface_shapes_for_both_spaces(method, space):
    cell_types, E, n_ops = SPACES[space]
    q = build_posterior(method, space)
    trained = METHODS[method].trained
    assert q.trained == trained
    names = sorted(name for name, _ in q.named_parameters())
    assert names == (sorted(f"alphas.{c}" for c in cell_types) if trained else [])
    q.set_progress(3, 10)
    for theta in (q.sample(), q.mean()):
        assert set(theta) == set(cell_types)
        for t in theta.values():
            assert t.shape == (E, n_ops) and torch.all(t >= 0)
            if trained:  # a baseline's one-hot rows of unused DARTS edges are all zero
                torch.testing.assert_close(t.sum(-1), torch.ones(E))
    if q.sparse:  # exact zeros the supernet may skip
        assert all(torch.any(t == 0) for t in q.sample().values())
    terms = objectives.architecture_terms(q, torch.tensor(2.0), num_data=1000)
    # the weight KL is a term of the structure step only under a structure-dependent weight prior (chapter 05)
    assert set(terms) >= {"nll", "structure_kl", "penalty", "objective", *q.regularisers()}
    assert "weight_kl" not in terms
    coupled = objectives.architecture_terms(q, torch.tensor(2.0), num_data=1000, weight_kl=torch.tensor(50.0),
                                            weight_kl_weight=0.5)
    assert coupled["weight_kl"].item() == 50.0
    assert coupled["penalty"].item() == pytest.approx(terms["penalty"].item() + 0.5 * 50.0 / 1000)
    if trained:
        loss = sum(t.square().sum() for t in q.sample().values()) + terms["penalty"]
        loss.backward()
        assert all(a.grad is not None for a in q.alphas.values())
        assert ("l2_alpha" in terms) == (method != "variational")  # (4.2) has no L2 on alpha
        assert bool(q.valid())
    stats = q.edge_stats()
    for c in cell_types:
        assert torch.tensor(stats[c]["mean"]).shape == (E, n_ops) and len(stats[c]["entropy"]) == E
        assert (stats[c]["concentration"] is None) == (method not in ("drnas", "variational"))


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_random_ws_keeps_the_best_cell_it_is_shown_and_saves_it(space):
    """The distribution never sees a supernet: end_epoch ranks its candidates by the score it is handed."""
    sp = spaces.get_space(space)
    q = build_posterior("random_ws", space, candidates=6)
    assert not q.trained and q.searched and q.sparse and list(q.parameters()) == []
    seen = []

    def skips(theta):
        return float(theta[sp.cell_types[0]][:, sp.ops.index("skip_connect")].sum())

    def score(theta):  # prefers cells with many skip connections; records what it saw
        seen.append(sp.derive(theta))
        return skips(theta)

    q.end_epoch(score)
    assert len(seen) == 6
    best = max(seen, key=lambda g: skips(sp.one_hot(g)))
    assert sp.derive(q.mean()) == best
    state = q.state_dict()
    other = build_posterior("random_ws", space, generator=torch.Generator().manual_seed(99), candidates=6)
    other.load_state_dict(state)
    assert sp.derive(other.mean()) == best
    assert sp.derive(other.sample()) == sp.derive(q.sample())  # the generator state travels too
    random = build_posterior("random", space)
    assert not random.searched and sp.derive(random.sample()) == sp.derive(random.mean())


def test_check_finite_names_cell_type_and_edge():
    q = build_posterior("drnas", "darts")
    q.check_finite()
    assert bool(q.valid())
    with torch.no_grad():
        q.alphas["reduce"][2, 1] = float("nan")
    assert not bool(q.valid())
    with pytest.raises(FloatingPointError, match=r"'reduce', edge 2\b"):
        q.check_finite()
    q = build_posterior("drnas", "nb201")
    with torch.no_grad():
        q.alphas["cell"][4, 0] = -1e4  # elu(-1e4) + 1 == 0: a concentration that is not > 0
    assert not bool(q.valid())  # the sample itself stays finite: torch clamps it, so valid() must say so
    assert torch.isfinite(q.sample()["cell"]).all()
    with pytest.raises(FloatingPointError, match="concentration.*edge 4"):
        q.check_finite()


def test_build_posterior_errors_are_clear():
    with pytest.raises(ValueError, match="Did you mean 'darts'") as err:
        build_posterior("dart", "nb201")
    assert all(m in str(err.value) for m in METHODS)
    with pytest.raises(ValueError, match="tau.*valid options") as err:
        build_posterior("darts", "nb201", tau=1.0)
    with pytest.raises(ValueError, match="regularise"):
        build_posterior("variational", "nb201", regularise="none")
    with pytest.raises(ValueError, match="valid options: none"):
        build_posterior("random", "nb201", c0=1.0)
    with pytest.raises(ValueError, match="candidates"):
        build_posterior("random_ws", "nb201", candidates=0)
    with pytest.raises(ValueError, match="nb202"):
        build_posterior("darts", "nb202")
    for method, option in (("variational", "c0"), ("drnas", "c0"), ("snas", "tau0"), ("gdas", "tau_min")):
        for bad in (0.0, -1.0):
            with pytest.raises(ValueError, match="> 0"):
                build_posterior(method, "nb201", **{option: bad})
    for method in LEARNED:
        with pytest.raises(ValueError, match="l2.*>= 0"):
            build_posterior(method, "nb201", l2=-1e-3)
    with pytest.raises(ValueError, match="kl_scale.*>= 0"):
        build_posterior("variational", "nb201", kl_scale=-1.0)
    with pytest.raises(ValueError, match="> 0"):
        gumbel_softmax_sample(torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="cell_types"):
        Dirichlet("cell", 6, 5)
    with pytest.raises(ValueError, match="num_ops"):
        Dirichlet(("cell",), 6, 1)
    with pytest.raises(ValueError, match="param"):
        build_posterior("drnas", "nb201", param="exp")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_follows_parameter_device(method):
    q = build_posterior(method, "nb201").cuda()
    theta = q.sample()["cell"]
    assert theta.is_cuda and q.mean()["cell"].is_cuda
    if q.trained:
        (theta.sum() + objectives.architecture_terms(q, theta.sum(), 10)["penalty"]).backward()
    assert q.edge_stats()["cell"]["mean"]


def test_dirichlet_sampling_never_validates_in_the_hot_path():
    q = build_posterior("variational", "darts")
    assert q._dist(q.alphas["normal"])._validate_args is False
    with torch.no_grad():
        q.alphas["normal"][7, 3] = float("nan")
    q.sample()  # no exception and no host read: the search's finite watch reports it
    assert not bool(q.valid())
    with pytest.raises(FloatingPointError, match="'normal', edge 7"):
        q.check_finite()


# --- PC-DARTS edge normalisation ------------------------------------------------------------------------

@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("method", LEARNED)
def test_edge_norm_adds_betas_and_per_node_softmax_edge_weights(method, space):
    cell_types, E, n_ops = SPACES[space]
    edges = spaces.get_space(space).edges
    torch.manual_seed(4)
    plain = build_posterior(method, space)
    torch.manual_seed(4)
    q = build_posterior(method, space, edge_norm=True)
    names = sorted(name for name, _ in q.named_parameters())
    assert names == sorted([f"alphas.{c}" for c in cell_types] + [f"edge_betas.{c}" for c in cell_types])
    for c in cell_types:  # switching the option on does not move α's initial values
        assert torch.equal(q.alphas[c], plain.alphas[c])
    with torch.no_grad():
        for b in q.edge_betas.values():
            b.normal_()
    for theta in (q.sample(), q.mean()):
        assert set(theta) == set(cell_types) | {edge_key(c) for c in cell_types}
        for c in cell_types:
            beta, gamma = q.edge_betas[c].detach(), theta[edge_key(c)].detach()
            assert gamma.shape == (E,)
            for node in {dst for _, dst in edges}:  # softmax over each node's incoming edges, by hand
                into = [e for e, (_, dst) in enumerate(edges) if dst == node]
                torch.testing.assert_close(gamma[into], torch.exp(beta[into]) / torch.exp(beta[into]).sum())
    terms = q.regularisers()
    if q.l2 > 0:
        l2 = 0.5 * q.l2 * sum((b.detach() ** 2).sum() for b in q.edge_betas.values())
        torch.testing.assert_close(terms["l2_beta"], l2)
        assert set(terms) == {"l2_alpha", "l2_beta"}
    assert "l2_beta" not in plain.regularisers() and not hasattr(plain, "edge_betas")
    assert len(q.edge_stats()[cell_types[0]]["edge_weight"]) == E
    assert "edge_weight" not in plain.edge_stats()[cell_types[0]]
    assert "edge_norm=True" in repr(q) and "edge_norm" not in repr(plain)
    with torch.no_grad():
        q.edge_betas[cell_types[-1]][E - 1] = float("inf")
    assert not bool(q.valid())
    with pytest.raises(FloatingPointError, match=f"Edge parameter beta of cell type '{cell_types[-1]}', edge {E - 1}"):
        q.check_finite()


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_edge_norm_gradients_through_the_architecture_step_match_the_plain_equation(space):
    """β's gradient as the search computes it (∂NLL/∂θ on the fused path, pulled back through θ(α, β)) equals
    autograd straight through the plain equation x_j = Σ_i γ_ij Σ_o θ_ij,o o(x_i)."""
    sp = spaces.get_space(space)
    net = sp.build_supernet(C=4, layers=3 if space == "darts" else 1, partial_channels=2).double()
    q = build_posterior("darts", space, edge_norm=True).double()
    with torch.no_grad():
        for p in q.parameters():
            p.normal_()
    batch = (torch.rand(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 5, 9]))
    theta = q.sample()
    grad_theta, _ = objectives.first_order_gradient(net, theta, batch)
    objectives.pullback(theta, grad_theta).backward()
    pipeline = {n: p.grad.clone() for n, p in q.named_parameters()}
    q.zero_grad()
    net.fused = False
    torch.nn.functional.cross_entropy(net(batch[0], q.sample()), batch[1]).backward()
    for n, p in q.named_parameters():
        torch.testing.assert_close(pipeline[n], p.grad, rtol=1e-8, atol=1e-12)
        assert p.grad.abs().sum() > 0, n
    # and by central differences on one β
    beta, e, h = q.edge_betas[sp.cell_types[0]], 2, 1e-6

    def nll():
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(net(batch[0], q.sample()), batch[1])
    with torch.no_grad():
        beta[e] += h
    up = nll()
    with torch.no_grad():
        beta[e] -= 2 * h
    down = nll()
    torch.testing.assert_close(pipeline[f"edge_betas.{sp.cell_types[0]}"][e], (up - down) / (2 * h),
                               rtol=1e-4, atol=1e-9)


def test_edge_norm_errors_are_clear():
    with pytest.raises(ValueError, match="edge_norm .* needs a distribution with architecture parameters.*'random_ws'"):
        build_posterior("random_ws", "darts", edge_norm=True)
    with pytest.raises(ValueError, match="method 'random' has none"):
        build_posterior("random", "nb201", edge_norm=True)
    with pytest.raises(ValueError, match="edge_norm needs the cell's 6 edges"):
        Dirichlet(("cell",), 6, 5, edge_norm=True)
    with pytest.raises(ValueError, match="true or false"):
        build_posterior("darts", "nb201", edge_norm="yes")
    q = build_posterior("gdas", "darts", edge_norm=True)  # a sparse sample: the edge weights are not ops
    counts = q.argmax_probabilities(samples=3)
    assert set(counts) == {"normal", "reduce"} and counts["normal"].shape == (14, 8)
