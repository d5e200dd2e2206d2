"""vnas.attacks: FGSM, PGD (L∞, L2), EOT-PGD and robust accuracy, their sanity checks, their bad inputs, and a
cross-check against torchattacks (installed with --no-deps by `make env`)."""

import math
import warnings

import pytest
import torch
from torch import nn

from vnas import attacks, bayes

D = 3 * 8 * 8


def _data(n=300, seed=0):
    """Ten classes of 3x8x8 pixel images: a fixed template per class plus noise, clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=gen)
    x = (0.5 + 0.1 * (templates[y] - 0.5) + 0.08 * torch.randn(n, 3, 8, 8, generator=gen)).clamp(0, 1)
    return x, y


class Net(nn.Module):
    """A small MLP with BatchNorm that takes pixels and normalises inside, like vnas's networks."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(D, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.body((x - 0.5) / 0.25)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Net()
    x, y = _data(600, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def bayesian(trained):
    import copy

    model = bayes.make_bayesian(copy.deepcopy(trained), sigma_init=0.05)
    return model.eval()


def _acc(model, x, y, samples=1):
    return (attacks.predict(model, x, samples).argmax(-1) == y).float().mean().item()


# --- the attacks ----------------------------------------------------------------------------------------------

def test_clean_model_is_accurate_and_attacks_lower_its_accuracy(trained):
    x, y = _data(200, seed=2)
    clean = _acc(trained, x, y)
    assert clean > 0.9
    eps = 0.02
    a_fgsm = _acc(trained, attacks.fgsm(trained, x, y, eps), y)
    a_pgd = _acc(trained, attacks.pgd(trained, x, y, eps, steps=10), y)
    assert a_pgd <= a_fgsm + 0.02 and a_pgd < clean - 0.2


@pytest.mark.parametrize("norm, eps", [("linf", 0.02), ("l2", 0.3)])
def test_perturbations_stay_in_the_ball_and_in_pixels(trained, norm, eps):
    x, y = _data(64, seed=3)
    x[:8] = 0.0  # images at the edge of [0, 1]: the clip must act
    x[8:16] = 1.0
    x_adv = attacks.pgd(trained, x, y, eps, steps=5, norm=norm)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert size.max() > 0.5 * eps  # it moved


def test_l2_projection_shortens_only_long_perturbations():
    x = torch.full((2, 3, 4, 4), 0.5)
    far = x.clone()
    far[0] += 0.1  # ||δ|| = 0.1 √48 ≈ 0.69 > 0.5: scaled to 0.5
    far[1, 0, 0, 0] += 0.1  # ||δ|| = 0.1 < 0.5: kept
    p = attacks.project(far, x, 0.5, "l2")
    assert (p[0] - x[0]).norm().item() == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(p[1], far[1])


def test_eps_zero_returns_the_inputs(trained):
    x, y = _data(32, seed=4)
    for fn in (attacks.fgsm, attacks.pgd):
        assert torch.equal(fn(trained, x, y, 0.0), x)


def test_fgsm_is_the_one_line_formula(trained):
    x, y = _data(32, seed=5)
    x_ = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(trained(x_), y, reduction="sum").backward()
    expected = (x + 0.02 * x_.grad.sign()).clamp(0, 1)
    assert torch.allclose(attacks.fgsm(trained, x, y, 0.02), expected)


def test_attacks_leave_the_models_mode_flags_and_weight_grads_alone(trained, bayesian):
    x, y = _data(16, seed=6)
    for p in trained.parameters():
        p.grad = None
    trained.train()
    try:
        attacks.pgd(trained, x, y, 0.03, steps=2)
        assert trained.training and all(p.grad is None for p in trained.parameters())
    finally:
        trained.eval()
    layers = [m for m in bayesian.modules() if isinstance(m, bayes.MeanField)]
    attacks.eot_pgd(bayesian, x, y, 0.03, steps=2, samples=2)
    assert not any(m.sampling for m in layers) and not bayesian.training


def test_a_stochastic_model_samples_under_attack_with_eval_batchnorm(bayesian):
    x, y = _data(16, seed=7)
    with attacks.attacking(bayesian):
        a, b = bayesian(x), bayesian(x)
        assert not bayesian.training and not torch.equal(a, b)
    assert torch.equal(bayesian(x), bayesian(x))  # after: the mean network again


def test_restarts_keep_the_strongest_start(trained):
    x, y = _data(100, seed=8)
    gen = torch.Generator().manual_seed(0)
    one = attacks.pgd(trained, x, y, 0.02, steps=3, restarts=1, generator=gen)
    gen = torch.Generator().manual_seed(0)
    three = attacks.pgd(trained, x, y, 0.02, steps=3, restarts=3, generator=gen)
    ce = nn.functional.cross_entropy
    assert (ce(trained(three), y, reduction="none") >= ce(trained(one), y, reduction="none") - 1e-5).all()


def test_eot_is_not_weaker_than_plain_pgd_on_a_stochastic_model(bayesian):
    x, y = _data(300, seed=9)
    eps = 0.02
    torch.manual_seed(0)
    plain = _acc(bayesian, attacks.pgd(bayesian, x, y, eps, steps=5), y, samples=16)
    eot = _acc(bayesian, attacks.eot_pgd(bayesian, x, y, eps, steps=5, samples=8), y, samples=16)
    assert eot <= plain + 0.03


# --- robust accuracy and its run-time checks -----------------------------------------------------------

def test_robust_accuracy_runs_its_checks_and_goes_to_zero(trained):
    x, y = _data(200, seed=10)
    batches = [(x[:100], y[:100]), (x[100:], y[100:])]
    out = attacks.robust_accuracy(trained, batches, "pgd", [0, 0.005, 0.01, 0.05], steps=10)
    assert out["n"] == 200 and out["acc"][0] == out["clean"]
    assert all(a >= b for a, b in zip(out["acc"], out["acc"][1:], strict=False))  # monotone in eps here
    assert out["acc"][-1] < 0.05 and out["warnings"] == []
    assert out["checks"]["eps0_is_clean"] and out["checks"]["not_weaker_than_fgsm"] and out["checks"]["goes_to_zero"]
    assert all(p <= f + 0.02 for p, f in zip(out["acc"], out["fgsm"], strict=True))


class Masked(nn.Module):
    """A model whose input gradient is zero (a hard quantisation in front): gradient masking."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + (torch.round(x * 4) / 4 - x).detach() - (x - x.detach()))


def test_gradient_masking_is_warned(trained):
    x, y = _data(100, seed=11)
    masked = Masked(trained)
    with pytest.warns(attacks.AttackWarning, match="masked"):
        out = attacks.robust_accuracy(masked, [(x, y)], "pgd", [0, 0.03], steps=5, random_start=False)
    assert not out["checks"]["goes_to_zero"]


def test_a_broken_attack_that_leaves_the_ball_is_an_error(trained):
    x, y = _data(16, seed=12)
    with pytest.raises(RuntimeError, match="left the linf ball"):
        attacks.robust_accuracy(trained, [(x, y)], lambda m, x, y, eps: (x + 2 * eps).clamp(0, 1), [0.01])


def test_a_weak_attack_is_warned_against_fgsm(trained):
    x, y = _data(200, seed=13)
    weak = lambda m, x, y, eps: attacks.pgd(m, x, y, eps, step_size=1e-4, steps=1, random_start=False)  # noqa: E731
    with pytest.warns(attacks.AttackWarning, match="weaker than fgsm"):
        attacks.robust_accuracy(trained, [(x, y)], weak, [0.03], checks=True, masking_eps=0)


def test_eot_robust_accuracy_reports_plain_pgd_and_fgsm(bayesian):
    x, y = _data(100, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", attacks.AttackWarning)
        out = attacks.robust_accuracy(bayesian, [(x, y)], "eot_pgd", [0, 0.02], predict_samples=4, samples=2, steps=3)
    assert set(out) >= {"pgd", "fgsm"} and len(out["pgd"]) == 2
    assert "not_weaker_than_pgd" in out["checks"]


# --- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.1), "eps must be a number in \\[0, 1\\]"),
    (dict(eps=1.5), "eps must be a number in \\[0, 1\\]"),
    (dict(eps=0.1, steps=0), "steps must be an integer >= 1"),
    (dict(eps=0.1, step_size=0.0), "step_size must be a number > 0"),
    (dict(eps=0.1, step_size=-1.0), "step_size must be a number > 0"),
    (dict(eps=0.1, norm="l1"), "Unknown norm 'l1'"),
    (dict(eps=0.1, restarts=0), "restarts must be an integer >= 1"),
    (dict(eps=-1.0, norm="l2"), "finite number >= 0 for the L2 norm"),
])
def test_bad_attack_arguments_say_what_is_wrong(trained, kwargs, match):
    x, y = _data(4)
    with pytest.raises(ValueError, match=match):
        attacks.pgd(trained, x, y, **kwargs)


def test_fgsm_refuses_a_bad_eps(trained):
    x, y = _data(4)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        attacks.fgsm(trained, x, y, 2.0)


@pytest.mark.parametrize("attack", [attacks.fgsm, attacks.pgd, attacks.eot_pgd])
def test_inputs_outside_pixels_say_models_normalise_inside(trained, attack):
    x, y = _data(4)
    normalised = (x - 0.5) / 0.25
    with pytest.raises(ValueError, match="normalise inside"):
        attack(trained, normalised, y, 0.01)


def test_eot_with_too_few_samples_or_a_deterministic_model(trained, bayesian):
    x, y = _data(4)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        attacks.eot_pgd(bayesian, x, y, 0.01, samples=0)
    with pytest.warns(attacks.AttackWarning, match="plain PGD"):
        attacks.eot_pgd(trained, x, y, 0.01, steps=1, samples=4)


def test_robust_accuracy_refuses_unknown_attacks_and_no_batches(trained):
    x, y = _data(4)
    with pytest.raises(ValueError, match="Unknown attack 'cw'"):
        attacks.robust_accuracy(trained, [(x, y)], "cw", [0.01])
    with pytest.raises(ValueError, match="no batches"):
        attacks.robust_accuracy(trained, [], "pgd", [0.01])
    with pytest.raises(ValueError, match="eps_grid is empty"):
        attacks.robust_accuracy(trained, [(x, y)], "pgd", [])


# --- the cross-check with a kept library ---------------------------------------------------------------------

def test_pgd_matches_torchattacks_within_noise(trained, torchattacks):
    x, y = _data(400, seed=15)
    eps, steps = 0.015, 10
    alpha = 2.5 * eps / steps
    torch.manual_seed(0)
    theirs = _acc(trained, torchattacks.PGD(trained, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y), y)
    ours = _acc(trained, attacks.pgd(trained, x, y, eps, alpha, steps), y)
    clean = _acc(trained, x, y)
    assert clean - ours > 0.25  # the budget matters here, so agreeing is not trivial
    assert abs(ours - theirs) <= 2 * math.sqrt(0.25 / 400) + 0.01


def test_eot_pgd_matches_torchattacks_within_noise(bayesian, torchattacks):
    x, y = _data(400, seed=16)
    eps, steps, samples = 0.015, 5, 4
    alpha = 2.5 * eps / steps
    torch.manual_seed(0)
    # torchattacks puts the model in eval mode; the sampling flag keeps the Bayesian layers sampling there
    with bayes.sampling(bayesian, True):
        eot = torchattacks.EOTPGD(bayesian, eps=eps, alpha=alpha, steps=steps, eot_iter=samples, random_start=True)
        x_theirs = eot(x, y)
    theirs = _acc(bayesian, x_theirs, y, samples=16)
    ours = _acc(bayesian, attacks.eot_pgd(bayesian, x, y, eps, alpha, steps, samples=samples), y, samples=16)
    clean = _acc(bayesian, x, y, samples=16)
    assert clean - ours > 0.25
    assert abs(ours - theirs) <= 2 * math.sqrt(0.25 / 400) + 0.02
