# %% [markdown]
# # 05 · Bayesian weights, and a prior that couples them to the structure
#
# Chapter 04 kept the weights as points: $q(w)$ was a point mass, and the L2 term stood in for a prior. This
# chapter gives the weights a posterior too, and then does what the course's founding proposal asks:
# existing NAS methods treat the distributions of structure and weights as independent, which is wrong in
# general, so let the **prior on the weights depend on the structure**. We derive Bayes by backprop from
# chapter 01's bound, check the local reparameterisation trick against sampled weights, derive the coupled
# prior and where its expectation diverges, run the joint search with three kinds of weights on paired seeds,
# and measure what the coupling changes: which operations survive, and the accuracy and calibration of the
# cells that come out, on clean and on shifted test images.

# %%
import copy
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import vnas
from vnas import bayes, config, data, metrics, objectives, ops, plots, results, search, spaces, sweep, train

vnas.setup(seed=0)
MODE = vnas.mode()
cifar = data.load_cifar10()
DEVICE = vnas.device()
print(vnas.banner(cifar.describe()))
CHAPTER_START = time.perf_counter()

# %% [markdown]
# ## 1. Bayes by backprop, from the bound (1.5)
#
# Fix the structure $A$ for now. Chapter 01's bound becomes
# $\log p(\mathcal D) \ge \mathbb E_{q(w)}[\log p(\mathcal D \mid w)] - \mathrm{KL}(q(w)\,\|\,p(w))$, and Bayes by backprop
# (Blundell et al., ICML 2015) maximises it over a **mean-field Gaussian** family,
#
# $$q(w) = \prod_i \mathcal N(w_i;\ \mu_i, \sigma_i^2), \qquad \sigma_i = \mathrm{softplus}(\rho_i), \tag{5.1}$$
#
# with the reparameterisation $w = \mu + \sigma \odot \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$, so that one sample
# gives an unbiased gradient of the expected log-likelihood with respect to $\mu$ and $\rho$. Against a Gaussian
# prior $p(w) = \mathcal N(0, s^2 I)$ the KL is a sum of closed forms,
#
# $$\mathrm{KL}(q(w)\,\|\,p(w)) = \sum_i \Big[\log\frac{s}{\sigma_i} + \frac{\sigma_i^2 + \mu_i^2}{2 s^2} - \frac12\Big].
#   \tag{5.2}$$
#
# `vnas.bayes.gaussian_kl` writes (5.2); below it is checked against `torch.distributions` and against Monte
# Carlo, as chapter 01 checked its own KL.

# %%
gen = torch.Generator().manual_seed(0)
mu_w = 0.1 * torch.randn(2_000, generator=gen, dtype=torch.float64)
sigma_w = 0.01 + 0.05 * torch.rand(2_000, generator=gen, dtype=torch.float64)
s_prior = 0.5
closed = bayes.gaussian_kl(mu_w, sigma_w, s_prior)
reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu_w, sigma_w),
                                              torch.distributions.Normal(0.0, s_prior)).sum()
draws = mu_w + sigma_w * torch.randn(4_000, len(mu_w), generator=gen, dtype=torch.float64)
per_draw = (torch.distributions.Normal(mu_w, sigma_w).log_prob(draws)
            - torch.distributions.Normal(0.0, s_prior).log_prob(draws)).sum(-1)
mc, mc_se = per_draw.mean().item(), per_draw.std().item() / len(per_draw) ** 0.5
print(f"KL of 2,000 weights: closed form (5.2) {closed.item():.3f}, torch.distributions {reference.item():.3f}, "
      f"Monte Carlo {mc:.1f} ± {mc_se:.1f} (1 s.e.): the closed form lies "
      f"{abs(mc - closed.item()) / mc_se:.1f} standard errors from the estimate")

# %% [markdown]
# **Exercise.** A Bayes-by-backprop layer stores $\rho$, not $\sigma$: the optimiser moves $\rho$ freely over the
# real line, and (5.1) maps it to a positive $\sigma$. Write the KL term of one layer from its parameters: given
# $\mu$ and $\rho$ (tensors of any one shape, e.g. a convolution's [out, in, k, k]) and the prior scale $s$ (a
# float), return (5.2) with $\sigma_i = \mathrm{softplus}(\rho_i) = \log(1 + e^{\rho_i})$, as one number that
# gradients reach $\mu$ and $\rho$ through. Mind the weights the posterior has pinned down: at $\rho = -40$,
# $\sigma \approx e^{-40}$ is tiny but not zero.

# %%
def mean_field_kl(mu, rho, s):
    ### BEGIN SOLUTION
    sigma = F.softplus(rho)  # (5.1); log(1 + exp(rho)) would round to 0 for very negative rho
    return (torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5).sum()  # (5.2)
    ### END SOLUTION


# %%
vnas.checks.check_mean_field_kl(mean_field_kl)

# %% [markdown]
# **Weight decay is this prior.** The per-datum objective of a step is $\mathrm{nll} + \kappa\,\mathrm{KL}/N$ (chapter 04,
# Eq. (4.2)), where $\kappa$ is the KL's weight: 1 is the ELBO, anything else a temperature. The gradient of
# $\kappa\,\mu^2/(2 s^2 N)$ is $\kappa\mu/(s^2 N)$, which is what SGD's weight decay $\lambda$ adds, $\lambda\mu$, when
#
# $$s^2 = \frac{\kappa}{\lambda N}. \tag{5.4}$$
#
# So a Gaussian prior **replaces** the weight decay of chapters 02-04 rather than adding to it: the searches
# and trainings here drop the L2 term of every Bayesian weight, and with `weight_prior_sigma = "weight_decay"`
# (the default) they take the prior scale of (5.4), so that the means feel exactly the L2 the point weights
# felt. What is new is the rest of (5.2): the $\sigma$ terms.

# %%
N_TRAIN, WD = 500, 3e-4
s0 = bayes.sigma_for_weight_decay(WD, N_TRAIN)
mu_req = mu_w.clone().requires_grad_(True)
(grad,) = torch.autograd.grad(bayes.GaussianPrior(s0).kl(mu_req, sigma_w) / N_TRAIN, mu_req)
print(f"N = {N_TRAIN}, weight decay {WD}: prior scale s = {s0:.3f}; |∂(KL/N)/∂μ − λμ| ≤ "
      f"{(grad - WD * mu_w).abs().max().item():.1e}")

# %% [markdown]
# ## 2. The local reparameterisation trick
#
# Sampling one weight tensor per mini-batch makes every example of the batch see the same $w$, so the
# gradient's noise does not shrink with the batch. Kingma, Salimans & Welling (NeurIPS 2015) sample the
# *outputs* instead: a unit $b = \sum_j x_j w_j$ of a linear map (a convolution is one) is Gaussian under $q(w)$,
#
# $$b \sim \mathcal N\big(x \star \mu,\; x^2 \star \sigma^2\big), \qquad
#   b = x \star \mu + \sqrt{x^2 \star \sigma^2}\odot\varepsilon, \tag{5.3}$$
#
# one independent $\varepsilon$ per example and unit, at the cost of a second convolution. `vnas.bayes.MeanFieldConv2d`
# and `MeanFieldLinear` do exactly this (and direct sampling with `local_reparameterisation = False`); a
# depthwise convolution keeps the supernet's fast CPU path for both of its convolutions. First, (5.3) against
# explicitly sampled weights, on a DARTS `dil_conv` layer: the per-unit variance of the outputs.

# %%
torch.manual_seed(0)
layer = bayes.MeanFieldConv2d.from_conv(ops.DepthwiseConv2d(4, 3, 1, 2, 2), sigma_init=0.2)
x_in = torch.rand(1, 4, 6, 6)
reps = 400 if MODE == "smoke" else 4_000
with torch.no_grad(), bayes.sampling(layer, True):
    local = torch.stack([layer(x_in) for _ in range(reps)])
    layer.local_reparameterisation = False
    direct = torch.stack([layer(x_in) for _ in range(reps)])
    layer.local_reparameterisation = True
analytic = F.conv2d(x_in * x_in, layer.weight_sigma.detach() ** 2, None, 1, 2, 2, 4)  # x² ⋆ σ², the dil_conv's own geometry
fig, ax = plt.subplots(figsize=(5, 4))
ax.scatter(analytic.flatten(), local.var(0).flatten(), s=8, label="local reparameterisation (5.3)")
ax.scatter(analytic.flatten(), direct.var(0).flatten(), s=8, marker="x", label="sampled weights")
ax.plot([0, analytic.max()], [0, analytic.max()], "k--", lw=0.8)
ax.set_xlabel("x² ⋆ σ² (analytic)")
ax.set_ylabel(f"variance over {reps} draws")
ax.legend()
plt.show()
rel = lambda a: ((a.var(0) - analytic).abs().mean() / analytic.mean()).item()  # noqa: E731
print(f"mean relative error of the variance: local {rel(local):.3f}, sampled weights {rel(direct):.3f} "
      f"(sampling error alone is about √(2/{reps}) = {(2 / reps) ** 0.5:.3f})")

# %% [markdown]
# Why bother: the gradient. Over a batch of $B$ examples, sampling one $w$ gives every example the same
# noise, so the variance of the gradient estimate of $\mu$ does not fall as $1/B$. Below, the variance of
# $\partial\mathcal L/\partial\mu$ over repeated draws, for the same batch, both ways.

# %%
def gradient_variance(local_on: bool, batch: int = 64, draws: int = 100) -> float:
    torch.manual_seed(1)
    lin = bayes.MeanFieldLinear(20, 5, sigma_init=0.3)
    lin.local_reparameterisation = local_on
    x, y = torch.randn(batch, 20), torch.randint(0, 5, (batch,))
    grads = []
    for _ in range(draws):
        lin.zero_grad()
        F.cross_entropy(lin(x), y).backward()
        grads.append(lin.weight_mu.grad.flatten().clone())
    return torch.stack(grads).var(0).mean().item()


g_local, g_direct = gradient_variance(True), gradient_variance(False)
print(f"variance of ∂L/∂μ over draws, batch 64: local reparameterisation {g_local:.2e}, one weight sample per "
      f"batch {g_direct:.2e}: {g_direct / g_local:.1f}x lower with (5.3)")

# %% [markdown]
# **Exercise.** Write (5.3) for a linear layer $b = x w^\top$: given $x$ [n, in], $\mu$ and $\sigma$ [out, in],
# return the mean and the variance [n, out] of every output unit.

# %%
def local_reparameterisation(x, mu, sigma):
    ### BEGIN SOLUTION
    return x @ mu.T, (x * x) @ (sigma * sigma).T
    ### END SOLUTION


# %%
vnas.checks.check_local_reparameterisation(local_reparameterisation)

# %% [markdown]
# ## 3. The joint posterior, and a prior that couples weights to the structure
#
# With both a structure posterior (chapter 04) and a weight posterior, the bound (1.5) reads
#
# $$\log p(\mathcal D) \ge \mathbb E_{q(\theta)q(w)}\big[\log p(\mathcal D\mid w,\theta)\big]
#   - \mathbb E_{q(\theta)}\big[\mathrm{KL}(q(w)\,\|\,p(w\mid\theta))\big] - \mathrm{KL}(q(\theta)\,\|\,p(\theta)).$$
#
# **The variational family stays a product, $q(\theta)q(w)$.** Nothing here lets the posterior of the weights
# depend on the sampled structure. What couples the two is the **prior** $p(w\mid\theta)$: with $p(w \mid \theta) = p(w)$
# the middle term is $\mathrm{KL}(q(w)\,\|\,p(w))$ and the bound separates into a weight part and a structure part
# that meet only in the likelihood. That is the independence the proposal objects to. The course's coupled
# prior gives each op's weights a scale that grows with that op's mixing weight on its edge, ARD-like
# (MacKay; Neal; BayesNAS puts hierarchical ARD priors on op switches):
#
# $$p(w_{e,o}\mid\theta_e) = \mathcal N\big(0,\ s(\theta_{e,o})^2 I\big), \qquad
#   s(\theta) = \sigma_0\,\frac{\theta + \varepsilon}{1 + \varepsilon}. \tag{5.5}$$
#
# An op the structure switches off ($\theta \to 0$) has its weights pulled towards 0; a fully selected op
# ($\theta = 1$) has the plain prior $\mathcal N(0, \sigma_0^2)$; weights outside the edges (stem, preprocessing,
# classifier) keep $\mathcal N(0, \sigma_0^2)$.
#
# **What the expectation over $q(\theta)$ becomes, and where it diverges.** Put (5.5) into (5.2), per weight,
# and take the expectation over the Dirichlet posterior, whose marginal is $\theta_o \sim \mathrm{Beta}(\beta_o, \beta_0 - \beta_o)$:
#
# $$\mathbb E_{q(\theta)}\big[\mathrm{KL}_i\big] = \log\frac{\sigma_0}{(1+\varepsilon)\,\sigma_i} + \mathbb E[\log(\theta_o + \varepsilon)]
#   + \frac{(1+\varepsilon)^2(\sigma_i^2 + \mu_i^2)}{2\sigma_0^2}\,\mathbb E\big[(\theta_o + \varepsilon)^{-2}\big] - \frac12. \tag{5.6}$$
#
# Without the floor ($\varepsilon = 0$) the two expectations are $\mathbb E[\log\theta_o] = \psi(\beta_o) - \psi(\beta_0)$, always finite,
# and $\mathbb E[\theta_o^{-2}] = \frac{(\beta_0 - 1)(\beta_0 - 2)}{(\beta_o - 1)(\beta_o - 2)}$, **finite only for $\beta_o > 2$**. A prior
# *variance* proportional to $\theta$ instead needs $\mathbb E[\theta_o^{-1}] = \frac{\beta_0 - 1}{\beta_o - 1}$, finite only for $\beta_o > 1$;
# and a search starts at $\beta = \mathrm{elu}(0) + 1 = 1$. Either way the objective would be infinite at the start.
# The floor $\varepsilon$ (here 0.05) makes every term finite; there is no closed form for $\mathbb E[(\theta + \varepsilon)^{-2}]$,
# so the search estimates the whole of (5.6) by Monte Carlo, with the reparameterised $\theta \sim q$ the step
# already draws: an unbiased estimate whose gradient reaches $q(\theta)$.

# %%
K = len(spaces.nb201.PRIMITIVES)
for beta_o in (1.0, 2.0, 3.0):
    m = bayes.beta_moments(beta_o, beta_o * K)
    print(f"β_o = {beta_o:.0f}, β_0 = {beta_o * K:.0f} (a uniform mean over {K} ops): E[log θ] = {m['log'].item():.3f}, "
          f"E[1/θ] = {m['inverse'].item():.3g}, E[θ^-2] = {m['inverse_square'].item():.3g}")
marginal = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(K - 1.0))
theta_draws = marginal.sample((400_000 if MODE != "smoke" else 40_000,))
grid = torch.linspace(1e-7, 1 - 1e-7, 2_000_001, dtype=torch.float64)
density = marginal.log_prob(grid.float()).double().exp()
print("\nat the start (β_o = 1), with the floor ε:")
for eps in (0.1, 0.05, 0.01):
    draws_eps = (theta_draws + eps) ** -2
    quadrature = torch.trapezoid(density * (grid + eps) ** -2, grid).item()
    print(f"  ε = {eps:<5}: E[(θ + ε)^-2] = {draws_eps.mean().item():8.2f} ± {draws_eps.std().item() / len(draws_eps) ** 0.5:.2f} "
          f"(Monte Carlo), {quadrature:8.2f} (quadrature); ε · E = {eps * quadrature:.2f}: it grows like 1/ε")

# %% [markdown]
# **What the coupling asks of $\theta$.** For one op with $n$ weights of root-mean-square magnitude
# $m = \sqrt{\overline{\sigma^2 + \mu^2}}$, the KL as a function of $\theta$ is $n\,[\log s(\theta) + m^2/(2 s(\theta)^2)] + $const,
# minimal where $s(\theta) = m$: the prior wants each op's scale to match its weights (ARD). Two consequences
# that the experiments below show. The charge is per weight, so an op with many weights pays $n$ times the
# log-normaliser: the coupling favours cheap ops. And in a search supernet every convolution is followed by
# a BatchNorm without affine parameters, whose output does not change when the weights before it are scaled:
# the likelihood does not resist when the prior shrinks those weights and then $\theta$ with them.

# %%
theta_axis = torch.linspace(0.0, 1.0, 201)
prior_c = bayes.CoupledPrior(sigma=1.0, eps=0.05)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for m in (0.02, 0.1, 0.3, 1.0):
    per_weight = [bayes.gaussian_kl(torch.zeros(1), torch.tensor([m]), prior_c.sigma * prior_c.scale(t)).item()
                  for t in theta_axis]
    axes[0].plot(theta_axis, per_weight, label=f"RMS weight m = {m}")
axes[0].set_xlabel("θ (the op's mixing weight)")
axes[0].set_ylabel("KL per weight (nats)")
axes[0].set_title("coupled prior (5.5), σ0 = 1, ε = 0.05: the KL is least where s(θ) = m")
axes[0].legend(fontsize=8)
conv, bn = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, affine=False)
x_bn = torch.randn(8, 4, 6, 6)
scales = [1.0, 0.3, 0.1, 0.03]
changes = []
for c in scales:
    with torch.no_grad():
        changes.append((bn(F.conv2d(x_bn, conv.weight * c, padding=1)) - bn(conv(x_bn))).abs().max().item())
axes[1].semilogy(scales, np.maximum(changes, 1e-12), "o-")
axes[1].set_xlabel("factor on the conv weights")
axes[1].set_ylabel("max |change| of BN(conv(x))")
axes[1].set_title("conv → BN(affine=False): scaling the weights changes nothing")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Exercise.** Write the coupled prior's KL for the weights of one op: given $\mu$ and $\sigma$ of its weights,
# its mixing weight $\theta$ (a 0-d tensor: keep the gradient), $\sigma_0$ and $\varepsilon$, return
# $\sum_i \mathrm{KL}(\mathcal N(\mu_i, \sigma_i^2)\,\|\,\mathcal N(0, s(\theta)^2))$ with $s$ from (5.5).

# %%
def coupled_kl(mu, sigma, theta, sigma0, eps):
    ### BEGIN SOLUTION
    s = sigma0 * (theta + eps) / (1 + eps)
    return (torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5).sum()
    ### END SOLUTION


# %%
vnas.checks.check_coupled_kl(coupled_kl)

# %% [markdown]
# ## 4. The joint search: two steps, every term named
#
# The search alternates, as in chapter 04. Both steps minimise the negative per-datum bound of their own half
# of the data, each with respect to its own variables, at one sample $\theta \sim q$:
#
# $$\begin{aligned}
# \text{weights }(\mu, \rho):&\quad \mathbb E_{q(w)}\big[\mathrm{CE}_{train}(w, \theta)\big] + \kappa_w\,\frac{\mathrm{KL}(q(w)\,\|\,p(w\mid\theta))}{N_{train}},\\
# \text{structure }(\alpha):&\quad \mathbb E_{q(w)}\big[\mathrm{CE}_{val}(w, \theta)\big]
#   + \frac{\mathrm{KL}(q(\theta)\,\|\,p(\theta)) + \kappa_w\,\mathrm{KL}(q(w)\,\|\,p(w\mid\theta))}{N_{val}}.
# \end{aligned} \tag{5.7}$$
#
# The structure step carries the weight KL only under the coupled prior (otherwise it does not depend on
# $\alpha$). $\kappa_w$ (`weight_kl_weight`) is the weight KL's temperature: 1 is the ELBO. The history records the
# weight KL (`weights.weight_kl`, and `architecture.weight_kl` under coupling) apart from the structure KL.
#
# **The scale problem.** A supernet has far more weights than the search has images. Below, the weight KL of
# this chapter's NB201 supernet at initialisation, over $N$, beside a cross-entropy of $\log 10 \approx 2.3$.

# %%
SWEEPS = config.CONFIG_DIR / "sweeps"
BAYES = sweep.load_sweep_config(SWEEPS / "bayes_nb201.toml")
protocol = copy.deepcopy(BAYES)
if MODE == "smoke":  # CI: the smoke sizes of configs/search_nb201.toml, with the protocol's own settings
    protocol["base"] = {k: v for k, v in protocol["base"].items() if k in ("image_size", "arch_lr", "weight_sigma_init")}
    protocol["retrain"] = {"shifts": ["noise", "jpeg"], "severities": [1, 5]}
protocol["mode"] = MODE
ARMS = {"point": 0, "gaussian": 1, "coupled": 2, "coupled κ=0.01": 3}
probe = search.Search(sweep.search_config(protocol, protocol["points"][1], "variational", seed=0), dataset=cifar,
                      device=DEVICE, progress=False)
n_weights = sum(m.weight_mu.numel() for _, m in bayes.variational_layers(probe.supernet))
kl0 = objectives.weight_kl(probe.supernet, probe.weight_prior).item()
print(f"{n_weights:,} Bayesian weights, N = {len(probe.train_idx)} search-train images, prior {probe.weight_prior}, "
      f"q(w) starting at σ = {probe.cfg.weight_sigma_init}: KL / N = {kl0 / len(probe.train_idx):.0f} nats per image")
del probe

# %% [markdown]
# At $\kappa_w = 1$ the KL term is hundreds of nats per image: in the *value* of the objective it swamps the
# likelihood. What matters for the search is its *gradient*, and the protocol sweep below measures what it
# does, with two knobs, each named as what it is: the **temperature** $\kappa_w$ (a cold posterior, not the ELBO)
# and $q(w)$'s **initial scale**. `configs/sweeps/bayes_protocol.toml` ran one seed of each on the quick
# protocol (chapter 04's, `configs/sweeps/nb201_comparison.toml`); it is loaded, not run here.

# %%
def arm_name(point: dict) -> str:
    if point.get("weights", "point") == "point":
        return "point"
    name = point.get("weight_prior", "gaussian")
    if point.get("weight_kl_weight", 1.0) != 1.0:
        name += f" κ={point['weight_kl_weight']:g}"
    if "weight_sigma_init" in point:
        name += f" σ₀(q)={point['weight_sigma_init']:g}"
    return name


def last_row(record):
    return record["history"][-1]


proto = results.load_sweep("bayes_protocol")
if proto is None:
    print(results.missing("bayes_protocol"))
else:
    print(proto.describe())
    print(f"\n{'arm':34s} {'σ start→end':>16s} {'SNR end':>8s} {'KL/N end':>9s} {'|μ| end':>8s} "
          f"{'param-free':>10s} {'NB201 C10':>9s}")
    proto_rows = {}
    for r in proto.results["runs"]:
        point, h0, h1 = proto.results["points"][r["point"]], r["history"][0], last_row(r)
        name = arm_name(point)
        post0, post1 = h0.get("weight_posterior", {}), h1.get("weight_posterior", {})
        kl_n = h1["weights"].get("weight_kl", 0.0) / (r["config"]["images_per_class"] * 5)
        proto_rows[name] = dict(point=point, sigma0=post0.get("sigma_mean", np.nan), sigma1=post1.get("sigma_mean", np.nan),
                                snr=post1.get("snr_mean", np.nan), mu0=post0.get("mu_abs_mean", np.nan),
                                mu1=post1.get("mu_abs_mean", np.nan), kl_n=kl_n,
                                free=h1["parameter_free_share"]["cell"], score=r["score"]["cifar10"],
                                mean=np.asarray(h1["edges"]["cell"]["mean"]))
        p = proto_rows[name]
        print(f"{name:34s} {p['sigma0']:7.4f}→{p['sigma1']:7.4f} {p['snr']:8.2f} {p['kl_n']:9.1f} {p['mu1']:8.4f} "
              f"{p['free']:10.2f} {p['score']:9.2f}")

# %%
if proto is not None:
    small = next(p for n, p in proto_rows.items() if n.startswith("gaussian") and p["point"]["weight_sigma_init"] < 0.01)
    coupled_cold = [p for n, p in proto_rows.items() if n.startswith("coupled") and
                    p["point"].get("weight_kl_weight", 1.0) == 1.0]
    coupled_warm = [p for n, p in proto_rows.items() if n.startswith("coupled κ")]
    ops_ = spaces.nb201.PRIMITIVES
    conv_ops = [ops_.index(o) for o in ("nor_conv_1x1", "nor_conv_3x3")]
    lines = [f"Reading (loaded, one seed per arm; {proto.manifest['mode']} mode):",
             f"- q(w) started at σ = {small['sigma0']:.4f} moves to {small['sigma1']:.4f} in "
             f"{len(proto.results['runs'][0]['history'])} epochs"
             + (f": the KL's pull on ρ is about 1/N per weight and step, tiny at SGD's learning rate, so from a small "
                f"start q(w) stays a near-point (signal-to-noise |μ|/σ = {small['snr']:.0f}). That is why the "
                f"comparison starts q(w) at σ = {BAYES['base']['weight_sigma_init']}."
                if small["sigma1"] < 1.5 * small["sigma0"] else "."),
             "- the coupled prior at κ = 1: " + "; ".join(
                 f"σ_init {p['point']['weight_sigma_init']}: parameter-free share {p['free']:.2f}, mean weight of "
                 f"the conv ops {p['mean'][:, conv_ops].sum(-1).mean():.3f}, |μ| {p['mu0']:.4f} → {p['mu1']:.4f}, "
                 f"NB201 {p['score']:.2f}" for p in coupled_cold) + ".",
             "- tempered to κ = 0.01: " + "; ".join(
                 f"parameter-free share {p['free']:.2f}, the op with the largest mean weight on most edges: "
                 f"{ops_[np.bincount(p['mean'].argmax(-1), minlength=len(ops_)).argmax()]}, NB201 {p['score']:.2f}"
                 for p in coupled_warm) + "."]
    print("\n".join(lines))

# %% [markdown]
# ## 5. Three kinds of weights on paired seeds
#
# The comparison (`configs/sweeps/bayes_nb201.toml`): the variational structure posterior of chapter 04 with
# point weights; with Gaussian weights under the independent prior; and with Gaussian weights under the
# coupled prior, at $\kappa_w = 1$ and tempered to $\kappa_w = 0.01$. Same seeds, same split, same
# initialisation for every arm. Each derived cell is then **retrained with point weights under one budget**
# and evaluated on the test images, clean and under four shifts (Gaussian noise, blur, contrast, JPEG below
# the quality 75 of this CIFAR-10 copy; `vnas.data.shift`), so that the arms are compared by the cells they
# find. Live here: a slice (fewer seeds); loaded: the whole sweep.

# %%
live = dict(protocol, seeds=1 if MODE == "smoke" else 2)
if MODE == "smoke":
    live["points"] = live["points"][:3]
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    live_found = sweep.run_sweep(live, Path(tmp), jobs=1 if MODE == "smoke" else 2, log=None)
print(f"{len(live_found['runs'])} searches and retrainings in {(time.perf_counter() - start) / 60:.1f} min "
      f"({MODE} mode, {vnas.config.hardware()})")
print(sweep.format_summary(live_found))

loaded = results.load_sweep("bayes_nb201")
sources = {f"live, {live['seeds']} seed(s)": live_found}
if loaded is not None:
    print(loaded.describe())
    sources[f"data/results, {BAYES['seeds']} seeds"] = loaded.results
else:
    print(results.missing("bayes_nb201"))


def by_arm(found):
    """{arm name: [records sorted by seed]}."""
    arms = {}
    for r in found["runs"]:
        arms.setdefault(arm_name(found["points"][r["point"]]), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in arms.items()}


# %% [markdown]
# **What each arm finds.** The NB201 CIFAR-10 accuracy of the derived cell (the table's 200-epoch training),
# the share of parameter-free ops in it, and the posterior mean weight of each op, averaged over edges and
# seeds: how coupling changes which ops survive.

# %%
for name, found in sources.items():
    arms = by_arm(found)
    print(f"\n{name}:")
    print(f"  {'arm':22s} {'NB201 C10 (mean ± 95% CI)':>26s} {'param-free':>10s}   "
          + " ".join(f"{o[:12]:>12s}" for o in spaces.nb201.PRIMITIVES))
    for arm, recs in arms.items():
        mean, half = sweep.mean_interval([r["score"]["cifar10"] for r in recs])
        free = np.mean([last_row(r)["parameter_free_share"]["cell"] for r in recs])
        op_mean = np.mean([np.asarray(last_row(r)["edges"]["cell"]["mean"]).mean(0) for r in recs], axis=0)
        print(f"  {arm:22s} {mean:14.2f} ± {half:5.2f}    {free:10.2f}   " + " ".join(f"{v:12.3f}" for v in op_mean))
    for arm, recs in arms.items():
        print(f"  {arm:22s} seed 0: {recs[0]['genotype']}")
arms = by_arm(list(sources.values())[-1])
fig, ax = plt.subplots(figsize=(10, 3.4))
width = 0.8 / len(arms)
for i, (arm, recs) in enumerate(arms.items()):
    per_seed = np.array([np.asarray(last_row(r)["edges"]["cell"]["mean"]).mean(0) for r in recs])
    ax.bar(np.arange(len(spaces.nb201.PRIMITIVES)) + i * width, per_seed.mean(0), width, label=arm,
           yerr=per_seed.std(0) if len(recs) > 1 else None, capsize=2)
ax.set_xticks(np.arange(len(spaces.nb201.PRIMITIVES)) + 0.4 - width / 2, spaces.nb201.PRIMITIVES)
ax.axhline(1 / len(spaces.nb201.PRIMITIVES), color="0.5", ls=":", lw=0.8, label="uniform start")
ax.set_ylabel("posterior mean weight\n(mean over edges; bars: seeds' spread)")
ax.set_title(f"which ops survive ({list(sources)[-1]})")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **The supernet during search.** Per arm (the largest source): its validation accuracy at the posterior
# mean, the weight KL per image, and q(w)'s mean scale σ.

# %%
found = list(sources.values())[-1]
arms = by_arm(found)
fig, axes = plt.subplots(1, 3, figsize=(16, 3.4))
for arm, recs in arms.items():
    epochs = [h["epoch"] for h in recs[0]["history"]]
    n_train = recs[0]["config"]["images_per_class"] * 5
    val = np.mean([[h["val_acc"] for h in r["history"]] for r in recs], axis=0)
    kl = np.mean([[h["weights"].get("weight_kl", 0.0) / n_train for h in r["history"]] for r in recs], axis=0)
    axes[0].plot(epochs, val, "o-", ms=3, label=arm)
    axes[1].plot(epochs, kl, "o-", ms=3, label=arm)
    if "weight_posterior" in recs[0]["history"][0]:
        sig = np.mean([[h["weight_posterior"]["sigma_mean"] for h in r["history"]] for r in recs], axis=0)
        axes[2].plot(epochs, sig, "o-", ms=3, label=arm)
axes[0].set_ylabel("supernet validation accuracy")
axes[1].set_ylabel("weight KL / N (nats per image)")
axes[1].set_yscale("symlog")
axes[2].set_ylabel("mean σ of q(w)")
for ax in axes:
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **The retrained cells, clean and shifted.** Accuracy, NLL and expected calibration error (15 equal-width
# bins, `vnas.metrics.expected_calibration_error`) of each arm's cell retrained with point weights, and how
# the NLL and ECE grow with the severity of each shift.

# %%
METRICS = ("acc", "nll", "ece")
for name, found in sources.items():
    print(f"\n{name}: retrained cells on the clean test images (mean ± 95% CI over seeds)")
    for arm, recs in by_arm(found).items():
        cells = [f"{m} {sweep.mean_interval([r['retrained']['clean'][m] for r in recs])[0]:.3f} ± "
                 f"{sweep.mean_interval([r['retrained']['clean'][m] for r in recs])[1]:.3f}" for m in METRICS]
        print(f"  {arm:22s} " + ", ".join(cells))
found = list(sources.values())[-1]
arms = by_arm(found)
kinds = list(next(iter(arms.values()))[0]["retrained"]["shifted"])
severities = next(iter(arms.values()))[0]["retrained"]["severities"]
fig, axes = plt.subplots(2, len(kinds), figsize=(4 * len(kinds), 6.4), squeeze=False)
for j, kind in enumerate(kinds):
    for i, m in enumerate(("nll", "ece")):
        curves = {arm: {kind: [float(np.mean([r["retrained"]["clean"][m] for r in recs]))] +
                        [float(np.mean([r["retrained"]["shifted"][kind][k][m] for r in recs]))
                         for k in range(len(severities))]} for arm, recs in arms.items()}
        plots.plot_shift(curves, ax=axes[i, j], ylabel=m)
        axes[i, j].set_xticks(range(1, len(severities) + 2), ["clean", *map(str, severities)])
        axes[i, j].set_title(f"{kind}: {m}")
        axes[i, j].set_xlabel("severity")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Paired differences against point weights**, per seed, with 95% intervals: an interval that contains 0 is
# no evidence of a difference.

# %%
verdicts = {}
for name, found in sources.items():
    arms = by_arm(found)
    base = arms["point"]
    print(f"\n{name}: arm − point, per seed")
    for arm, recs in arms.items():
        if arm == "point":
            continue
        seeds = [r["seed"] for r in recs]
        pair = {r["seed"]: r for r in base if r["seed"] in seeds}
        parts = []
        for label, get in (("NB201", lambda r: r["score"]["cifar10"]),
                           ("retrained acc", lambda r: 100 * r["retrained"]["clean"]["acc"]),
                           ("NLL", lambda r: r["retrained"]["clean"]["nll"]),
                           ("ECE", lambda r: r["retrained"]["clean"]["ece"])):
            mean, half = sweep.mean_interval([get(r) - get(pair[r["seed"]]) for r in recs])
            verdict = ("n/a (one seed)" if not np.isfinite(half) else "higher" if mean - half > 0
                       else "lower" if mean + half < 0 else "not distinguishable")
            verdicts[(name, arm, label)] = (mean, half, verdict)
            parts.append(f"{label} {mean:+.3f} ± {half:.3f} ({verdict})")
        print(f"  {arm:22s} " + "; ".join(parts))

# %% [markdown]
# ## 6. A Bayesian final network: does a posterior over the weights calibrate?
#
# The comparison above retrains every cell with point weights. Here one cell (the one the point arm found
# first) is trained twice under the same budget, once with point weights and once with Gaussian weights
# (`python -m vnas train --weights gaussian`), and both are evaluated with `vnas.metrics.evaluate`: the point
# network once, the Bayesian network with its mean weights ($S = 1$) and as a Monte Carlo posterior
# predictive over $S$ weight samples, $p(y\mid x) \approx \frac1S\sum_s p(y\mid x, w_s)$, whose NLL is
# $-\log\frac1S\sum_s p(y\mid x, w_s)$ (a logsumexp minus $\log S$). The samples are drawn with eval-mode
# BatchNorm through the layers' own sampling flag.

# %%
cell = by_arm(live_found)["point"][0]["genotype"]
# a smaller budget than the comparison's retraining (the chapter's time), the same for both networks; q(w) starts
# at the comparison's σ, since from train's default 1e-3 it stays a near-point (section 4)
budget = {} if MODE == "smoke" else {"images_per_class": 300, "epochs": 10}
S = 2 if MODE == "smoke" else 8  # also the per-epoch test evaluation of the Bayesian network
trained = {}
for weights in ("point", "gaussian"):
    tcfg = train.load_train_config(cell, run_mode=MODE, weights=weights, eval_samples=S,
                                   weight_sigma_init=BAYES["base"]["weight_sigma_init"], **budget)
    trainer = train.Trainer(tcfg, dataset=cifar, device=DEVICE, progress=False)
    trainer.fit(log=None)
    trained[weights] = trainer
print(f"cell {cell}; {trained['point'].cfg.epochs} epochs on {len(trained['point'].train_batches.y)} images; "
      f"prior of the Bayesian one: {trained['gaussian'].weight_prior}")
evaluations = {"point": metrics.evaluate(trained["point"].model, trained["point"].test_batches),
               "gaussian, mean weights": metrics.evaluate(trained["gaussian"].model, trained["gaussian"].test_batches),
               f"gaussian, S = {S} samples": metrics.evaluate(trained["gaussian"].model,
                                                              trained["gaussian"].test_batches, samples=S)}
shift_kind, shift_level = "noise", 5
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, ev in evaluations.items():
    print(f"{name:28s} clean: acc {ev['acc']:.3f}, NLL {ev['nll']:.3f}, ECE {ev['ece']:.3f}, Brier {ev['brier']:.3f}, "
          f"mean entropy {ev['entropy']:.3f}")
    plots.plot_reliability(ev["probs"], ev["labels"], ax=axes[0], label=name)
shifted = {"point": trained["point"].evaluate(shift=(shift_kind, shift_level)),
           f"gaussian, S = {S} samples": trained["gaussian"].evaluate(shift=(shift_kind, shift_level))}
for name, ev in shifted.items():
    print(f"{name:28s} {shift_kind} severity {shift_level}: acc {ev['acc']:.3f}, NLL {ev['nll']:.3f}, "
          f"ECE {ev['ece']:.3f}")
    plots.plot_reliability(ev["probs"], ev["labels"], ax=axes[1], label=name)
axes[0].set_title("clean test images")
axes[1].set_title(f"{shift_kind}, severity {shift_level}")
plt.tight_layout()
plt.show()
gain = evaluations["gaussian, mean weights"]["nll"] - evaluations[f"gaussian, S = {S} samples"]["nll"]
print(f"Averaging {S} weight samples changes the Bayesian network's NLL by {-gain:+.3f} against its mean weights "
      f"and its ECE by {evaluations[f'gaussian, S = {S} samples']['ece'] - evaluations['gaussian, mean weights']['ece']:+.3f}; "
      f"against the point network, NLL {evaluations[f'gaussian, S = {S} samples']['nll'] - evaluations['point']['nll']:+.3f}"
      f" and ECE {evaluations[f'gaussian, S = {S} samples']['ece'] - evaluations['point']['ece']:+.3f} (one seed, "
      f"{MODE} mode: a measurement of this run, not an interval).")

# %% [markdown]
# ## 7. The DARTS space
#
# The same arms in the DARTS space run longer than this chapter can afford; `configs/sweeps/bayes_darts.toml`
# ran them (one seed, 10 epochs of the quick DARTS protocol at 16 × 16) and the results are loaded. There is
# no table to look the cells up in, so the question is the one this chapter can answer: which ops survive.

# %%
darts_found = results.load_sweep("bayes_darts")
if darts_found is None:
    print(results.missing("bayes_darts"))
else:
    print(darts_found.describe())
    d_ops = spaces.darts.PRIMITIVES
    print(f"\n{'arm':22s} {'param-free normal':>17s} {'reduce':>7s} {'val acc':>8s}   mean weight per op (normal cell)")
    print(f"{'':22s} {'':>17s} {'':>7s} {'':>8s}   " + " ".join(f"{o[:11]:>11s}" for o in d_ops))
    for arm, recs in by_arm(darts_found.results).items():
        free = {c: np.mean([last_row(r)["parameter_free_share"][c] for r in recs]) for c in ("normal", "reduce")}
        op_mean = np.mean([np.asarray(last_row(r)["edges"]["normal"]["mean"]).mean(0) for r in recs], axis=0)
        val = np.mean([last_row(r)["val_acc"] for r in recs])
        print(f"{arm:22s} {free['normal']:17.2f} {free['reduce']:7.2f} {val:8.3f}   "
              + " ".join(f"{v:11.3f}" for v in op_mean))
    for arm, recs in by_arm(darts_found.results).items():
        print(f"{arm}: {recs[0]['genotype']}")

# %% [markdown]
# ## 8. What this chapter shows, and what it cannot
#
# Computed from the numbers above (the largest source of each).

# %%
found = list(sources.values())[-1]
arms = by_arm(found)
src = list(sources)[-1]
free = {arm: np.mean([last_row(r)["parameter_free_share"]["cell"] for r in recs]) for arm, recs in arms.items()}
score = {arm: sweep.mean_interval([r["score"]["cifar10"] for r in recs]) for arm, recs in arms.items()}
summary = [f"From {src} ({MODE} mode for the live part):"]
for arm in arms:
    summary.append(f"- {arm}: NB201 {score[arm][0]:.2f} ± {score[arm][1]:.2f}, parameter-free share {free[arm]:.2f}")
coupled_arms = [a for a in arms if a.startswith("coupled")]
for arm in coupled_arms:
    seeds = {r["seed"]: last_row(r)["parameter_free_share"]["cell"] for r in arms["point"]}
    diffs = [last_row(r)["parameter_free_share"]["cell"] - seeds[r["seed"]] for r in arms[arm] if r["seed"] in seeds]
    mean, half = sweep.mean_interval(diffs)
    if np.isfinite(half) and mean - half > 0:
        summary.append(f"- Coupling changes which ops survive: under '{arm}' the parameter-free share of the derived "
                       f"cells is {free[arm]:.2f} against {free['point']:.2f} with point weights (paired difference "
                       f"{mean:+.2f} ± {half:.2f}). The prior charges every weight a log-normaliser, the weights before "
                       f"a BatchNorm can shrink at no cost to the likelihood, and θ follows them down: on these "
                       f"supernets the ARD-like prior prunes by parameter count rather than by usefulness.")
    elif np.isfinite(half) and mean + half < 0:
        op_mean = np.mean([np.asarray(last_row(r)["edges"]["cell"]["mean"]).mean(0) for r in arms[arm]], axis=0)
        top = spaces.nb201.PRIMITIVES[int(op_mean.argmax())]
        sizes = {o: sum(p.numel() for p in ops.make_op(o, 8).parameters()) for o in spaces.nb201.PRIMITIVES}
        parametric = {o: n for o, n in sizes.items() if n > 0}
        cheapest = min(parametric, key=parametric.get)
        summary.append(f"- Under '{arm}' the parameter-free share falls to {free[arm]:.2f} (paired difference "
                       f"{mean:+.2f} ± {half:.2f}), and the op with the largest posterior mean weight is {top} "
                       f"({op_mean.max():.2f})" + (f", the parametric op with the fewest weights ({parametric[top]} "
                       f"against {max(parametric.values())} at 8 channels): the same per-weight charge, tempered, "
                       f"keeps the ops the likelihood needs and picks the cheapest." if top == cheapest else "."))
    else:
        summary.append(f"- Under '{arm}' the parameter-free share is {free[arm]:.2f} against {free['point']:.2f} with "
                       f"point weights (paired difference {mean:+.2f} ± {half:.2f}): "
                       + ("one seed, no interval: no finding." if not np.isfinite(half) else
                          "no clear change in which ops survive at this budget."))
for arm in arms:
    if arm == "point":
        continue
    parts = [f"{label} {m:+.3f} ± {h:.3f} ({v})" for (s_, a, label), (m, h, v) in verdicts.items()
             if s_ == src and a == arm and label != "NB201"]
    summary.append(f"- '{arm}' minus point, the retrained cells: " + "; ".join(parts) + ".")
if all("retrained" in r for recs in arms.values() for r in recs):
    worst = {arm: np.mean([np.mean([r["retrained"]["shifted"][k][-1]["ece"] for k in r["retrained"]["shifted"]])
                           for r in recs]) for arm, recs in arms.items()}
    summary.append("- Under the strongest shifts (the last severity, averaged over the kinds) the retrained cells' "
                   "ECE is " + ", ".join(f"{a} {v:.3f}" for a, v in worst.items()) + "; clean, "
                   + ", ".join(f"{a} {np.mean([r['retrained']['clean']['ece'] for r in recs]):.3f}"
                               for a, recs in arms.items()) + ".")
gauss = [(a, v) for (s, a, label), v in verdicts.items() if s == src and a == "gaussian" and label == "NB201"]
if gauss:
    (_, (m, h, verdict)), = gauss
    summary.append(f"- Gaussian weights with the independent prior against point weights: NB201 {m:+.2f} ± {h:.2f} "
                   f"({verdict}).")
base_, retrain_ = BAYES["base"], BAYES["retrain"]
summary.append(f"- Not shown: whether a coupling on a scale-free quantity (BN's affine scale, or the weights normalised "
               f"per op) would prune by usefulness instead; and anything about the published protocols: this budget is "
               f"{base_['epochs']} epochs on {base_['images_per_class'] * 5} + {base_['images_per_class'] * 5} images at "
               f"{base_['image_size']} × {base_['image_size']}, and {retrain_['epochs']} epochs of retraining on "
               f"{retrain_['images_per_class'] * 10} images.")
print("\n".join(summary))
print(f"\nchapter run time: {(time.perf_counter() - CHAPTER_START) / 60:.1f} min ({MODE} mode)")
