"""Bayesian weights (vnas.bayes): the KLs are the textbook ones (checked against torch.distributions), the local
reparameterisation samples the right output distribution, gradients reach q(w) and q(θ), the sampling flag does
what it says, make_bayesian keeps the network's function, and bad input is refused in words."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta, Categorical, MixtureSameFamily, Normal, kl_divergence

from vnas import bayes, ops, spaces
from vnas.networks import build_network
from vnas.posteriors import build_posterior

CL = torch.channels_last
NB201_GENOTYPE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
Z = 5.0  # how many standard errors a Monte Carlo estimate may be off


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny convolutions: on a busy machine, worker threads spinning at barriers cost more than
    they save (minutes instead of a second)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _supernet(space="nb201", **kw):
    kw = {"C": 4, "layers": 1, "num_classes": 10} | kw
    return spaces.get_space(space).build_supernet(**kw)


def _final_network():
    genotype = spaces.load_genotype(NB201_GENOTYPE)
    return build_network(genotype, C=4, layers=1, num_classes=10, auxiliary=False, drop_path=0.0)


def _softmax_theta(net, dtype=torch.float32):
    return {k: torch.softmax(torch.randn(*s, dtype=dtype), -1) for k, s in net.shapes.items()}


def _mu_sigma(n=30, dtype=torch.float64):
    mu = 0.2 * torch.randn(n, dtype=dtype)
    sigma = torch.empty(n, dtype=dtype).uniform_(0.02, 0.3)
    return mu, sigma


def _set_sigma(layer, low=0.1, high=0.3):
    """Random posterior scales σ ~ U(low, high), large enough for the noise to be seen."""
    with torch.no_grad():
        for rho in (layer.weight_rho, layer.bias_rho):
            if rho is not None:
                rho.copy_(torch.empty_like(rho).uniform_(low, high).expm1().log())


def _warm_bn(net, x, *args):
    """A few training-mode passes so that BN's running statistics are not their initial 0 and 1."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x, *args)


# ---- 1. KLs against torch.distributions ----------------------------------------------------------------

@pytest.mark.parametrize("scale_kind", ["float", "tensor"])
def test_gaussian_kl_is_the_sum_of_normal_kls(scale_kind):
    mu, sigma = _mu_sigma()
    s = 0.4
    scale = 0.7 if scale_kind == "float" else torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    reference = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), s * scale)).sum()
    ours_fn = bayes.gaussian_kl(mu, sigma, s * scale)
    ours_prior = bayes.GaussianPrior(s).kl(mu, sigma, scale)
    torch.testing.assert_close(ours_fn, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_prior, reference, rtol=1e-12, atol=1e-12)
    if scale_kind == "tensor":
        (g_ref,) = torch.autograd.grad(reference, scale)
        (g_fn,) = torch.autograd.grad(ours_fn, scale)
        (g_prior,) = torch.autograd.grad(ours_prior, scale)
        assert g_ref.abs() > 1e-3  # a gradient worth comparing
        torch.testing.assert_close(g_fn, g_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_prior, g_ref, rtol=1e-10, atol=1e-12)


def test_gaussian_kl_gradient_reaches_a_float32_scale_from_float64_weights():
    mu, sigma = _mu_sigma()
    s = torch.tensor(0.5, requires_grad=True)  # float32, as a θ sample is
    (g,) = torch.autograd.grad(bayes.gaussian_kl(mu, sigma, s), s)
    s64 = s.detach().double().requires_grad_()
    (g_ref,) = torch.autograd.grad(kl_divergence(Normal(mu, sigma), Normal(0.0, s64)).sum(), s64)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6)


def test_gaussian_kl_gradients_pass_a_finite_difference_check():
    mu, sigma = _mu_sigma(8)
    mu.requires_grad_(), sigma.requires_grad_()
    s = torch.tensor(0.35, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bayes.gaussian_kl, (mu, sigma, s))
    assert torch.autograd.gradgradcheck(bayes.gaussian_kl, (mu, sigma, s))


def _mixture(pi, s1, s2, scale=1.0):
    return MixtureSameFamily(Categorical(torch.tensor([pi, 1 - pi], dtype=torch.float64)),
                             Normal(torch.zeros(2, dtype=torch.float64),
                                    torch.tensor([s1 * scale, s2 * scale], dtype=torch.float64)))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_scale_mixture_log_prob_is_the_mixture_density(scale):
    prior, p = bayes.ScaleMixturePrior(0.3, 1.0, 0.05), _mixture(0.3, 1.0, 0.05, scale)
    w = torch.cat([torch.randn(50, dtype=torch.float64), 0.02 * torch.randn(50, dtype=torch.float64)])
    torch.testing.assert_close(prior.log_prob(w, scale), p.log_prob(w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_scale_mixture_kl_is_an_unbiased_one_sample_estimate(scale):
    pi, s1, s2 = 0.3, 1.0, 0.05
    prior, p = bayes.ScaleMixturePrior(pi, s1, s2), _mixture(pi, s1, s2, scale)
    mu, sigma = _mu_sigma(20)
    calls = 4000
    ours = torch.stack([prior.kl(mu, sigma, scale) for _ in range(calls)])
    assert ours.std() > 0  # one sample per call, not a closed form
    q = Normal(mu, sigma)
    w = q.sample((200_000,))
    reference = (q.log_prob(w) - p.log_prob(w)).sum(-1)
    se = math.sqrt(ours.var() / calls + reference.var() / len(reference))
    assert abs(float(ours.mean() - reference.mean())) < 4 * se, (float(ours.mean()), float(reference.mean()), se)


def test_layer_kl_sums_weight_and_bias_kls():
    layer = bayes.MeanFieldConv2d(3, 4, 3, padding=1, bias=True).double()
    _set_sigma(layer)
    s = 0.3
    reference = sum(kl_divergence(Normal(mu, sig), Normal(torch.zeros_like(mu), torch.full_like(mu, s))).sum()
                    for mu, sig in ((layer.weight_mu, layer.weight_sigma), (layer.bias_mu, layer.bias_sigma)))
    torch.testing.assert_close(layer.kl(bayes.GaussianPrior(s)), reference, rtol=1e-12, atol=1e-12)


def _coupled_net():
    net = bayes.make_bayesian(_supernet().double(), sigma_init=0.05)
    with torch.no_grad():
        for _, m in bayes.variational_layers(net):
            m.weight_rho.add_(0.5 * torch.randn_like(m.weight_rho))
    return net


def test_coupled_weight_kl_is_the_hand_built_sum():
    net = _coupled_net()
    sigma0, eps = 0.2, 0.05
    theta = {"cell": torch.distributions.Dirichlet(torch.ones(6, 5, dtype=torch.float64)).sample()}
    plain = bayes.GaussianPrior(sigma0)
    expected, coupled = torch.zeros((), dtype=torch.float64), set()
    for kind, e, o, op in net.edge_ops():
        for m in op.modules():
            if isinstance(m, bayes.MeanField):
                expected = expected + m.kl(plain, scale=(theta[kind][e, o] + eps) / (1 + eps))
                coupled.add(id(m))
    outside = [m for _, m in bayes.variational_layers(net) if id(m) not in coupled]
    for m in outside:
        expected = expected + m.kl(plain, scale=1.0)
    assert coupled and outside  # both kinds of layer are in the sum (stem and classifier are outside)
    ours = bayes.weight_kl(net, bayes.CoupledPrior(sigma0, eps), theta)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-9)
    # the coupling matters: θ < 1 shrinks the prior of the edge ops, so the KL differs from the plain prior's
    assert abs(float(ours.detach() - bayes.weight_kl(net, plain).detach())) > 1.0


def test_coupled_prior_at_theta_one_is_the_plain_prior():
    net = _coupled_net()
    sigma0 = 0.2
    coupled, plain = bayes.CoupledPrior(sigma0, eps=0.05), bayes.GaussianPrior(sigma0)
    genotype = spaces.nb201.parse(NB201_GENOTYPE)
    theta = {k: v.double() for k, v in spaces.nb201.one_hot(genotype).items()}
    selected = 0
    for kind, e, o, op in net.edge_ops():
        for m in op.modules():
            if isinstance(m, bayes.MeanField):
                ours, ref = m.kl(coupled, coupled.scale(theta[kind][e, o])), m.kl(plain)
                if theta[kind][e, o] == 1:
                    selected += 1
                    assert torch.equal(ours, ref)
                else:  # switched off: the prior scale is σ0 ε / (1 + ε), and the KL grows
                    assert ours > ref + 10
    assert selected > 0
    # all θ = 1: every layer has the plain prior, so the whole KL is the plain one
    ones = {k: torch.ones_like(v) for k, v in theta.items()}
    torch.testing.assert_close(bayes.weight_kl(net, coupled, ones), bayes.weight_kl(net, plain), rtol=1e-14, atol=0)


# ---- 2. the local reparameterisation -------------------------------------------------------------------

def _layers():
    return {
        "conv3x3_bias": bayes.MeanFieldConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1, bias=True)),
        "depthwise_dilated": bayes.MeanFieldConv2d.from_conv(ops.DepthwiseConv2d(4, 3, 1, 2, 2)),
        "depthwise_strided_dilated": bayes.MeanFieldConv2d.from_conv(ops.DepthwiseConv2d(4, 3, 2, 2, 2)),
        "conv_strided": bayes.MeanFieldConv2d.from_conv(nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=True)),
        "linear": bayes.MeanFieldLinear.from_linear(nn.Linear(6, 5)),
    }


def _input(name):
    return torch.randn(1, 6, dtype=torch.float64) if name == "linear" else \
        torch.randn(1, 3 if name == "conv3x3_bias" else 4, 6, 6, dtype=torch.float64)


def _analytic(layer, x):
    """x ⋆ μ and x² ⋆ σ², computed with torch's own conv / linear."""
    b_mu, b_var = layer.bias_mu, None if layer.bias_rho is None else layer.bias_sigma.square()
    if isinstance(layer, bayes.MeanFieldLinear):
        return F.linear(x, layer.weight_mu, b_mu), F.linear(x * x, layer.weight_sigma.square(), b_var)
    args = layer.stride, layer.padding, layer.dilation, layer.groups
    return (F.conv2d(x, layer.weight_mu, b_mu, *args), F.conv2d(x * x, layer.weight_sigma.square(), b_var, *args))


def _moments_agree(mean_a, var_a, n_a, mean_b, var_b, n_b=None):
    """Per output unit: means within Z standard errors, variances within Z relative standard errors (Gaussian
    outputs: Var(sample variance) = 2 σ⁴ / (n - 1)). ``n_b=None``: b is exact."""
    inv_b = 0.0 if n_b is None else 1.0 / n_b
    se_mean = torch.sqrt(var_b * (1.0 / n_a + inv_b))
    assert ((mean_a - mean_b).abs() < Z * se_mean).all(), float(((mean_a - mean_b).abs() / se_mean).max())
    rel = math.sqrt(2.0 / (n_a - 1) + (0.0 if n_b is None else 2.0 / (n_b - 1)))
    assert ((var_a / var_b - 1).abs() < Z * rel).all(), float((var_a / var_b - 1).abs().max())


@pytest.mark.parametrize("name", ["conv3x3_bias", "depthwise_dilated", "depthwise_strided_dilated", "conv_strided",
                                  "linear"])
def test_local_reparameterisation_samples_the_output_distribution(name):
    layer = _layers()[name].double().train()
    if name.startswith("depthwise"):
        assert layer._fast  # the fast depthwise path is the one under test
    _set_sigma(layer)
    if layer.bias_rho is not None:
        with torch.no_grad():  # a bias noise of the size of the weights' share, so that forgetting it shows
            layer.bias_rho.fill_(math.log(math.expm1(0.5)))
    x = _input(name)
    with torch.no_grad():
        mean, var = _analytic(layer, x)
        assert (var > 1e-3).all()
        n = 8000
        lr = layer(x.expand(n, *x.shape[1:]))  # every example of the batch gets its own weights
        lr_mean, lr_var = lr.mean(0, keepdim=True), lr.var(0, keepdim=True)
        layer.local_reparameterisation = False
        m = 3000
        explicit = torch.cat([layer(x) for _ in range(m)])  # one weight draw per forward pass
        ex_mean, ex_var = explicit.mean(0, keepdim=True), explicit.var(0, keepdim=True)
    # the noise is really there: far from the mean map, and different across the batch
    assert (lr_var > 0.5 * var).all()
    _moments_agree(lr_mean, lr_var, n, mean, var)
    _moments_agree(ex_mean, ex_var, m, mean, var)
    _moments_agree(lr_mean, lr_var, n, ex_mean, var, m)
    _moments_agree(lr_mean, lr_var, n, ex_mean, ex_var, m)


def test_explicit_sampling_shares_one_weight_draw_across_the_batch():
    layer = bayes.MeanFieldLinear(6, 5).double().train()
    _set_sigma(layer)
    layer.local_reparameterisation = False
    x = torch.randn(1, 6, dtype=torch.float64)
    out = layer(x.expand(4, 6))
    torch.testing.assert_close(out, out[:1].expand(4, 5))
    layer.local_reparameterisation = True
    out = layer(x.expand(4, 6))
    assert not torch.allclose(out[0], out[1])


# ---- 3. gradients -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["conv3x3_bias", "depthwise_dilated", "linear"])
@pytest.mark.parametrize("local", [True, False])
def test_gradients_reach_mu_and_rho_through_the_forward_pass_and_the_kl(name, local):
    layer = _layers()[name].double().train()
    _set_sigma(layer)
    layer.local_reparameterisation = local
    params = [p for p in (layer.weight_mu, layer.weight_rho, layer.bias_mu, layer.bias_rho) if p is not None]
    x = _input(name)
    out = layer(x.expand(4, *x.shape[1:]))
    for g in torch.autograd.grad(out.square().sum(), params):
        assert torch.isfinite(g).all() and (g != 0).any()
    # the KL's gradient is the closed form: ∂/∂μ = μ / s², ∂/∂ρ = (−1/σ + σ / s²) · sigmoid(ρ)
    s = 0.3
    grads = torch.autograd.grad(layer.kl(bayes.GaussianPrior(s)), params)
    for p, g in zip(params, grads, strict=True):
        if p is layer.weight_mu or p is layer.bias_mu:
            torch.testing.assert_close(g, p / s**2)
        else:
            sig = F.softplus(p)
            torch.testing.assert_close(g, (-1 / sig + sig / s**2) * torch.sigmoid(p))


def test_coupled_weight_kl_backpropagates_into_q_theta_and_detach_q_stops_q_w():
    net = bayes.make_bayesian(_supernet(), sigma_init=0.05)
    q = build_posterior("variational", "nb201")
    prior = bayes.CoupledPrior(0.1)
    layers = [m for _, m in bayes.variational_layers(net)]

    kl = bayes.weight_kl(net, prior, q.sample())
    kl.backward()
    assert torch.isfinite(q.alphas["cell"].grad).all() and q.alphas["cell"].grad.abs().sum() > 0
    assert all(m.weight_mu.grad is not None and m.weight_rho.grad.abs().sum() > 0 for m in layers)

    q.zero_grad(), net.zero_grad(set_to_none=True)
    bayes.weight_kl(net, prior, q.sample(), detach_q=True).backward()
    assert q.alphas["cell"].grad.abs().sum() > 0
    assert all(m.weight_mu.grad is None and m.weight_rho.grad is None for m in layers)


# ---- 4. the sampling flag ------------------------------------------------------------------------------

def test_eval_mode_is_the_mean_map_and_train_mode_samples():
    layer = bayes.MeanFieldConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1, bias=True))
    _set_sigma(layer)
    x = torch.randn(2, 3, 6, 6)
    mean_map = F.conv2d(x, layer.weight_mu, layer.bias_mu, 1, 1)
    layer.eval()
    assert torch.equal(layer(x), mean_map) and torch.equal(layer(x), layer(x))
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, mean_map)
    with bayes.sampling(layer, False):
        assert torch.equal(layer(x), mean_map)
    layer.eval()
    with bayes.sampling(layer, True):
        assert not torch.allclose(layer(x), mean_map)
    assert layer.sampling is None and torch.equal(layer(x), mean_map)


def test_sampling_context_overrides_the_mode_and_restores_the_flags():
    net = bayes.make_bayesian(_final_network(), sigma_init=0.1)
    layers = [m for _, m in bayes.variational_layers(net)]
    layers[0].sampling = False  # a flag set before the block comes back too
    x = torch.rand(2, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        mean = net(x)
        bn = net.stem[1]
        before = bn.running_mean.clone()
        with bayes.sampling(net, True) as model:
            assert model is net
            a, b = net(x), net(x)
        assert not torch.allclose(a, b) and not torch.allclose(a, mean)
        assert torch.equal(bn.running_mean, before)  # eval-mode BN: sampled weights, BN statistics untouched
        assert [m.sampling for m in layers] == [False] + [None] * (len(layers) - 1)
        assert torch.equal(net(x), mean)

        net.train()
        with bayes.sampling(net, False):  # training mode (batch-statistics BN), mean weights: deterministic
            assert all(m.training and not m.samples_now() for m in layers)
            assert torch.equal(net(x), net(x))
        assert [m.sampling for m in layers] == [False] + [None] * (len(layers) - 1)

        with pytest.raises(RuntimeError, match="inside the block"), bayes.sampling(net, True):
            assert all(m.samples_now() for m in layers)
            raise RuntimeError("inside the block")
        assert [m.sampling for m in layers] == [False] + [None] * (len(layers) - 1)


# ---- 5. make_bayesian ----------------------------------------------------------------------------------

def _count(model, kinds):
    return sum(isinstance(m, kinds) for m in model.modules())


@pytest.mark.parametrize("space,kw", [("nb201", {}), ("darts", {"layers": 3})], ids=["nb201", "darts"])
def test_make_bayesian_supernet_keeps_the_function_in_eval_mode(space, kw):
    net = _supernet(space, **kw)
    theta = _softmax_theta(net)
    x = torch.rand(2, 3, 8, 8)
    _warm_bn(net, x, theta)
    n_point = _count(net, (nn.Conv2d, nn.Linear))
    net.eval()
    with torch.no_grad():
        before = net(x, theta)
    assert bayes.make_bayesian(net, sigma_init=0.1) is net
    assert _count(net, (nn.Conv2d, nn.Linear)) == 0
    assert len(bayes.variational_layers(net)) == n_point and bayes.is_bayesian(net)
    assert all(not m.training for _, m in bayes.variational_layers(net))
    with torch.no_grad():
        fused = net(x, theta)
        net.fused = False
        plain = net(x, theta)
    torch.testing.assert_close(fused, before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain, fused, rtol=1e-5, atol=1e-6)


def test_make_bayesian_final_network_keeps_the_function_in_eval_mode():
    net = _final_network()
    x = torch.rand(2, 3, 8, 8)
    _warm_bn(net, x)
    n_point = _count(net, (nn.Conv2d, nn.Linear))
    point_weights = {n: p.detach().clone() for n, p in net.named_parameters() if p.dim() > 1}
    net.eval()
    with torch.no_grad():
        before = net(x)
    bayes.make_bayesian(net, sigma_init=0.1)
    assert _count(net, (nn.Conv2d, nn.Linear)) == 0 and len(bayes.variational_layers(net)) == n_point
    mus = {n.removesuffix("_mu"): p for n, p in net.named_parameters() if n.endswith("weight_mu")}
    assert set(mus) == set(point_weights)
    assert all(torch.equal(mus[n], w) for n, w in point_weights.items())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    net.train()
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x))


def test_make_bayesian_channels_last_supernet_stays_usable():
    net = _supernet().to(memory_format=CL)
    theta = _softmax_theta(net)
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=CL)
    net.eval()
    with torch.no_grad():
        before = net(x, theta)
    bayes.make_bayesian(net, sigma_init=0.1)
    convs = [m for _, m in bayes.variational_layers(net) if isinstance(m, bayes.MeanFieldConv2d)]
    assert all(m.weight_mu.is_contiguous(memory_format=CL) for m in convs)
    with torch.no_grad():
        torch.testing.assert_close(net(x, theta), before, rtol=1e-6, atol=1e-6)
    net.train()
    net(x, theta).logsumexp(-1).sum().backward()
    for _, m in bayes.variational_layers(net):
        for p in (m.weight_mu, m.weight_rho):
            assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(m.weight_rho.grad.abs().sum() > 0 for m in convs)


def test_make_bayesian_needs_a_conv_or_linear_layer():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        bayes.make_bayesian(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()))
    with pytest.raises(ValueError, match="sigma_init"):
        bayes.make_bayesian(nn.Linear(2, 2), sigma_init=0.0)


# ---- 6. beta_moments -----------------------------------------------------------------------------------

def test_beta_moments_match_monte_carlo():
    beta_o, beta_0 = 6.0, 10.0
    moments = bayes.beta_moments(beta_o, beta_0)
    theta = Beta(torch.tensor(beta_o, dtype=torch.float64), torch.tensor(beta_0 - beta_o, dtype=torch.float64)
                 ).sample((400_000,))
    for key, values in (("log", theta.log()), ("inverse", 1 / theta), ("inverse_square", theta ** -2)):
        se = float(values.std()) / math.sqrt(len(values))
        assert abs(float(moments[key]) - float(values.mean())) < Z * se, (key, float(moments[key]),
                                                                         float(values.mean()), se)


def test_beta_moments_are_infinite_where_the_expectation_diverges():
    m = bayes.beta_moments(torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5]), 10.0)
    assert m["inverse"][:2].isinf().all() and m["inverse"][2:].isfinite().all()
    assert m["inverse_square"][:4].isinf().all() and m["inverse_square"][4:].isfinite().all()
    torch.testing.assert_close(m["inverse"][2:], 9.0 / (torch.tensor([1.5, 2.0, 2.5], dtype=torch.float64) - 1))
    assert m["log"].isfinite().all()


# ---- 7. bad input ------------------------------------------------------------------------------------

def test_bad_priors_are_refused_in_words():
    for sigma in (0, -1, math.inf, True):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            bayes.GaussianPrior(sigma)
    for pi in (0, 1, 1.5):
        with pytest.raises(ValueError, match="pi must lie strictly between 0 and 1"):
            bayes.ScaleMixturePrior(pi, 1.0, 0.1)
    for sigma2 in (0, -0.5):
        with pytest.raises(ValueError, match="sigma2 must be a finite number > 0"):
            bayes.ScaleMixturePrior(0.5, 1.0, sigma2)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        bayes.CoupledPrior(1.0, eps=0)
    with pytest.raises(ValueError, match="Did you mean 'gaussian'.*Valid priors: gaussian, mixture, coupled"):
        bayes.build_prior("gausian", 1.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number > 0"):
        bayes.sigma_for_weight_decay(0, 100)


def test_build_prior_builds_each_named_prior():
    assert isinstance(bayes.build_prior("gaussian", 0.5), bayes.GaussianPrior)
    mix = bayes.build_prior("mixture", 0.5, pi=0.25, sigma2=0.01)
    assert (mix.pi, mix.sigma1, mix.sigma2) == (0.25, 0.5, 0.01)
    coupled = bayes.build_prior("coupled", 0.5, eps=0.1)
    assert isinstance(coupled, bayes.CoupledPrior) and (coupled.sigma, coupled.eps) == (0.5, 0.1)


def test_coupled_prior_needs_a_supernet_and_theta():
    net = bayes.make_bayesian(_final_network())
    theta = {"cell": torch.full((6, 5), 0.2)}
    with pytest.raises(ValueError, match="needs a supernet and a sample θ"):
        bayes.weight_kl(net, bayes.CoupledPrior(1.0), theta=None)
    with pytest.raises(ValueError, match="needs a supernet and a sample θ"):
        bayes.weight_kl(net, bayes.CoupledPrior(1.0), theta=theta)
    with pytest.raises(ValueError, match="needs a supernet and a sample θ"):
        bayes.weight_kl(bayes.make_bayesian(_supernet()), bayes.CoupledPrior(1.0), theta=None)


@pytest.mark.parametrize("num_data", [0, -5])
def test_sigma_for_weight_decay_refuses_a_bad_number_of_data(num_data):
    with pytest.raises(ValueError, match="num_data"):
        bayes.sigma_for_weight_decay(1e-4, num_data)


# ---- 8. the prior that replaces weight decay ------------------------------------------------------------

@pytest.mark.parametrize("kl_weight", [1.0, 0.1])
def test_sigma_for_weight_decay_gives_the_weight_decay_gradient(kl_weight):
    wd, num_data = 5e-4, 50_000
    sigma0 = bayes.sigma_for_weight_decay(wd, num_data, kl_weight=kl_weight)
    mu, sigma = _mu_sigma()
    mu.requires_grad_()
    (g,) = torch.autograd.grad(kl_weight * bayes.GaussianPrior(sigma0).kl(mu, sigma) / num_data, mu)
    torch.testing.assert_close(g, wd * mu.detach(), rtol=1e-10, atol=0)


# ---- 9. first_non_finite_kl ---------------------------------------------------------------------------

def test_first_non_finite_kl_names_the_layer_with_a_nan():
    net = bayes.make_bayesian(_supernet())
    theta = _softmax_theta(net)
    names = [n for n, _ in bayes.variational_layers(net)]
    for prior, th in ((bayes.GaussianPrior(1.0), None), (bayes.CoupledPrior(1.0), theta)):
        assert bayes.first_non_finite_kl(net, prior, th) is None
    target = names[len(names) // 2]
    with torch.no_grad():
        net.get_submodule(target).weight_mu.view(-1)[1] = math.nan
    for prior, th in ((bayes.GaussianPrior(1.0), None), (bayes.CoupledPrior(1.0), theta)):
        assert bayes.first_non_finite_kl(net, prior, th) == target
