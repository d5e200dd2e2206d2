# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Stochastic relaxations: distributions over architectures
#
# DARTS (chapter 02) keeps one point $\alpha$ per edge and mixes all operations with the weights
# $\mathrm{softmax}(\alpha)$. This chapter replaces the point by a **distribution over the simplex of
# operation weights** and builds the tools the rest of the course stands on:
#
# 1. why sample architectures at all;
# 2. the Gumbel-max trick, and its relaxation, the Concrete / Gumbel-softmax distribution (SNAS);
# 3. the straight-through hard Gumbel estimator (GDAS);
# 4. the Dirichlet distribution, its implicit reparameterisation gradients, and its KL to a prior
#    (DrNAS and the course's variational method);
# 5. an experiment that measures the **bias and variance** of each gradient estimator against an exact
#    gradient.
#
# Everything here lives in `vnas.posteriors`, one interface for all five methods; the search chapters plug
# it into the supernet. The first cell prints the mode: in **smoke** mode the numbers only show that the code
# runs.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import vnas
import vnas.checks
from vnas import objectives, plots
from vnas.posteriors import METHODS, build_posterior, dirichlet_kl, gumbel_softmax_sample
from vnas.widgets import explore

print(vnas.banner())
MODE = vnas.mode()
SIZES = {"smoke": dict(freq=5_000, repeats=3, mc=5_000, grad=2_000, taus=4),
         "quick": dict(freq=100_000, repeats=20, mc=200_000, grad=100_000, taus=12),
         "full": dict(freq=1_000_000, repeats=50, mc=1_000_000, grad=1_000_000, taus=20)}[MODE]
vnas.setup(0)
torch.set_default_dtype(torch.float64)  # estimator statistics below need more than float32's digits

# %% [markdown]
# ## 1. Why sample architectures?
#
# On every edge $e$ DARTS mixes the candidate operations $o \in \mathcal{O}$ with point weights
#
# $$\bar o_e(x) = \sum_{o \in \mathcal{O}} \theta_{e,o}\, o(x), \qquad
#   \theta_e = \mathrm{softmax}(\alpha_e). \tag{3.1}$$
#
# The network it trains is a *mixture* that no single architecture implements; at the end the mixture is
# cut to the arg-max operation, and nothing during the search measured how good that discrete network is
# (the *discretisation gap*). The point $\alpha_e$ also carries no uncertainty: weights
# $(0.5, 0.5)$ say the same thing whether the data could not separate the two operations or strongly
# prefer a half-half blend.
#
# A distribution $q_\phi(\theta)$ over each edge's simplex is the natural place to address both. The
# sampling methods of this chapter (SNAS, GDAS, and DrNAS without its KL option) minimise the *expected*
# loss of architectures drawn from it,
#
# $$\min_\phi\; \mathbb{E}_{\theta \sim q_\phi}\big[\mathcal{L}(\theta)\big]. \tag{3.2}$$
#
# Two warnings before we use it.
#
# **Eq. (3.2) alone says nothing about uncertainty.** An average is never below its smallest value,
# $\mathbb{E}_{q}[\mathcal{L}(\theta)] \ge \min_\theta \mathcal{L}(\theta)$, and a point mass on the minimiser
# attains that bound. Nothing in (3.2) rewards spread, so optimising it drives $q_\phi$ towards a point mass;
# whatever spread $q_\phi$ still has during such a search is a leftover of its initialisation and of how few
# steps the optimiser has taken, not a statement of how sure the data make us. The spread acquires a meaning
# only when the objective also charges for leaving a prior: the KL term of the ELBO (Section 7), which
# chapter 04 adds.
#
# **What (3.2) converges to depends on the distribution.** A toy: two operations with outputs $c = (0, 1)$,
# a target $t = 0.4$, and $\mathcal{L}(\theta) = (\theta \cdot c - t)^2$. The DARTS objective
# $\mathcal{L}(\mathrm{softmax}(\alpha))$ is perfect at the mixture $\theta = (0.6, 0.4)$, yet the two
# architectures one could actually deploy, $e_1$ and $e_2$, have losses $0.16$ and $0.36$.
#
# * A **categorical** $q$ samples one operation, $\theta = e_k$ with $k \sim \pi = \mathrm{softmax}(\alpha)$.
#   Its expected loss $\sum_k \pi_k \mathcal{L}(e_k)$ is a *mixture of losses*: not the loss of any
#   architecture (unless $\pi$ is one-hot), but a weighted average of the deployable architectures' losses,
#   so never below the best of them. It is linear in $\pi$, hence minimised at the vertex of the better
#   operation: this $q$ is pushed towards $e_1$.
# * A **Dirichlet** $q$ (DrNAS) samples *mixtures* $\theta$ inside the simplex, so (3.2) averages the
#   mixture's loss $\mathcal{L}(\theta)$ itself. Its minimum is a point mass at the minimiser of $\mathcal{L}$
#   over the simplex, which on this toy is the DARTS mixture: with (3.2) alone the Dirichlet ends where DARTS
#   ends, discretisation gap included.
#
# The cell draws the DARTS and categorical objectives, and finds the Dirichlet objective's minimiser on a
# grid of means and total concentrations $\beta_0$ (in closed form: $\theta \cdot c = \theta_2$ has mean $m$
# and variance $m(1-m)/(\beta_0 + 1)$ under the Dirichlet).

# %%
c_toy, t_toy = torch.tensor([0.0, 1.0]), 0.4
gap = torch.linspace(-4, 4, 201)  # alpha_2 - alpha_1
theta = torch.stack([torch.sigmoid(-gap), torch.sigmoid(gap)], 1)
darts_loss = (theta @ c_toy - t_toy) ** 2
expected_loss = theta @ (c_toy - t_toy) ** 2  # sum_k theta_k L(e_k)
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot(gap, darts_loss, label=r"DARTS: $\mathcal{L}(\mathrm{softmax}(\alpha))$")
ax.plot(gap, expected_loss, label=r"categorical $q$: $\sum_k \pi_k \mathcal{L}(e_k)$")
ax.set_xlabel(r"$\alpha_2 - \alpha_1$")
ax.set_ylabel("loss")
ax.legend(fontsize=8)
plt.show()

# the Dirichlet objective (3.2): E[L] = Var[theta_2] + (E[theta_2] - t)^2 over a grid of (beta_0, mean m of theta_2)
beta_0_grid, m_grid = torch.meshgrid(torch.logspace(-1, 4, 101), torch.linspace(0.005, 0.995, 199), indexing="ij")
dirichlet_toy = m_grid * (1 - m_grid) / (beta_0_grid + 1) + (m_grid - t_toy) ** 2
best = dirichlet_toy.argmin()
m_best, beta_0_best = m_grid.flatten()[best].item(), beta_0_grid.flatten()[best].item()
darts_theta = theta[darts_loss.argmin()]
deployable = (c_toy - t_toy) ** 2  # L(e_1), L(e_2)
print(f"deployable architectures: L(e_1) = {deployable[0]:.2f}, L(e_2) = {deployable[1]:.2f}")
print(f"DARTS: smallest loss {darts_loss.min():.1e} at the mixture ({darts_theta[0]:.2f}, {darts_theta[1]:.2f})")
pi_best = theta[expected_loss.argmin()]
print(f"categorical q: smallest expected loss {expected_loss.min():.3f} at alpha_2 - alpha_1 = "
      f"{gap[expected_loss.argmin()]:.1f}, pi = ({pi_best[0]:.3f}, {pi_best[1]:.3f}): "
      f"heading for e_{int(pi_best.argmax()) + 1}")
print(f"Dirichlet q: smallest expected loss {dirichlet_toy.min():.1e} at mean ({1 - m_best:.2f}, {m_best:.2f}), "
      f"beta_0 = {beta_0_best:.0f}")
at_top = beta_0_best == beta_0_grid.max().item()
print(f"-> the Dirichlet's minimiser has the DARTS mixture as its mean (distance "
      f"{abs(m_best - darts_theta[1].item()):.3f}), and its total concentration "
      + ("sits at the top of the grid: (3.2) alone wants a point mass there, "
         f"with a loss {dirichlet_toy.min():.1e} below what a deployable architecture achieves ({deployable.min():.2f})"
         if at_top else f"{beta_0_best:.0f} lies inside the grid"))

# %% [markdown]
# Every method of this course, the two baselines included, is one `vnas.posteriors.ArchDistribution`: a
# distribution $q$ over the mixing weights $\theta$ of every edge, an $E \times O$ matrix per cell type.
# `sample()` gives the $\theta$ of one forward pass (one sample per edge, shared by the batch), `mean()`
# the point weights a genotype is derived from. Each distribution also says whether an architecture step
# trains it (`trained`; the baselines have no parameters), whether its samples hold exact zeros the supernet
# can skip (`sparse`), its KL to a prior when its objective has one (`structure_kl()`, in chapter 04), and
# its named penalty terms (`regularisers()`: DARTS' L2 on $\alpha$, which every gradient method of the
# literature keeps). Here are all seven on the two search spaces (DARTS: 14 edges x 8 ops, normal and
# reduction cells; NAS-Bench-201: 6 edges x 5 ops).

# %%
for space in ("darts", "nb201"):
    for method in METHODS:
        q = build_posterior(method, space)
        theta = q.sample()[q.cell_types[0]]
        terms = ", ".join(f"{k} {v.item():.1e}" for k, v in q.regularisers().items()) or "-"
        print(f"{space:5s} {method:11s} {type(q).__name__:12s} sample {tuple(theta.shape)}, trained {q.trained!s:5s} "
              f"sparse {q.sparse!s:5s} zeros in sample {int((theta == 0).sum()):3d}, terms: {terms}")

# %% [markdown]
# ## 2. The Gumbel-max trick
#
# To sample an operation $k$ with probabilities $\pi = \mathrm{softmax}(\alpha)$ we can perturb the
# logits with independent standard Gumbel noise and take the arg-max:
#
# $$k = \arg\max_j\,(\alpha_j + g_j), \qquad g_j = -\log(-\log u_j),\; u_j \sim U(0, 1)
# \quad\Longrightarrow\quad P(k = i) = \pi_i. \tag{3.3}$$
#
# *Derivation.* A standard Gumbel has CDF $G(z) = \exp(-e^{-z})$ and density $e^{-z} G(z)$, so
# $z_j = \alpha_j + g_j$ has CDF $\exp(-e^{-(z - \alpha_j)})$. Index $i$ wins when every other
# $z_j$ lies below $z_i$:
#
# $$P(k = i) = \int e^{-(z-\alpha_i)} \exp\!\big(-e^{-(z-\alpha_i)}\big)
#   \prod_{j \ne i} \exp\!\big(-e^{-(z-\alpha_j)}\big)\, dz
#   = \int e^{\alpha_i} e^{-z} \exp\!\Big(-e^{-z} \sum_j e^{\alpha_j}\Big) dz
#   = \frac{e^{\alpha_i}}{\sum_j e^{\alpha_j}},$$
#
# since $\int a\, e^{-z} \exp(-b\, e^{-z})\,dz = a/b$. Let us check it empirically. Pearson's
# $\chi^2 = \sum_i (n_i - n\pi_i)^2 / (n\pi_i)$ is close to chi-square with $K - 1$ degrees of freedom
# when the counts $n_i$ follow $\pi$, and its p-value is then (nearly) uniform on $(0, 1)$. So we repeat
# the experiment a few times: a correct sampler gives p-values spread over $(0, 1)$ (one in a hundred below
# 0.01, by chance), a wrong one drives all of them towards 0.

# %%
alpha = torch.tensor([1.0, 0.0, -0.5, 2.0])
pi, n, repeats = torch.softmax(alpha, 0), SIZES["freq"], SIZES["repeats"]
counts = torch.zeros(repeats, 4)
for r in range(repeats):
    u = torch.rand(n, 4)
    k = (alpha - torch.log(-torch.log(u))).argmax(-1)  # Eq. (3.3)
    counts[r] = torch.bincount(k, minlength=4)
chi2 = ((counts - n * pi) ** 2 / (n * pi)).sum(-1)
p_values = torch.special.gammaincc(torch.tensor(3 / 2), chi2 / 2)  # chi-square survival function, 3 dof
print(f"mode: {MODE}, {repeats} repeats of {n} samples")
print("softmax(alpha)          ", [f"{v:.4f}" for v in pi.tolist()])
print("Gumbel-max frequencies  ", [f"{v:.4f}" for v in (counts.sum(0) / (n * repeats)).tolist()])
print("p-values, sorted        ", [f"{v:.3g}" for v in p_values.sort().values.tolist()])

# %% [markdown]
# ## 3. The Concrete / Gumbel-softmax relaxation (SNAS)
#
# The arg-max has no useful gradient. Maddison et al. (ICLR 2017) and Jang et al. (ICLR 2017) replace it by a
# softmax at temperature $\tau$:
#
# $$y = \mathrm{softmax}\!\Big(\frac{\alpha + g}{\tau}\Big), \qquad g_j = -\log(-\log u_j). \tag{3.4}$$
#
# $y$ is a point *inside* the simplex, a differentiable function of $\alpha$ for fixed noise (a
# reparameterisation). As $\tau \to 0$ it becomes the one-hot Gumbel-max sample; as $\tau$ grows it moves to
# the centre. SNAS (Xie et al., ICLR 2019) trains the supernet on such samples and anneals $\tau$ during the
# search. **Exercise 1:** write the sampler (draw the noise with `generator`, so runs repeat).

# %%
def my_gumbel_softmax(logits, tau, generator=None):
    """A Concrete sample, Eq. (3.4), along the last dimension of ``logits``."""
    ### BEGIN SOLUTION
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype)
    g = -torch.log(-torch.log(u))
    return torch.softmax((logits + g) / tau, dim=-1)
    ### END SOLUTION


# %%
vnas.checks.check_gumbel_softmax(my_gumbel_softmax)

# %% [markdown]
# The library's `gumbel_softmax_sample(logits, tau, generator, hard)` is the same equation (it also guards
# $u = 0$). Samples on the simplex of three operations with logits $(1, 0, -1)$; the red cross is
# $\mathrm{softmax}(\alpha)$. At small $\tau$ the samples crowd the corners (with frequencies
# $\pi$); at large $\tau$ they gather near the centre, *not* around $\pi$: a hot relaxation forgets the
# logits.

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
for ax, tau in zip(axes, (0.1, 0.5, 1.0, 5.0), strict=True):
    plots.plot_concrete(logits=(1.0, 0.0, -1.0), tau=tau, ax=ax)
plt.show()

# %% [markdown]
# Move the temperature yourself (a static figure in smoke mode):

# %%
explore(plots.plot_concrete, fixed={"logits": (1.0, 0.0, -1.0)}, tau=(0.05, 5.0))

# %% [markdown]
# `set_progress(epoch, epochs)` anneals the temperature. `Concrete` (SNAS) decays it exponentially,
# $\tau = \tau_0 (\tau_{\min}/\tau_0)^{p}$, `HardGumbel` (GDAS) linearly,
# $\tau = \tau_0 + (\tau_{\min} - \tau_0)\,p$, with progress $p = \text{epoch} / (\text{epochs} - 1)$.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.0))
for method in ("snas", "gdas"):
    q = build_posterior(method, "nb201")
    taus = []
    for epoch in range(50):
        q.set_progress(epoch, 50)
        taus.append(q.tau)
    ax.plot(taus, label=f"{method}: {q.tau0} -> {q.tau_min} ({q.schedule})")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel(r"temperature $\tau$")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 4. Straight-through hard Gumbel (GDAS)
#
# GDAS (Dong & Yang, CVPR 2019) wants a *discrete* architecture in the forward pass, so that only the chosen
# operation runs, yet gradients for $\alpha$. The straight-through estimator uses the one-hot sample forward
# and the soft sample's gradient backward, with $\mathrm{sg}$ the stop-gradient:
#
# $$y = \mathrm{onehot}\big(\arg\max_j y^{\text{soft}}_j\big) + y^{\text{soft}}
#   - \mathrm{sg}(y^{\text{soft}}), \qquad
#   y^{\text{soft}} = \mathrm{softmax}\!\Big(\frac{\alpha + g}{\tau}\Big). \tag{3.5}$$
#
# $y^{\text{soft}} - \mathrm{sg}(y^{\text{soft}})$ is exactly zero in floating point, so the unselected
# operations get weight exactly $0.0$ and the supernet can skip them.

# %%
q = build_posterior("gdas", "nb201", tau0=1.0)
theta = q.sample()["cell"]
print("forward weights (exact one-hot):\n", theta.detach())
print("values:", sorted(set(theta.detach().flatten().tolist())))
(theta * torch.arange(5.0)).sum().backward()
print("gradient w.r.t. alpha (from the soft sample):\n", q.alphas["cell"].grad)

# %% [markdown]
# The gradient is that of a *different* function (the soft sample) from the one evaluated (the hard one):
# the estimator is biased. Section 8 measures by how much.
#
# **Exercise 2:** write (3.5) for given Gumbel noise `g` (drawn as in Exercise 1), along the last dimension of
# `logits`. The forward value must be exactly one-hot, with the unselected operations at exactly $0.0$, and
# the gradient with respect to the logits must be that of $y^{\text{soft}}$; the check compares both with
# `gumbel_softmax_sample(..., hard=True)` drawn with the same noise.

# %%
def my_straight_through(logits, g, tau):
    """The straight-through hard Gumbel sample, Eq. (3.5), for Gumbel noise ``g`` of the logits' shape."""
    ### BEGIN SOLUTION
    y_soft = torch.softmax((logits + g) / tau, dim=-1)
    y_hard = F.one_hot(y_soft.argmax(-1), logits.shape[-1]).to(y_soft.dtype)
    return y_hard + (y_soft - y_soft.detach())  # forward: y_hard exactly; backward: y_soft's gradient
    ### END SOLUTION


# %%
vnas.checks.check_straight_through(my_straight_through)

# %% [markdown]
# ## 5. The Dirichlet distribution on the simplex (DrNAS)
#
# DrNAS (Chen et al., ICLR 2021) puts a Dirichlet on each edge's weights, with concentration
# $\beta_e = \mathrm{elu}(\alpha_e) + 1 > 0$:
#
# $$q(\theta_e) = \mathrm{Dir}(\theta_e; \beta_e) = \frac{\Gamma(\beta_{e,0})}{\prod_k \Gamma(\beta_{e,k})}
#   \prod_k \theta_{e,k}^{\beta_{e,k} - 1}, \qquad \beta_{e,0} = \sum_k \beta_{e,k}. \tag{3.6}$$
#
# Its mean is what DrNAS uses to derive the genotype; its total concentration $\beta_0$ says how concentrated
# it is (a measure of how sure the data make us only when the objective has the prior's KL of Section 7:
# under Eq. (3.2) alone $q$ heads for a point mass, and $\beta_0$ records how far it got); and it has a
# closed-form differential entropy ($K$ ops, $B$ the multivariate Beta function, $\psi$ the digamma function):
#
# $$\mathbb{E}[\theta_k] = \frac{\beta_k}{\beta_0}, \quad
#   \mathrm{Var}[\theta_k] = \frac{\beta_k(\beta_0 - \beta_k)}{\beta_0^2(\beta_0 + 1)}, \quad
#   H = \log B(\beta) + (\beta_0 - K)\,\psi(\beta_0) - \sum_k (\beta_k - 1)\,\psi(\beta_k). \tag{3.7}$$
#
# Below, densities and samples for the same mean $(0.5, 0.3, 0.2)$ at growing total concentration. Note the
# entropy: it is largest for the flat $\mathrm{Dir}(1, 1, 1)$ (uniform on the simplex) and falls **both**
# ways, towards the corners ($\beta_0$ small) and towards the mean ($\beta_0$ large). That is why
# `edge_stats()` reports both the entropy and $\beta_0$.

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
for ax, scale in zip(axes, (0.5, 3.0, 10.0, 50.0), strict=True):
    plots.plot_dirichlet(scale=scale, mean=(0.5, 0.3, 0.2), ax=ax)
plt.show()

# %%
explore(plots.plot_dirichlet, fixed={"mean": (0.5, 0.3, 0.2)}, scale=(0.3, 50.0))

# %% [markdown]
# Eq. (3.7) against our own formula and against torch, for one edge:

# %%
beta = torch.tensor([2.0, 0.7, 1.3, 4.0])
b0, K = beta.sum(), len(beta)
log_B = torch.lgamma(beta).sum() - torch.lgamma(b0)
H = log_B + (b0 - K) * torch.digamma(b0) - ((beta - 1) * torch.digamma(beta)).sum()
print(f"mean {beta / b0}, entropy (Eq. 3.7) {H:.6f}, "
      f"torch {torch.distributions.Dirichlet(beta).entropy():.6f}")

# %% [markdown]
# ## 6. Reparameterising the Dirichlet: implicit gradients
#
# For a Gaussian we write $w = \mu + \sigma \varepsilon$ and differentiate through it. A Dirichlet (or Gamma)
# sample has no such closed-form transform: its inverse CDF is not tractable. Figurnov et al. (NeurIPS 2018)
# observe that we never need the inverse. If $u = F(x; \beta)$ is the CDF at the sample and we hold $u$
# fixed while $\beta$ moves, then $0 = \mathrm{d}F = \partial_x F\, \mathrm{d}x + \partial_\beta F\,
# \mathrm{d}\beta$, and since $\partial_x F = q(x; \beta)$ is the density,
#
# $$\nabla_\beta x = -\frac{\nabla_\beta F(x; \beta)}{q(x; \beta)}. \tag{3.8}$$
#
# Only the CDF's derivative and the density at the sample are needed. Check Eq. (3.8) for
# $x \sim \mathrm{Gamma}(a, 1)$, whose CDF is the regularised incomplete gamma function: differentiate the
# CDF in $a$ by central differences and compare with the gradient torch's `rsample` gives for the same
# sample. (A Dirichlet sample is normalised Gamma samples, $\theta_k = \gamma_k / \sum_j \gamma_j$; the backward
# pass of torch's `Dirichlet.rsample` evaluates an implicit derivative of this kind.)

# %%
a = torch.tensor(1.7, requires_grad=True)
for _ in range(3):
    x = torch.distributions.Gamma(a, 1.0).rsample()
    (dx_da,) = torch.autograd.grad(x, a)
    xd, h = x.detach(), 1e-5
    a0 = a.detach()
    dF_da = (torch.special.gammainc(a0 + h, xd) - torch.special.gammainc(a0 - h, xd)) / (2 * h)
    density = torch.distributions.Gamma(a0, 1.0).log_prob(xd).exp()
    print(f"x = {xd:.4f}: torch rsample dx/da = {dx_da:.6f}, implicit -dF/da / q = {-dF_da / density:.6f}")

# %% [markdown]
# In `vnas.posteriors.Dirichlet`, `sample()` is `torch.distributions.Dirichlet(beta).rsample()`: one sample
# per edge, differentiable w.r.t. $\alpha$ through $\beta = \mathrm{elu}(\alpha) + 1$. (It uses torch's
# global random generator, since `rsample` takes none: seed with `vnas.setup`.)

# %%
q = build_posterior("drnas", "nb201")
theta = q.sample()["cell"]
(theta * torch.arange(5.0)).sum().backward()
print("one sample per edge, rows sum to", theta.sum(-1).detach())
print("gradient reaches alpha:", q.alphas["cell"].grad.abs().sum(-1))

# %% [markdown]
# ## 7. The KL between Dirichlets, and the variational objective
#
# The course's method is variational: a prior $p(\theta_e) = \mathrm{Dir}(c_0, \dots, c_0)$ on every edge, the
# posterior $q(\theta_e) = \mathrm{Dir}(\beta_e)$, and (chapter 01) the ELBO per data point subtracts
# $\frac{1}{N}\sum_e \mathrm{KL}(q(\theta_e) \,\|\, p(\theta_e))$. With $\gamma$ the prior's concentration
# ($\gamma_k = c_0$) and $\gamma_0 = \sum_k \gamma_k$, taking the expectation of
# $\log q - \log p$ under $q$ with $\mathbb{E}_q[\log \theta_k] = \psi(\beta_k) - \psi(\beta_0)$ gives
#
# $$\mathrm{KL}\big(\mathrm{Dir}(\beta) \,\|\, \mathrm{Dir}(\gamma)\big)
#   = \log\Gamma(\beta_0) - \sum_k \log\Gamma(\beta_k) - \log\Gamma(\gamma_0) + \sum_k \log\Gamma(\gamma_k)
#   + \sum_k (\beta_k - \gamma_k)\big(\psi(\beta_k) - \psi(\beta_0)\big). \tag{3.9}$$
#
# **Exercise 3:** write it, one KL per edge (`beta` is $E \times O$, the last dimension holds the ops).

# %%
def my_dirichlet_kl(beta, c0):
    """Eq. (3.9) per edge, for the symmetric prior Dir(c0, ..., c0)."""
    ### BEGIN SOLUTION
    gamma = torch.full_like(beta, c0)
    beta_0, gamma_0 = beta.sum(-1), gamma.sum(-1)
    return (torch.lgamma(beta_0) - torch.lgamma(beta).sum(-1) - torch.lgamma(gamma_0)
            + torch.lgamma(gamma).sum(-1)
            + ((beta - gamma) * (torch.digamma(beta) - torch.digamma(beta_0)[..., None])).sum(-1))
    ### END SOLUTION


# %%
vnas.checks.check_dirichlet_kl(my_dirichlet_kl)

# %% [markdown]
# A closed form is only as good as its derivation, so check Eq. (3.9) (the library's `dirichlet_kl`)
# against a Monte Carlo estimate $\frac{1}{S}\sum_s \log q(\theta^{(s)}) - \log p(\theta^{(s)})$,
# $\theta^{(s)} \sim q$, with its standard error:

# %%
beta = torch.tensor([[0.5, 2.0, 1.0, 3.0, 0.8], [5.0, 5.0, 5.0, 5.0, 5.0], [0.2, 0.2, 9.0, 0.2, 0.2]])
c0, S = 0.5, SIZES["mc"]
q_dist = torch.distributions.Dirichlet(beta)
p_dist = torch.distributions.Dirichlet(torch.full_like(beta, c0))
x = q_dist.sample((S,))
log_ratio = q_dist.log_prob(x) - p_dist.log_prob(x)
print(f"mode: {MODE}, {S} Monte Carlo samples")
for e in range(3):
    mc, se = log_ratio[:, e].mean(), log_ratio[:, e].std() / math.sqrt(S)
    print(f"edge {e}: closed form {dirichlet_kl(beta[e], c0):.4f}   Monte Carlo {mc:.4f} +- {se:.4f}")

# %% [markdown]
# This KL is what gives the spread of $q$ a meaning: Eq. (3.2) alone pulls $q$ towards a point mass
# (Section 1), while the KL charges for every nat by which $q$ leaves the prior, so $q$ concentrates only as
# far as the data pay for. In the variational method's objective (`vnas.objectives.architecture_terms`, chapter 04) this
# KL enters as `kl_scale` times $\sum_{\text{cell types}} \sum_e \mathrm{KL}_e / N$. A teaching point:
# NASLib's DrNAS takes *one* KL over all edges' parameters flattened into a single Dirichlet. That is a
# different quantity (one distribution over a simplex of $E \cdot O$ weights, not $E$ independent simplices):

# %%
print(f"sum of per-edge KLs: {dirichlet_kl(beta, c0).sum():.4f}   "
      f"one KL over the flattened vector: {dirichlet_kl(beta.flatten(), c0):.4f}")
q = build_posterior("variational", "nb201", c0=0.5)
terms = objectives.architecture_terms(q, nll=torch.tensor(0.0), num_data=25_000)
print(f"variational posterior at its initial value: structure KL {terms['structure_kl'].item():.3e} nats, "
      f"its weight in the objective at N = 25000: {terms['structure_kl'].item() / 25_000:.3e}")

# %% [markdown]
# ## 8. Bias and variance of the gradient estimators
#
# Eq. (3.2) needs $\nabla_\phi \mathbb{E}_{q_\phi}[f(\theta)]$. We now have four ways to estimate it from
# samples. The **score function** (REINFORCE) estimator works for any distribution,
#
# $$\nabla_\phi \mathbb{E}_{q_\phi}[f(\theta)] = \mathbb{E}_{q_\phi}\big[f(\theta)\, \nabla_\phi \log q_\phi(\theta)\big],
# \tag{3.10}$$
#
# and is unbiased. Its large variance has a classic remedy, a **baseline** $b$ (a control variate):
# since $\mathbb{E}_{q_\phi}[\nabla_\phi \log q_\phi(\theta)] = \nabla_\phi \int q_\phi = 0$, any $b$ that does
# not depend on the sample $\theta$ leaves the expectation unchanged,
#
# $$\nabla_\phi \mathbb{E}_{q_\phi}[f(\theta)]
#   = \mathbb{E}_{q_\phi}\big[(f(\theta) - b)\, \nabla_\phi \log q_\phi(\theta)\big], \tag{3.11}$$
#
# while a $b$ close to $\mathbb{E}_{q_\phi}[f]$ can remove much of the variance. Here $b$ is the mean loss of
# an earlier, independent batch of samples: what a running mean of past losses gives a search. It does not
# depend on the sample it multiplies, so the estimator stays exactly unbiased (with a batch of samples, the
# mean of the *other* samples, leave-one-out, works the same way). The **pathwise** estimators differentiate
# $f$ at a reparameterised sample: Gumbel-softmax (Eq. 3.4, biased for the discrete objective, more so as
# $\tau$ grows), straight-through (Eq. 3.5, biased), and the Dirichlet's implicit reparameterisation (Eq. 3.8,
# unbiased for the Dirichlet objective).
#
# To measure bias we need the exact gradient. Take $K = 4$ operations with outputs $c$ and the quadratic
# loss $f(\theta) = (\theta \cdot c - t)^2$:
#
# * **categorical objective** $\mathbb{E}_{k \sim \mathrm{softmax}(\alpha)}[f(e_k)] = \sum_k \pi_k f(e_k)$;
#   exact gradient by autograd on that sum. Estimated by REINFORCE (plain and with a baseline), Gumbel-softmax
#   and straight-through.
# * **Dirichlet objective** $\mathbb{E}_{\mathrm{Dir}(\beta)}[f(\theta)]$ with $\beta = \mathrm{elu}(\alpha) + 1$,
#   in closed form through the moments $\mathbb{E}[\theta] = \beta/\beta_0$,
#   $\mathbb{E}[\theta \theta^\top] = (\beta\beta^\top + \mathrm{diag}\,\beta) / (\beta_0(\beta_0 + 1))$. Estimated by
#   the implicit pathwise gradient and by REINFORCE (plain and with a baseline).

# %%
K, t = 4, 0.5
c = torch.tensor([1.0, 0.2, 0.6, -0.4])
alpha0 = torch.tensor([0.5, -0.3, 0.2, 0.0])


def f(theta):
    """The loss of (relaxed) mixing weights theta [n, K] -> [n]."""
    return (theta @ c - t) ** 2


def exact_grad(objective):
    a = alpha0.clone().requires_grad_()
    objective(a).backward()
    return a.grad


def categorical_objective(a):
    return torch.softmax(a, 0) @ f(torch.eye(K))


def dirichlet_objective(a):
    beta = F.elu(a) + 1
    b0 = beta.sum()
    m1, m2 = beta / b0, (torch.outer(beta, beta) + torch.diag(beta)) / (b0 * (b0 + 1))
    return c @ m2 @ c - 2 * t * (c @ m1) + t**2


EXACT = {"categorical": exact_grad(categorical_objective), "Dirichlet": exact_grad(dirichlet_objective)}
print({k: v.tolist() for k, v in EXACT.items()})

# %% [markdown]
# Each estimator is written as a *surrogate*: a function of $\alpha$ whose gradient is the one-sample
# estimate. Giving every sample its own copy of $\alpha$ (a row of an $n \times K$ matrix) yields $n$
# independent one-sample estimates from one backward pass.

# %%
def score_function_categorical(a, baseline=False):
    pi = torch.softmax(a, -1).detach()
    b = f(F.one_hot(torch.multinomial(pi, 1).squeeze(-1), K).to(a)).mean() if baseline else 0.0  # earlier samples
    k = torch.multinomial(pi, 1).squeeze(-1)
    log_p = torch.log_softmax(a, -1).gather(-1, k[:, None]).squeeze(-1)
    return (f(F.one_hot(k, K).to(a)) - b).detach() * log_p  # gradient: (f(e_k) - b) grad log pi_k, Eqs. (3.10)-(3.11)


def gumbel_softmax(tau):
    return lambda a: f(gumbel_softmax_sample(a, tau))  # Eq. (3.4)


def straight_through(tau):
    return lambda a: f(gumbel_softmax_sample(a, tau, hard=True))  # Eq. (3.5)


def dirichlet_pathwise(a):
    return f(torch.distributions.Dirichlet(F.elu(a) + 1).rsample())  # Eq. (3.8)


def score_function_dirichlet(a, baseline=False):
    q = torch.distributions.Dirichlet(F.elu(a) + 1)
    b = f(q.sample()).mean() if baseline else 0.0  # the mean loss of earlier, independent samples
    theta = q.sample()
    return (f(theta) - b) * q.log_prob(theta)  # Eqs. (3.10)-(3.11)


def one_sample_grads(surrogate, n):
    a = alpha0.repeat(n, 1).requires_grad_()
    surrogate(a).sum().backward()
    return a.grad  # [n, K]: row i is the i-th one-sample estimate


def summarise(name, target, grads):
    """Bias of the mean estimate (with its standard error) and spread of one sample, relative to |exact|."""
    exact, n = EXACT[target], grads.shape[0]
    scale, total_var = exact.norm(), grads.var(0).sum()
    return {"estimator": name, "target": target, "bias": ((grads.mean(0) - exact).norm() / scale).item(),
            "bias_se": (total_var / n).sqrt().item() / scale.item(), "std": (total_var.sqrt() / scale).item()}


# %%
n = SIZES["grad"]
estimators = [("REINFORCE", "categorical", score_function_categorical),
              ("REINFORCE + baseline", "categorical", lambda a: score_function_categorical(a, baseline=True))]
estimators += [(f"Gumbel-softmax tau={tau}", "categorical", gumbel_softmax(tau))
               for tau in (0.1, 0.5, 1.0, 2.0)]
estimators += [("straight-through tau=1", "categorical", straight_through(1.0)),
               ("Dirichlet implicit", "Dirichlet", dirichlet_pathwise),
               ("REINFORCE (Dirichlet)", "Dirichlet", score_function_dirichlet),
               ("REINFORCE + baseline (Dirichlet)", "Dirichlet", lambda a: score_function_dirichlet(a, baseline=True))]
rows = [summarise(name, target, one_sample_grads(fn, n)) for name, target, fn in estimators]
print(f"mode: {MODE}, {n} one-sample estimates each; all numbers relative to |exact gradient|")
print(f"{'estimator':33s} {'target':12s} {'bias':>8s} {'+- s.e.':>8s} {'std (1 sample)':>15s}")
for r in rows:
    print(f"{r['estimator']:33s} {r['target']:12s} {r['bias']:8.4f} {r['bias_se']:8.4f} {r['std']:15.3f}")

# %%
ax = plots.plot_estimators(rows, title=f"gradient estimators ({MODE} mode, n = {n})")
plt.show()

# %% [markdown]
# A bias within about two standard errors of zero is not resolved by this many samples: the score
# function estimators (with or without a baseline) and the Dirichlet-implicit one are unbiased by
# construction, and should sit there. How does
# the temperature trade bias against variance for Gumbel-softmax?

# %%
taus = torch.logspace(-1.3, 0.7, SIZES["taus"]).tolist()
sweep = [summarise(f"{tau:.2f}", "categorical", one_sample_grads(gumbel_softmax(tau), n)) for tau in taus]
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(taus, [r["bias"] for r in sweep], "o-", label="|bias|")
ax.plot(taus, [r["std"] for r in sweep], "s-", label="std of one sample")
by_name = {r["estimator"]: r for r in rows}
ax.axhline(by_name["REINFORCE"]["std"], color="0.5", ls="--", label="REINFORCE std")
ax.axhline(by_name["REINFORCE + baseline"]["std"], color="0.5", ls=":", label="REINFORCE + baseline std")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel(r"temperature $\tau$")
ax.set_ylabel("relative to |exact gradient|")
ax.set_title(f"Gumbel-softmax ({MODE} mode, n = {n})", fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# What to look for (in quick or full mode; smoke numbers are noise), computed from the table rather than
# typed in:
#
# * the score function (REINFORCE) estimators are unbiased, so their bias should lie within about two
#   standard errors of zero, but their one-sample spread is large; a baseline, Eq. (3.11), shrinks it while
#   keeping the bias at zero (by how much is printed below, for both objectives);
# * Gumbel-softmax trades one for the other: a low temperature has little bias and a large variance (the
#   softmax's slope grows as $1/\tau$), a high temperature a small variance and a large bias. That is why
#   SNAS and GDAS anneal $\tau$;
# * straight-through runs a discrete architecture forward, at the price of a bias;
# * the Dirichlet's implicit gradient is unbiased for its own objective, with a smaller spread than
#   REINFORCE on the same objective: one sample per edge per step is usable, as in DrNAS.
#
# The categorical and Dirichlet rows estimate gradients of different objectives; compare within a target.

# %%
for r in rows:
    resolved = r["bias"] > 2 * r["bias_se"]
    print(f"{r['estimator']:33s} bias {'resolved' if resolved else 'not resolved (within 2 s.e. of 0)'}")
pairs = [("Dirichlet implicit", "REINFORCE (Dirichlet)"), ("Gumbel-softmax tau=0.1", "REINFORCE"),
         ("Gumbel-softmax tau=1.0", "REINFORCE"), ("straight-through tau=1", "REINFORCE")]
for a_name, b_name in pairs:
    ratio = by_name[a_name]["std"] / by_name[b_name]["std"]
    print(f"std of {a_name} / std of {b_name}: {ratio:.2f}   ({MODE} mode)")
for plain, with_b in (("REINFORCE", "REINFORCE + baseline"),
                      ("REINFORCE (Dirichlet)", "REINFORCE + baseline (Dirichlet)")):
    variance_ratio = (by_name[plain]["std"] / by_name[with_b]["std"]) ** 2
    print(f"the baseline divides the variance of {plain} by {variance_ratio:.2f} "
          f"(a one-sample estimate with it is worth {variance_ratio:.1f} plain ones; {MODE} mode)")

# %% [markdown]
# ## Summary
#
# | method | `build_posterior` name | sample | point weights | prior term, penalty |
# | --- | --- | --- | --- | --- |
# | DARTS | `darts` | $\mathrm{softmax}(\alpha)$ (no noise) | softmax | none; L2 on $\alpha$ |
# | SNAS | `snas` | Concrete, Eq. (3.4), $\tau$ annealed | softmax | none; L2 on $\alpha$ |
# | GDAS | `gdas` | hard Gumbel, Eq. (3.5) | softmax | none; L2 on $\alpha$ |
# | DrNAS | `drnas` | $\mathrm{Dir}(\mathrm{elu}(\alpha)+1)$, Eq. (3.8) | Dir. mean | none (option: KL); L2 on $\alpha$ |
# | variational | `variational` | same | Dir. mean | $\sum_e \mathrm{KL}_e / N$, Eq. (3.9); L2 on $\alpha$ |
# | random sampling, shared weights | `random_ws` | a uniform one-hot cell | best of 10 cells, per epoch | none |
# | random cell | `random` | one fixed uniform cell | the same cell | none |
#
# **References.** C. J. Maddison, A. Mnih, Y. W. Teh, *The Concrete Distribution*, ICLR 2017.
# E. Jang, S. Gu, B. Poole, *Categorical Reparameterization with Gumbel-Softmax*, ICLR 2017.
# S. Xie, H. Zheng, C. Liu, L. Lin, *SNAS: Stochastic Neural Architecture Search*, ICLR 2019.
# X. Dong, Y. Yang, *Searching for a Robust Neural Architecture in Four GPU Hours* (GDAS), CVPR 2019.
# X. Chen, R. Wang, M. Cheng, X. Tang, C.-J. Hsieh, *DrNAS: Dirichlet Neural Architecture Search*, ICLR 2021.
# M. Figurnov, S. Mohamed, A. Mnih, *Implicit Reparameterization Gradients*, NeurIPS 2018.
# H. Liu, K. Simonyan, Y. Yang, *DARTS: Differentiable Architecture Search*, ICLR 2019.
