# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 · Bayesian model selection and the ELBO
#
# This course grew out of a student proposal: choose a network's architecture $A$ (a DARTS
# cell, with a Dirichlet prior on its mixing weights) the Bayesian way, by maximising an
# evidence lower bound (ELBO). Before we build that on networks, where nothing is exact, this
# chapter derives the bound once, carefully, and then checks every step numerically on a model
# where the posterior and the evidence are known in closed form: Bayesian linear regression
# (Bishop, 2006, ch. 3).
#
# You will see
# 1. why the **evidence** $p(\mathcal D \mid A)$ is a good score for a model structure (an
#    automatic Occam's razor);
# 2. the identity
#    $\log p(\mathcal D \mid A) = \mathrm{ELBO}(q) + \mathrm{KL}(q \,\|\, p(w \mid \mathcal D, A))$,
#    and the bound that the later chapters optimise;
# 3. both verified to numerical precision, a mean-field $q$ fitted by reparameterised gradients,
#    and the evidence choosing a polynomial degree;
# 4. three exercises: a Gaussian KL, a reparameterised ELBO estimator, and the log evidence itself.

# %%
import math

import matplotlib.pyplot as plt
import torch

import vnas
from vnas import checks, plots, widgets
from vnas import evidence as ev

print(vnas.banner())

MODE = vnas.mode()
# Everything here is small; the modes change how many steps and repeats we average over.
SIZE = {"smoke": dict(steps=100, repeats=50, datasets=3),
        "quick": dict(steps=3000, repeats=1000, datasets=40),
        "full": dict(steps=10000, repeats=4000, datasets=200)}[MODE]
generator = vnas.setup(0)
print(f"[{MODE} mode] {SIZE}")

# %% [markdown]
# ## 1. Choosing a model by its evidence
#
# Treat the architecture $A$ like any other unknown. Bayes' rule gives its posterior,
#
# $$p(A \mid \mathcal D) = \frac{p(\mathcal D \mid A)\, p(A)}{p(\mathcal D)}
#   \;\propto\; p(\mathcal D \mid A)\, p(A). \tag{1.1}$$
#
# The data enter only through the **evidence** (marginal likelihood) of $A$: how probable the
# data are under that architecture, averaged over all the weights $w$ its prior allows,
#
# $$\log p(\mathcal D \mid A) = \log \int p(\mathcal D \mid w, A)\, p(w \mid A)\, \mathrm{d}w. \tag{1.2}$$
#
# **Occam's razor, automatically** (MacKay, 1992). $p(\mathcal D \mid A)$ is a probability
# distribution over datasets, so it sums to one. A very flexible architecture can explain many
# datasets and so gives each of them little mass; a too-rigid one cannot explain ours. The
# evidence is highest for the simplest structure that still fits. MacKay's reading: evidence
# $\approx$ best-fit likelihood $\times$ Occam factor, the factor being roughly
# (posterior width / prior width) per parameter, which is small when the data pin down many
# parameters the prior left loose. No held-out set is needed: the penalty comes out of the
# integral. The catch is the integral itself: for a network it is intractable, which is why
# we need a bound.

# %% [markdown]
# ## 2. The evidence lower bound
#
# Take *any* distribution $q(w)$ over the weights. Because $\log p(\mathcal D \mid A)$ does not
# depend on $w$, we may average it under $q$, and then use
# $p(\mathcal D \mid A) = p(\mathcal D, w \mid A) / p(w \mid \mathcal D, A)$:
#
# $$
# \log p(\mathcal D \mid A)
# = \mathbb E_{q(w)}\Big[\log \frac{p(\mathcal D, w \mid A)}{q(w)}\Big]
#   + \mathbb E_{q(w)}\Big[\log \frac{q(w)}{p(w \mid \mathcal D, A)}\Big]
# = \mathrm{ELBO}(q) + \mathrm{KL}\big(q(w) \,\|\, p(w \mid \mathcal D, A)\big). \tag{1.3}
# $$
#
# Splitting $p(\mathcal D, w \mid A) = p(\mathcal D \mid w, A)\, p(w \mid A)$ gives the form we
# compute:
#
# $$\mathrm{ELBO}(q) =
#   \underbrace{\mathbb E_{q(w)}[\log p(\mathcal D \mid w, A)]}_{\text{expected log-likelihood}}
#   \;-\; \underbrace{\mathrm{KL}\big(q(w) \,\|\, p(w \mid A)\big)}_{\text{to the prior}},
#   \qquad \mathrm{KL}(q \,\|\, p) = \mathbb E_q\Big[\log \frac{q(w)}{p(w)}\Big]. \tag{1.4}$$
#
# Three consequences:
# * $\mathrm{KL} \ge 0$, so $\mathrm{ELBO}(q) \le \log p(\mathcal D \mid A)$ for every $q$: a
#   **lower bound**, which we **maximise** over $q$.
# * The gap is *exactly* $\mathrm{KL}(q \,\|\, p(w \mid \mathcal D, A))$, so maximising the ELBO
#   is the same as pulling $q$ toward the true posterior, and the bound is tight (gap $0$) only
#   at $q = p(w \mid \mathcal D, A)$.
# * Everything in (1.4) is an expectation under $q$, which we can sample: no integral over the
#   posterior is needed.
#
# **Three slips on the proposal's slide, corrected.**
# 1. The slide wrote the weight term as $\mathbb E_q[q(w) / p(w \mid A)]$; it should be
#    $\mathbb E_q[\log (q(w) / p(w \mid A))] = \mathrm{KL}(q \,\|\, p)$. Without the log it is a
#    different quantity ($1 + \chi^2$ divergence), and (1.3) no longer holds (see the cell below).
# 2. The slide called the term with $p(w \mid A)$ a likelihood; $p(w \mid A)$ is the **prior** on
#    the weights given the architecture. The only likelihood is $p(\mathcal D \mid w, A)$. The
#    prior enters only through $-\mathrm{KL}(q \,\|\, p(w \mid A)) = \mathbb E_q[\log p(w \mid A)] + H[q]$.
# 3. The slide spoke of minimising the bound; it should be **maximised**. A lower bound can be
#    made arbitrarily low by a bad $q$, so minimising it says nothing about the evidence. Code
#    minimises the *loss* $-\mathrm{ELBO}$, which is the same thing as maximising the ELBO.
#
# **The step to architecture search.** Give the architecture a posterior too,
# $q(w, A) = q(A)\, q(w)$, with prior $p(w, A) = p(A)\, p(w \mid A)$. Applying (1.3)-(1.4) to the
# pair $(w, A)$ and splitting the log-ratio:
#
# $$\log p(\mathcal D) \;\ge\; \mathbb E_{q(A)\,q(w)}\big[\log p(\mathcal D \mid w, A)\big]
#   \;-\; \mathbb E_{q(A)}\Big[\mathrm{KL}\big(q(w) \,\|\, p(w \mid A)\big)\Big]
#   \;-\; \mathrm{KL}\big(q(A) \,\|\, p(A)\big). \tag{1.5}$$
#
# The weight KL sits **under the expectation over $q(A)$** (not under $q(w)$ alone), because the
# weight prior depends on the architecture: an ARD-like $p(w \mid A)$ that shrinks the weights
# of operations $A$ switches off gives a different KL for each sampled $A$. Only when
# $p(w \mid A) = p(w)$ does it come out as a plain $\mathrm{KL}(q(w) \,\|\, p(w))$. In DrNAS-style
# search $A$ is a point on the simplex with $q(A) = \mathrm{Dir}(\beta)$, $p(A) = \mathrm{Dir}(c_0)$.
# Bound (1.5) is what the later chapters optimise.
#
# Slip 1 in numbers, for two 1-d Gaussians $q = N(0.5, 0.5^2)$ and $p = N(0, 1)$: the log matters.

# %%
q, p = torch.distributions.Normal(0.5, 0.5), torch.distributions.Normal(0.0, 1.0)
w = q.sample((200_000,))
log_ratio = q.log_prob(w) - p.log_prob(w)
kl = ev.kl_gaussian_diag(*(torch.tensor([v], dtype=torch.float64) for v in (0.5, 0.5, 0.0, 1.0)))
print(f"E_q[log q/p] (MC)  = {log_ratio.mean():.4f}   closed-form KL = {kl:.4f}")
print(f"E_q[q/p]     (MC)  = {log_ratio.exp().mean():.4f}   <- not a KL: without the log, (1.3) fails")

# %% [markdown]
# ## 3. A model where everything is exact
#
# **Bayesian linear regression.** Features $\Phi \in \mathbb R^{N \times M}$ (row $n$ is
# $\phi(x_n)^\top$), targets $y \in \mathbb R^N$,
#
# $$y = \Phi w + \varepsilon, \quad \varepsilon \sim \mathcal N(0, \sigma^2 I), \qquad
#   p(w) = \mathcal N(w \mid 0, \alpha^{-1} I). \tag{1.6}$$
#
# Here "the architecture" is the choice of features $\Phi$ (below: the polynomial degree). The
# posterior is Gaussian (Bishop Eqs. 3.53-3.54), with precision $\Lambda$:
#
# $$p(w \mid \mathcal D) = \mathcal N(w \mid m_N, S_N), \quad
#   \Lambda = S_N^{-1} = \alpha I + \sigma^{-2} \Phi^\top \Phi, \quad
#   m_N = \sigma^{-2} S_N \Phi^\top y. \tag{1.7}$$
#
# The evidence is a Gaussian density of $y$ (Bishop Eq. 3.86), with
# $E(m) = \tfrac{1}{2\sigma^2}\|y - \Phi m\|^2 + \tfrac{\alpha}{2} m^\top m$:
#
# $$\log p(\mathcal D) = \log \mathcal N(y \mid 0,\ \sigma^2 I + \alpha^{-1} \Phi \Phi^\top)
#   = \tfrac{M}{2} \log \alpha - \tfrac{N}{2} \log (2\pi\sigma^2) - E(m_N)
#   - \tfrac12 \log |\Lambda|. \tag{1.8}$$
#
# `ev.log_evidence` uses the right-hand form ($M \times M$ algebra); we check it against the
# left-hand $N$-dimensional Gaussian density. Our first dataset: a straight line on $[0, 1]$,
# so $M = 2$ and we can draw the weight space. Intercept and slope are strongly correlated in
# the posterior (nudging the slope up forces the intercept down).

# %%
x, y = ev.sample_poly_data(20, coeffs=[0.5, 1.5], sigma=0.3, generator=generator, low=0.0, high=1.0)
model = ev.LinearModel(ev.poly_features(x, 1), y, alpha=1.0, sigma=0.3)
m_N, S_N = ev.posterior(model)
log_z = ev.log_evidence(model)

marginal = torch.distributions.MultivariateNormal(
    torch.zeros(model.n, dtype=torch.float64),
    model.sigma**2 * torch.eye(model.n, dtype=torch.float64) + model.phi @ model.phi.T / model.alpha)
rho = S_N[0, 1] / S_N.diagonal().prod().sqrt()
print(f"log p(D) by (1.8): {log_z:.10f}   as an N-dim Gaussian density: {marginal.log_prob(y):.10f}")
print(f"posterior mean m_N = {m_N.tolist()}, posterior correlation of (w0, w1) = {rho:.3f}")

# %% [markdown]
# ### 3(a) ELBO + KL = log evidence, for any Gaussian q
#
# For Gaussians the KL is closed form ($M$ = dimension):
#
# $$\mathrm{KL}(\mathcal N(\mu_q, \Sigma_q) \,\|\, \mathcal N(\mu_p, \Sigma_p))
#   = \tfrac12 \Big[ \mathrm{tr}(\Sigma_p^{-1} \Sigma_q) + (\mu_p - \mu_q)^\top \Sigma_p^{-1} (\mu_p - \mu_q)
#   - M + \log |\Sigma_p| - \log |\Sigma_q| \Big], \tag{1.9}$$
#
# and, for diagonal covariances with standard deviations $s$, a sum over dimensions of
# $\log (s_{p,j} / s_{q,j}) + (s_{q,j}^2 + (\mu_{q,j} - \mu_{p,j})^2) / (2 s_{p,j}^2) - \tfrac12$.
# The expected log-likelihood of $q = \mathcal N(\mu, \Sigma)$ is closed form too, because
# $\mathbb E_q \|y - \Phi w\|^2 = \|y - \Phi\mu\|^2 + \mathrm{tr}(\Phi^\top \Phi \Sigma)$:
#
# $$\mathbb E_q[\log p(y \mid w)] = -\tfrac N2 \log(2\pi\sigma^2)
#   - \frac{\|y - \Phi\mu\|^2 + \mathrm{tr}(\Phi^\top\Phi\,\Sigma)}{2\sigma^2},
#   \qquad \texttt{elbo = expected\_ll - kl}. \tag{1.10}$$
#
# Now test (1.3) on several $q$: random full-covariance and random mean-field Gaussians, the
# prior itself, the best mean-field $q$ (§3(b)) and the exact posterior.

# %%
def random_q(full: bool):
    """A random Gaussian q: mean near m_N, full or diagonal covariance."""
    mu = m_N + 0.3 * torch.randn(2, generator=generator, dtype=torch.float64)
    if full:
        root = torch.randn(2, 2, generator=generator, dtype=torch.float64)
        return mu, 0.1 * root @ root.T + 1e-3 * torch.eye(2, dtype=torch.float64)
    return mu, torch.diag(torch.rand(2, generator=generator, dtype=torch.float64))


mu_mf, s_mf = ev.best_mean_field(model)
prior = (torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64) / model.alpha)
candidates = {"random full-cov q": random_q(True), "random mean-field q": random_q(False), "the prior": prior,
              "best mean-field q": (mu_mf, torch.diag(s_mf**2)), "exact posterior": (m_N, S_N)}
print(f"log p(D) = {log_z:.6f}                 ELBO      KL(q||post)  log p(D) - ELBO - KL")
for name, (mu, cov) in candidates.items():
    elbo, kl_post = ev.elbo(model, mu, cov), ev.kl_gaussian(mu, cov, m_N, S_N)
    print(f"{name:>20}:  {elbo:16.6f}  {kl_post:12.6f}   {log_z - elbo - kl_post: .1e}")

# %% [markdown]
# Every ELBO is below the evidence, the gap is the KL to the exact posterior up to rounding
# error ($\lesssim 10^{-12}$), and at the exact posterior the bound is tight. Move $q$ yourself:
# its mean is shifted from $m_N$ by `shift` posterior standard deviations, its standard
# deviations are `scale` times the posterior's, and `corr` is its correlation. With `shift = 0`,
# `scale = 1` and `corr` set to the posterior correlation printed above, the gap closes. (In
# smoke mode this is a static figure.)

# %%
widgets.explore(plots.plot_elbo_gap, fixed={"model": model}, shift_0=(-3.0, 3.0, 0.1),
                shift_1=(-3.0, 3.0, 0.1), scale=(0.2, 3.0, 0.05), corr=(-0.99, 0.99, 0.01))

# %% [markdown]
# ### 3(b) The Monte Carlo ELBO, and fitting a mean-field q by gradients
#
# For a network (1.10) has no closed form, so we estimate the expected log-likelihood by
# sampling. To differentiate through the samples, write them as a deterministic function of the
# variational parameters and parameter-free noise (the **reparameterisation**, Kingma & Welling,
# 2014; used for network weights in Bayes by Backprop, Blundell et al., 2015). For
# $q(w) = \mathcal N(\mu, \mathrm{diag}(s^2))$:
#
# $$\widehat{\mathrm{ELBO}} = \frac1S \sum_{i=1}^S \log p(y \mid w_i) - \mathrm{KL}(q \,\|\, p), \quad
#   w_i = \mu + s \odot \epsilon_i, \ \ \epsilon_i \sim \mathcal N(0, I). \tag{1.11}$$
#
# The **local reparameterisation** (Kingma, Salimans & Welling, 2015) samples the outputs
# instead of the weights: each output $f_n = \phi_n^\top w$ is Gaussian,
# $f_n \sim \mathcal N(\phi_n^\top \mu,\ \sum_j \phi_{nj}^2 s_j^2)$ (the $f_n$ are correlated
# through the shared $w$). Since the expectation of
# $\log p(y \mid w) = \sum_n \log p(y_n \mid f_n)$ needs only these marginals, drawing each $f_n$
# with its own noise is still unbiased; it drops the covariances between the data terms, which
# usually lowers the variance. Here the KL is closed form, so all the noise comes from the data
# term.
#
# First the estimator against the closed form: repeat it many times at each $S$.

# %%
sample_sizes = [1, 4, 16, 64, 256]
s_q = s_mf * 1.5  # any q will do; this one is near the posterior but not at the optimum
closed_form = ev.elbo(model, mu_mf, torch.diag(s_q**2)).item()
kl = ev.kl_gaussian_diag(mu_mf, s_q, torch.zeros(2, dtype=torch.float64), model.alpha**-0.5)
estimates = {}
for local in (False, True):
    rows = []
    for S in sample_sizes:
        log_lik = ev.log_lik_samples(model, mu_mf, s_q, S * SIZE["repeats"], local, generator)
        rows.append(log_lik.reshape(SIZE["repeats"], S).mean(1) - kl)  # R independent estimates (1.11)
    estimates["local reparam." if local else "plain reparam."] = torch.stack(rows)

plots.plot_mc_estimator(sample_sizes, estimates, closed_form, mode=MODE)
plt.show()
for label, est in estimates.items():
    sd1, se1 = est[0].std(), est[0].std() / math.sqrt(est.shape[1])
    print(f"[{MODE} mode] {label:>15}: S=1 mean {est[0].mean():.4f} +- {se1:.4f}"
          f" (closed form {closed_form:.4f}); sd at S=1: {sd1:.3f},"
          f" at S={sample_sizes[-1]}: {est[-1].std():.4f}"
          f" (1/sqrt(S) predicts {sd1 / math.sqrt(sample_sizes[-1]):.4f})")

# %% [markdown]
# Now fit $q$ by maximising (1.11) with Adam, one sample per step ($S = 1$), from $\mu = 0$,
# $s = e^{-2}$, with a learning rate decaying from 0.05 to 0.001 (with a constant one the noisy
# gradients keep $q$ jittering around the optimum). Where should it end? Not at the evidence.
# For a Gaussian posterior $\mathcal N(m_N, \Lambda^{-1})$ the best $q$ of the mean-field family
# is (Bishop §10.1.2)
#
# $$\mu^\star = m_N, \qquad s_j^{\star 2} = 1 / \Lambda_{jj}, \qquad
#   \log p(\mathcal D) - \mathrm{ELBO}(q^\star)
#   = \tfrac12 \Big(\sum_j \log \Lambda_{jj} - \log |\Lambda|\Big) \;\ge\; 0. \tag{1.12}$$
#
# A diagonal $q$ cannot represent the posterior's correlation, so the gap
# $\mathrm{KL}(q^\star \,\|\, p(w \mid \mathcal D))$ stays positive (Hadamard's inequality
# $|\Lambda| \le \prod_j \Lambda_{jj}$, with equality only for a diagonal $\Lambda$). In 2-d it is
# $-\tfrac12 \log(1 - \rho^2)$, with $\rho$ the posterior correlation. Note also that
# $s^\star_j$ is the *conditional* standard deviation $1/\sqrt{\Lambda_{jj}}$, smaller than the
# marginal one $\sqrt{(S_N)_{jj}}$: minimising $\mathrm{KL}(q \,\|\, p)$ makes mean-field $q$
# too confident.

# %%
best_mf = ev.elbo(model, mu_mf, torch.diag(s_mf**2)).item()
print(f"mean-field gap: -1/2 log(1 - rho^2) = {-0.5 * math.log(1 - rho**2):.4f}, "
      f"log p(D) - ELBO(q*) = {log_z - best_mf:.4f}")
print(f"s* = {s_mf.tolist()}  vs posterior marginal sds {S_N.diagonal().sqrt().tolist()}")

generator = vnas.setup(2)  # this section's numbers do not depend on how much the cells above sampled
fits = {label: ev.fit_mean_field(model, SIZE["steps"], lr=0.05, lr_end=1e-3, local=local, generator=generator)
        for label, local in [("plain reparam., S=1", False), ("local reparam., S=1", True)]}
plots.plot_elbo_trace({k: f.elbo for k, f in fits.items()}, log_z.item(), best_mf, mode=MODE)
plt.show()
tail = max(1, SIZE["steps"] // 10)
for label, fit in fits.items():
    print(f"[{MODE} mode] {label}: ELBO {fit.elbo[0]:.2f} -> mean of the last {tail} steps "
          f"{fit.elbo[-tail:].mean():.4f} (best mean-field {best_mf:.4f}, log p(D) {log_z:.4f})")

# %% [markdown]
# The ELBO climbs from far below to the best mean-field value and never reaches the evidence:
# the remaining gap is the price of the mean-field family, not of the optimiser. On the way the
# plain estimator's noisier gradients make a jumpier path than the local one's.
#
# ### 3(c) The evidence chooses a model structure
#
# Now the structure varies: polynomial features $\phi(x) = (1, x, \dots, x^d)$ of degree
# $d = 0, \dots, 9$, for 25 noisy points of a cubic on $[-1, 1]$. For each $d$ we compute the
# log evidence (1.8), and, to compare, the error of the posterior mean on the training points and
# on 1000 held-out points. The posterior predictive (Bishop Eqs. 3.58-3.59) is
#
# $$p(y_* \mid x_*, \mathcal D)
#   = \mathcal N\big(y_* \mid \phi(x_*)^\top m_N,\ \sigma^2 + \phi(x_*)^\top S_N \phi(x_*)\big). \tag{1.13}$$
#
# **Hyperparameters.** Here $\alpha = 1$ and $\sigma$ = the true noise level 0.2 are **fixed**,
# the same for every degree. (Below we also try fitting them per degree.)

# %%
generator = vnas.setup(3)
true_coeffs = [0.2, -1.0, 0.3, 1.5]
x3, y3 = ev.sample_poly_data(25, true_coeffs, 0.2, generator)
x3_test, y3_test = ev.sample_poly_data(1000, true_coeffs, 0.2, generator)
selection = ev.select_degree(x3, y3, x3_test, y3_test, range(10), alpha=1.0, sigma=0.2)
plots.plot_degree_selection(selection, mode=MODE)
plt.show()
print(f"[{MODE} mode] true degree 3; highest evidence: degree {selection.best}; "
      f"lowest held-out RMSE: degree {selection.best_held_out}; "
      f"lowest training RMSE: degree {selection.degrees[int(selection.train_rmse.argmin())]}")

# %% [markdown]
# The training error keeps falling, up to small wiggles, as the degree grows (each model contains
# the smaller ones; the prior makes the fit regularised, so not strictly monotone): it always
# asks for a big model. The evidence rises steeply up to the degree that captures the data and
# then falls off slowly, not always monotonically (odd degrees can come close to the cubic, see
# below): each extra coefficient costs an Occam factor. It picks its degree from the training
# data alone, where the held-out curve needed 1000 extra points.
# The fits of a too-simple, the chosen, and a too-flexible model:

# %%
grid = torch.linspace(-1, 1, 200, dtype=torch.float64)
fits3 = {}
for d in sorted({1, selection.best, 9}):
    m3 = ev.LinearModel(ev.poly_features(x3, d), y3, alpha=1.0, sigma=0.2)
    fits3[f"degree {d}, log p(D) = {ev.log_evidence(m3):.1f}"] = ev.predict(m3, ev.poly_features(grid, d))
truth = ev.poly_features(grid, 3) @ torch.tensor(true_coeffs, dtype=torch.float64)
ax = plots.plot_poly_fits(x3, y3, fits3, grid, truth=truth)
ax.set_title(f"posterior predictive mean +- 2 sd [{MODE} mode]", fontsize=10)
plt.show()

# %% [markdown]
# **The evidence scores a structure together with its prior.** Change $\alpha$ and $\sigma$ and
# watch the choice move. A very broad prior (small $\alpha$) pays for the volume it wastes with
# every coefficient, which favours few coefficients; a very narrow one (large $\alpha$) cannot
# afford a large cubic coefficient and favours many small ones (high degrees). An assumed noise
# level that is too small asks for wiggles the data do not have; one too large explains the
# data as noise around a constant.

# %%
data3 = {"x": x3, "y": y3, "x_test": x3_test, "y_test": y3_test}
widgets.explore(plots.plot_degree_selection_at, fixed=data3, log10_alpha=(-4.0, 2.0, 0.1),
                sigma=(0.05, 1.0, 0.01))

# %% [markdown]
# One dataset is an anecdote. Over many datasets from the same cubic, how often does each rule
# pick each degree? We add **type-II maximum likelihood** (MacKay, 1992; Bishop §3.5.2), which
# fits $\alpha$ and $\sigma$ to each degree by maximising its evidence, once with the monomials and
# once with Legendre polynomials $P_0, \dots, P_d$: for each $d$ the same functions, but a
# different prior, since an isotropic prior on the weights of very different features is not
# the same distribution over functions. With
# $\lambda_i$ the eigenvalues of $\sigma^{-2}\Phi^\top\Phi$, the fixed point is
#
# $$\gamma = \sum_i \frac{\lambda_i}{\alpha + \lambda_i}, \qquad
#   \alpha \leftarrow \frac{\gamma}{m_N^\top m_N}, \qquad
#   \sigma^2 \leftarrow \frac{\|y - \Phi m_N\|^2}{N - \gamma}, \tag{1.14}$$
#
# where $\gamma$ counts the well-determined parameters.

# %%
def choices(n_datasets: int) -> dict:
    """How often each rule picks each degree, over fresh datasets from the same cubic."""
    picks = {rule: [] for rule in ("evidence, fixed alpha, sigma", "evidence, type-II ML",
                                   "type-II ML, Legendre", "held-out RMSE", "training RMSE")}
    for _ in range(n_datasets):
        data = (*ev.sample_poly_data(25, true_coeffs, 0.2, generator),
                *ev.sample_poly_data(1000, true_coeffs, 0.2, generator))  # x, y, x_test, y_test
        fixed = ev.select_degree(*data, range(10), alpha=1.0, sigma=0.2)
        tuned = ev.select_degree(*data, range(10), alpha=1.0, sigma=0.2, type2=True)
        legendre = ev.select_degree(*data, range(10), alpha=1.0, sigma=0.2, type2=True,
                                    features=ev.legendre_features)
        picks["evidence, fixed alpha, sigma"].append(fixed.best)
        picks["evidence, type-II ML"].append(tuned.best)
        picks["type-II ML, Legendre"].append(legendre.best)
        picks["held-out RMSE"].append(fixed.best_held_out)
        picks["training RMSE"].append(int(fixed.train_rmse.argmin()))
    return {rule: torch.bincount(torch.tensor(p), minlength=10) for rule, p in picks.items()}


counts = choices(SIZE["datasets"])
print(f"[{MODE} mode] picks per degree over {SIZE['datasets']} datasets (true degree 3)")
print(f"{'degree':>30}: " + " ".join(f"{d:>3}" for d in range(10)))
for rule, c in counts.items():
    print(f"{rule:>30}: " + " ".join(f"{v:>3}" for v in c.tolist()))

# %% [markdown]
# Read the table in quick mode (smoke mode runs three datasets only). In our quick-mode run: with
# the hyperparameters fixed at sensible values, the evidence finds the true degree most of the
# time, about as often as the held-out error, without using the held-out data; the training
# error asks for big models. With type-II ML on the monomials it is far less decisive and often
# prefers high degrees; on the Legendre basis, type-II ML is decisive again.
#
# Our reading: type-II ML fits one $\alpha$ shared by all weights. On $[-1, 1]$ the monomials
# $x^3, x^5, x^7, \dots$ have much the same shape, so a high-degree model can spread the cubic
# over several small coefficients, fit a larger $\alpha$ (a tighter prior), and so pay little
# Occam factor; its predictions are about as good, and the evidence has little to separate.
# Legendre polynomials are nearly orthogonal there, so that escape is closed. The lesson carries
# over to architectures: the evidence compares structures *with their priors*, and a prior that
# does not suit the features (here: one scale for features with very different roles) blurs the
# comparison. This is one reason the later chapters try weight priors that depend on the
# architecture.

# %% [markdown]
# ## 4. Exercises
#
# **(i) The KL between diagonal Gaussians.** Implement (1.9) for
# $q = \mathcal N(\mu_q, \mathrm{diag}(s_q^2))$ and $p = \mathcal N(\mu_p, \mathrm{diag}(s_p^2))$,
# where `s_q`, `s_p` are *standard deviations*; return one number (the sum over dimensions). The
# check compares it with a Monte Carlo estimate of $\mathbb E_q[\log q(w) - \log p(w)]$.

# %%
def gaussian_kl(mu_q, s_q, mu_p, s_p):
    """KL(N(mu_q, diag s_q^2) || N(mu_p, diag s_p^2)), summed over dimensions."""
    ### BEGIN SOLUTION
    log_det = torch.log(s_p / s_q)  # 1/2 (log|Sigma_p| - log|Sigma_q|), per dimension
    trace_and_mean = (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2)
    return (log_det + trace_and_mean - 0.5).sum()
    ### END SOLUTION


# %%
checks.check_gaussian_kl(gaussian_kl)

# %% [markdown]
# **(ii) A reparameterised ELBO estimator.** Implement (1.11) for the linear model: draw
# `n_samples` weights $w_i = \mu + s \odot \epsilon_i$, average $\log p(y \mid w_i)$ (a sum over
# data points of Gaussian log-densities with standard deviation `model.sigma`), and subtract the
# closed-form KL to the prior $\mathcal N(0, \alpha^{-1} I)$ (your `gaussian_kl` will do). The
# check calls it a few hundred times: the average must match the closed-form ELBO within Monte
# Carlo error, and its gradients with respect to $\mu$ and $s$ must be unbiased too.

# %%
def elbo_estimate(model, mu, s, n_samples):
    """Monte Carlo ELBO (1.11) of q = N(mu, diag s^2) for an ev.LinearModel (model.phi, model.y,
    model.alpha, model.sigma)."""
    ### BEGIN SOLUTION
    eps = torch.randn(n_samples, len(mu), dtype=mu.dtype)
    w = mu + s * eps  # differentiable in mu and s: gradients flow through the samples
    f = w @ model.phi.T
    log_norm = -0.5 * math.log(2 * math.pi * model.sigma**2)  # of N(y_n | f_n, sigma^2)
    log_lik = (log_norm - (model.y - f) ** 2 / (2 * model.sigma**2)).sum(-1)  # sum over data points
    expected_ll = log_lik.mean()  # average over the samples
    kl = gaussian_kl(mu, s, torch.zeros_like(mu), torch.full_like(mu, model.alpha**-0.5))
    return expected_ll - kl
    ### END SOLUTION


# %%
checks.check_elbo_estimator(elbo_estimate)

# %% [markdown]
# **(iii) The log evidence in closed form.** The number every ELBO of (ii) stays below. Implement the
# right-hand side of (1.8) for an `ev.LinearModel` (`model.phi` is $\Phi$, $N \times M$; `model.y`,
# `model.alpha`, `model.sigma`):
#
# $$\log p(\mathcal D) = \tfrac{M}{2} \log \alpha - \tfrac{N}{2} \log (2\pi\sigma^2) - E(m_N)
#   - \tfrac12 \log |\Lambda|, \qquad E(m) = \tfrac{1}{2\sigma^2}\|y - \Phi m\|^2 + \tfrac{\alpha}{2} m^\top m,$$
#
# with $\Lambda$ and $m_N$ from (1.7). Work with the $M \times M$ precision $\Lambda$ (the point of this
# form), not the $N \times N$ covariance of $y$. The check compares your value with the $N$-dimensional Gaussian density
# $\log \mathcal N(y \mid 0, \sigma^2 I + \alpha^{-1}\Phi\Phi^\top)$ on four models, one of them with more
# features than data points, and names the term that is off.

# %%
def log_evidence(model):
    """log p(D) of Bayesian linear regression, Eq. (1.8)."""
    ### BEGIN SOLUTION
    precision = model.alpha * torch.eye(model.m, dtype=model.phi.dtype) + model.phi.T @ model.phi / model.sigma**2
    m_n = torch.linalg.solve(precision, model.phi.T @ model.y) / model.sigma**2  # (1.7)
    energy = (model.y - model.phi @ m_n).square().sum() / (2 * model.sigma**2) + model.alpha / 2 * m_n @ m_n
    return (model.m / 2 * math.log(model.alpha) - model.n / 2 * math.log(2 * math.pi * model.sigma**2)
            - energy - torch.logdet(precision) / 2)
    ### END SOLUTION


# %%
checks.check_log_evidence(log_evidence)

# %% [markdown]
# ## Summary
#
# * The evidence $p(\mathcal D \mid A)$ scores a structure by how well its *prior* predicted the
#   data: an automatic Occam's razor, no held-out set needed, but only as good as the prior.
# * For any $q$:
#   $\log p(\mathcal D \mid A) = \mathrm{ELBO}(q) + \mathrm{KL}(q \,\|\, p(w \mid \mathcal D, A))$;
#   we *maximise* the ELBO, and the gap is the KL to the true posterior. Checked here to $\lesssim 10^{-12}$.
# * Reparameterised Monte Carlo makes the ELBO estimable and differentiable; its error falls as
#   $1/\sqrt S$, and the local reparameterisation lowers it.
# * A mean-field $q$ stops short of the evidence whenever the posterior is correlated.
# * With a posterior over architectures, (1.5) is the objective of the chapters to come.
#
# ## References
# * C. M. Bishop (2006). *Pattern Recognition and Machine Learning*, ch. 3 (§3.3-3.5: Bayesian
#   linear regression, the evidence, type-II maximum likelihood) and §10.1.2 (mean-field
#   factorised Gaussians).
# * D. J. C. MacKay (1992). Bayesian interpolation. *Neural Computation* 4(3), 415-447.
# * D. P. Kingma & M. Welling (2014). Auto-encoding variational Bayes. *ICLR*.
# * C. Blundell, J. Cornebise, K. Kavukcuoglu & D. Wierstra (2015). Weight uncertainty in neural
#   networks (Bayes by Backprop). *ICML*.
# * D. P. Kingma, T. Salimans & M. Welling (2015). Variational dropout and the local
#   reparameterization trick. *NeurIPS*.
# * X. Chen, R. Wang, M. Cheng, X. Tang & C.-J. Hsieh (2021). DrNAS: Dirichlet neural
#   architecture search. *ICLR*.
