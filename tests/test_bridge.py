"""The exact bridge (vnas.bridge): closed forms against vnas.evidence and brute force, the ELBO below the relaxed
evidence, the variational posterior against the exact one, its plots, and chapter 04's objective checker."""

import itertools
import math

import matplotlib
import pytest
import torch

from vnas import bridge, checks, plots, posteriors
from vnas import evidence as ev

matplotlib.use("Agg")

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    with ev._one_thread():
        yield


def problem(n=30, seed=0, **kwargs):
    return bridge.sample_problem(n, generator=torch.Generator().manual_seed(seed), **kwargs)


# --- closed forms --------------------------------------------------------------------------------------------

def test_structure_evidence_matches_bayesian_linear_regression():
    p = problem(25, ops=("linear", "sine", "abs"))  # correlated ops: the evidence must not assume orthogonality
    structures = torch.tensor([[0, 0, 0], [1, 2, 0], [2, 1, 1]])
    batched = bridge.structure_log_evidence(p, structures)
    for s, value in zip(structures, batched, strict=True):
        phi = p.phi[:, torch.arange(3), s]  # phi[n, e] = op_{s_e}(x_ne)
        want = ev.log_evidence(ev.LinearModel(phi, p.y, p.alpha, p.sigma))
        assert torch.isclose(value, want, rtol=0, atol=1e-10)
        one_hot = torch.nn.functional.one_hot(s, 3).to(DTYPE)
        assert torch.isclose(bridge.log_lik(p, one_hot), want, rtol=0, atol=1e-10)


def test_relaxed_evidence_is_the_gaussian_marginal_of_the_mixed_features():
    p = problem(12)
    theta = torch.distributions.Dirichlet(torch.ones(3, 4, dtype=DTYPE)).sample()
    phi = torch.einsum("nek,ek->ne", p.phi, theta)
    cov = p.sigma**2 * torch.eye(p.n, dtype=DTYPE) + phi @ phi.T / p.alpha
    want = torch.distributions.MultivariateNormal(torch.zeros(p.n, dtype=DTYPE), cov).log_prob(p.y)
    assert torch.isclose(bridge.log_lik(p, theta), want, rtol=0, atol=1e-10)


def test_log_lik_gradient_matches_finite_differences():
    p = problem(15)
    theta = torch.distributions.Dirichlet(torch.ones(2, 3, 4, dtype=DTYPE)).sample().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: bridge.log_lik(p, t), (theta,), eps=1e-6, atol=1e-6)


def test_exact_marginals_match_brute_force():
    p = problem(8, num_edges=2, num_ops=3)
    exact = bridge.exact_posterior(p)
    assert torch.isclose(exact.probs.sum(), torch.tensor(1.0, dtype=DTYPE))
    assert torch.allclose(exact.marginals.sum(-1), torch.ones(2, dtype=DTYPE))
    evidence = {}
    for s in itertools.product(range(3), repeat=2):
        phi = p.phi[:, torch.arange(2), torch.tensor(s)]
        evidence[s] = math.exp(ev.log_evidence(ev.LinearModel(phi, p.y, p.alpha, p.sigma)).item())
    total = sum(evidence.values())
    marginals = torch.zeros(2, 3, dtype=DTYPE)
    for s, value in evidence.items():
        for e, k in enumerate(s):
            marginals[e, k] += value / total
    assert torch.allclose(exact.marginals, marginals, atol=1e-12)
    assert tuple(exact.map.tolist()) == max(evidence, key=evidence.get)
    assert math.isclose(exact.log_marginal, math.log(total / 9), abs_tol=1e-10)


def test_enumeration_limit_states_size_and_limit():
    p = problem(5, num_edges=7, num_ops=4)
    with pytest.raises(ValueError, match=r"4\^7 = 16384 .*limit 4096"):
        bridge.exact_posterior(p)
    assert bridge.exact_posterior(problem(5, num_edges=2), limit=16).structures.shape == (16, 2)


# --- the relaxed model's evidence and the ELBO ---------------------------------------------------------------

def test_importance_sampling_agrees_with_prior_sampling_on_a_tiny_problem():
    p = problem(4, num_edges=2, num_ops=3)
    gen = torch.Generator().manual_seed(1)
    q = bridge.fit_variational(p, c0=1.0, steps=100, generator=gen).posterior
    estimate = bridge.log_evidence_is(p, 1.0, q, samples=50_000, generator=gen)
    torch.manual_seed(2)
    ll = bridge.log_lik(p, torch.distributions.Dirichlet(torch.ones(2, 3, dtype=DTYPE)).sample((200_000,)))
    w = (ll - ll.max()).exp()
    brute, brute_se = (ll.max() + w.mean().log()).item(), (w.std() / (w.mean() * math.sqrt(len(w)))).item()
    assert abs(estimate.value - brute) < 4 * math.hypot(estimate.se, brute_se) + 1e-4
    assert estimate.se < 0.01


def test_elbo_is_below_the_evidence_and_the_gap_shrinks_as_q_improves():
    p = problem(30, seed=3)
    gen = torch.Generator().manual_seed(4)
    init = posteriors.build_posterior("variational", p.space, gen, c0=1.0, l2=0.0).double()
    short = bridge.fit_variational(p, 1.0, steps=20, lr=0.1, generator=gen).posterior
    long = bridge.fit_variational(p, 1.0, steps=500, generator=gen).posterior
    log_z = bridge.log_evidence_is(p, 1.0, long, samples=100_000, generator=gen)
    gaps = []
    for q in (init, short, long):
        bound = bridge.elbo(q, p, samples=20_000, generator=gen)
        assert bound.value < log_z.value + 3 * math.hypot(bound.se, log_z.se)
        gaps.append((log_z.value - bound.value, math.hypot(bound.se, log_z.se)))
    (g_init, s_init), (g_short, s_short), (g_long, s_long) = gaps
    assert g_long + 3 * math.hypot(s_long, s_short) < g_short
    assert g_short + 3 * math.hypot(s_short, s_init) < g_init
    assert g_long > -3 * s_long  # a bound: never above log p(D) beyond the noise


# --- the variational posterior against the exact one ---------------------------------------------------------

def test_large_n_concentrates_q_on_the_true_structure():
    truth = torch.tensor([2, 0, 3])
    p = problem(400, seed=5, structure=truth, weights=[1.5, -1.5, 1.5])
    run = bridge.run_bridge(p, c0=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(run.exact.map, truth)
    assert bool((run.q_argmax[torch.arange(3), truth] > 0.9).all()), run.q_argmax
    assert run.map_agrees and run.tv_q < 0.1


def test_darts_spreads_its_weight_where_the_truth_is_a_mixture():
    """Edge 0's true feature is 0.5 linear + 0.5 square: the relaxed model fits it exactly, a structure can't."""
    p = problem(400, seed=7, structure=[0, 1, 2], weights=[3.0, 1.5, -1.5], mixture=(0, 0, 1))
    darts = bridge.fit_darts(p, generator=torch.Generator().manual_seed(8))
    weights = darts.posterior.mean()["cell"].detach()
    assert weights[0, 0] > 0.3 and weights[0, 1] > 0.3, weights
    exact = bridge.exact_posterior(p)
    assert exact.marginals[0, :2].max() > 0.99  # the discrete posterior must pick one of the two ops
    q = bridge.fit_variational(p, generator=torch.Generator().manual_seed(8)).posterior
    q_argmax = bridge.argmax_probabilities(q)["cell"]
    assert q_argmax[0, 0] > 0.3 and q_argmax[0, 1] > 0.3, q_argmax  # so q's structure is off by TV > 0.3 there
    assert bridge.total_variation(exact.marginals, q_argmax)[0] > 0.3


def test_fitting_data_sets_together_is_fitting_them_apart():
    """fit_many's joint objective is a separable sum and Adam acts elementwise (DARTS: no sampling noise)."""
    ps = [problem(20, seed=s) for s in (9, 10)]
    joint = bridge.fit_many(ps, "darts", steps=200, l2=0.0)
    for p, fit in zip(ps, joint, strict=True):
        alone = bridge.fit_darts(p, steps=200)
        assert torch.allclose(fit.posterior.mean()["cell"], alone.posterior.mean()["cell"], atol=0.02)
        assert fit.elbo[-1] == pytest.approx(alone.elbo[-1], abs=1e-3)


def test_argmax_probabilities_for_any_distribution():
    space = bridge.CellSpace(3, 4)
    darts = posteriors.build_posterior("darts", space)
    one_hot = bridge.argmax_probabilities(darts)["cell"]
    assert torch.equal(one_hot, torch.nn.functional.one_hot(darts.mean()["cell"].argmax(-1), 4).float())
    snas = posteriors.build_posterior("snas", space)  # generic path: sample() called repeatedly
    probs = bridge.argmax_probabilities(snas, samples=200)["cell"]
    assert probs.shape == (3, 4) and torch.allclose(probs.sum(-1), torch.ones(3))
    dirichlet = posteriors.build_posterior("variational", space).double()
    with torch.no_grad():
        dirichlet.alphas["cell"][:, 2] = 30.0
    assert bool((bridge.argmax_probabilities(dirichlet)["cell"][:, 2] > 0.95).all())


def test_compare_rows_and_plots():
    rows = bridge.compare(ns=(5, 20), c0s=(1.0,), datasets=3, steps=20, argmax_samples=200)
    assert [(r["n"], r["c0"]) for r in rows] == [(5, 1.0), (20, 1.0)]
    for r in rows:
        assert r["tv_q_low"] <= r["tv_q"] <= r["tv_q_high"] and 0 <= r["tv_darts"] <= 1
        assert r["map_agreement_low"] <= r["map_agreement"] <= r["map_agreement_high"]
    p = problem(20)
    run = bridge.run_bridge(p, steps=30, argmax_samples=200)
    log_z = bridge.log_evidence_is(p, 1.0, run.variational.posterior, samples=2000)
    assert plots.plot_marginals(run.exact.marginals, run.q_argmax, run.darts_weights, p.ops) is not None
    assert plots.plot_bridge_elbo(run.variational, log_z) is not None
    assert len(plots.plot_compare(rows)) == 2
    with pytest.raises(ValueError, match="len\\(ops\\)"):
        plots.plot_marginals(run.exact.marginals, run.q_argmax, run.darts_weights, p.ops[:3])


# --- validation ----------------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_clear_messages():
    p = problem(5)
    with pytest.raises(ValueError, match="c0"):
        bridge.fit_variational(p, c0=0.0)
    with pytest.raises(ValueError, match="c0"):
        bridge.log_evidence_is(p, c0=-1.0)
    with pytest.raises(ValueError, match="c0"):
        bridge.compare(c0s=(0.0,))
    with pytest.raises(ValueError, match="kl_scale"):
        bridge.fit_variational(p, kl_scale=-0.5)
    with pytest.raises(ValueError, match="n \\(the number of data points\\)"):
        bridge.sample_problem(0)
    with pytest.raises(ValueError, match="Unknown op 'linaer'.*Did you mean 'linear'"):
        bridge.sample_problem(5, ops=("linaer", "square"))
    with pytest.raises(ValueError, match="valid ops: linear, square"):
        bridge.make_problem(p.x, p.y, ops=("relu", "square"))
    with pytest.raises(ValueError, match="theta must have shape"):
        bridge.log_lik(p, torch.ones(3, 5, dtype=DTYPE))
    with pytest.raises(ValueError, match="Dirichlet"):
        bridge.elbo(posteriors.build_posterior("darts", p.space), p)


# --- the exercise checker of chapter 04 ----------------------------------------------------------------------

def objective_right(log_lik_samples, kl_per_edge, num_data):
    return -log_lik_samples.mean() / num_data + kl_per_edge.sum() / num_data


def test_bridge_elbo_checker_passes_the_answer_and_flags_a_stub():
    result = checks.check_bridge_elbo(objective_right)
    assert result.passed and result.exercise == "bridge_elbo"

    def stub(log_lik_samples, kl_per_edge, num_data):
        raise NotImplementedError

    def empty(log_lik_samples, kl_per_edge, num_data):
        pass

    for answer in (stub, empty):
        assert checks.check_bridge_elbo(answer, stop=False).status == "not attempted"
        with pytest.raises(checks.NotAttempted):
            checks.check_bridge_elbo(answer)


@pytest.mark.parametrize("answer, message", [
    (lambda ll, kl, n: -ll.mean() / n + kl.sum(), "divide the KL by num_data too"),
    (lambda ll, kl, n: ll.mean() / n - kl.sum() / n, "wrong sign"),
    (lambda ll, kl, n: -ll.sum() / n + kl.sum() / n, "average the log-likelihood over the samples"),
    (lambda ll, kl, n: -ll.mean() + kl.sum() / n, "divide the log-likelihood by num_data too"),
    (lambda ll, kl, n: -ll.mean() / n + kl.mean() / n, "sum the KL over the edges"),
    (lambda ll, kl, n: -ll / n + kl.sum() / n, "returned shape"),
    (lambda ll, kl, n: (-ll.mean() / n + kl.sum() / n).item(), "return a torch tensor"),
    (lambda ll, kl, n: -ll.mean().detach() / n + kl.sum() / n, "not differentiable"),
])
def test_bridge_elbo_checker_rejects(answer, message):
    result = checks.check_bridge_elbo(answer, stop=False)
    assert result.status == "wrong" and message in result.reason, result.reason
    with pytest.raises(checks.ExerciseError):
        checks.check_bridge_elbo(answer)
