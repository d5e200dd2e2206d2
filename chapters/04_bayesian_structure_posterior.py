# %% [markdown]
# # 04 · A posterior over the structure: variational architecture search
#
# DARTS (chapter 02) learns one point $\alpha$ per edge and reads the architecture off its softmax. The
# proposal this course grew from replaces that point by a **distribution**: the mixing weights $\theta_e$ of
# every edge $e$ (a point of the simplex over its operations) get a Dirichlet prior and a Dirichlet
# variational posterior,
#
# $$p(\theta_e) = \mathrm{Dir}(c_0 \mathbf 1), \qquad q(\theta_e) = \mathrm{Dir}(\beta_e), \qquad
#   \beta_e = \mathrm{elu}(\alpha_e) + 1 > 0,$$
#
# learned by maximising an evidence lower bound. This chapter derives what the search optimises from
# chapter 01's bound, shows every term of it during a search, checks the method against a model whose
# posterior over structures is **exact**, looks at the posterior over NAS-Bench-201 cells it learns, and
# compares it with DARTS, SNAS, GDAS, DrNAS and two random baselines under one budget, with paired seeds.
#
# ## 1. From the ELBO (1.5) to the search objective
#
# Chapter 01 bounded the evidence of a model with structure $A$ and weights $w$:
# $\log p(\mathcal D) \ge \mathbb E_{q(A)q(w)}[\log p(\mathcal D\mid w, A)] - \mathbb E_{q(A)}[\mathrm{KL}(q(w)\,\|\,p(w\mid A))]
# - \mathrm{KL}(q(A)\,\|\,p(A))$ (1.5). Here $A$ is the set of mixing weights $\theta = (\theta_e)_e$. Step by step:
#
# 1. **Kept exactly:** $q(\theta) = \prod_e \mathrm{Dir}(\beta_e)$ and $p(\theta) = \prod_e \mathrm{Dir}(c_0\mathbf 1)$, so
#    $\mathrm{KL}(q(\theta)\,\|\,p(\theta)) = \sum_e \mathrm{KL}(\mathrm{Dir}(\beta_e)\,\|\,\mathrm{Dir}(c_0\mathbf 1))$ in closed form (3.9).
# 2. **Approximated: point weights, fitted on other data.** $q(w)$ is a point mass at $w$. Its KL to a prior is
#    infinite, so $w$ leaves the bound: it becomes a hyperparameter of the model $p(\mathcal D \mid w, \theta)$, chosen
#    by fitting rather than integrated (empirical Bayes, type II). The bound is now on $\log p(\mathcal D \mid w)$.
#    Bayesian weights come back in chapter 05.
# 3. **Approximated: split data (bilevel).** The weights are fitted on the search-train half (SGD on its
#    cross-entropy plus the L2 term $\frac{\lambda}{2}\lVert w\rVert^2$, the point-estimate stand-in for a Gaussian
#    prior, Eq. (2.8)); the bound is on the evidence of the other half, $\mathcal D_{val}$ with $N$ images, at
#    those weights. The two halves take turns, one step each (DARTS' first-order alternation).
# 4. **Estimated: one reparameterised sample per step.** $\mathbb E_q[\log p]$ is replaced by its value at one
#    $\theta \sim q$ drawn with implicit reparameterisation (chapter 03), an unbiased estimate of it and of its
#    gradient, and on a mini-batch rather than all $N$ images.
# 5. **Rescaled: per datum.** Dividing the negative bound by $N$ does not move its optimum, but it sets the
#    scale Adam's step sees, and makes the likelihood a mean cross-entropy.
# 6. **A KL weight is a temperature.** Multiplying the KL by anything but 1 (the option `kl_scale`) optimises
#    a tempered objective, not the ELBO; this chapter keeps it at 1.
#
# What remains is
#
# $$\log p(\mathcal D_{val} \mid w) \;\ge\; \mathbb E_{q(\theta)}\big[\log p(\mathcal D_{val} \mid w, \theta)\big]
#   \;-\; \sum_{e} \mathrm{KL}\big(\mathrm{Dir}(\beta_e)\,\|\,\mathrm{Dir}(c_0\mathbf 1)\big), \tag{4.1}$$
#
# and the architecture step minimises its negative per datum,
#
# $$\mathcal L(\alpha) = \underbrace{\mathbb E_{q}\big[\mathrm{CE}_{val}(w, \theta)\big]}_{\texttt{nll}}
#   \;+\; \underbrace{\frac{1}{N}\sum_e \mathrm{KL}\big(\mathrm{Dir}(\beta_e)\,\|\,\mathrm{Dir}(c_0\mathbf 1)\big)}_{\texttt{structure\_kl}/N}, \tag{4.2}$$
#
# so that the **per-datum ELBO** that the history records for every epoch is
#
# $$\frac{\mathrm{ELBO}}{N} = -\Big(\texttt{nll} + \frac{\texttt{structure\_kl}}{N}\Big). \tag{4.3}$$
#
# `vnas.objectives.architecture_terms` writes (4.2) term by term for `--method variational`, and nothing
# else: **no L2 on $\alpha$** (the prior is the method's only regulariser). Every other method keeps DARTS'
# $\frac{\lambda_\alpha}{2}\lVert\alpha\rVert^2$, $\lambda_\alpha = 10^{-3}$, as a named term `l2_alpha` (in their code it is
# Adam's weight decay). **Credit where it is due:** DrNAS (Chen et al., ICLR 2021) uses the same Dirichlet
# posterior and the same $\beta = \mathrm{elu}(\alpha)+1$; by default it regularises with that L2 only, and its code
# has an option (`reg_type='kl'`) that adds $\mathrm{KL}(\mathrm{Dir}(\beta_e)\,\|\,\mathrm{Dir}(\mathbf 1))$ per edge. Ours differs in
# exactly three places: the KL is scaled by $1/N$, the ELBO's own weight, where DrNAS multiplies it by a
# tuned constant (`reg_scale`); the prior's concentration $c_0$ is a parameter; and there is no L2 on $\alpha$
# beside the KL. SNAS and GDAS sample from Concrete distributions (chapter 03) with no prior term.

# %%
import copy
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import vnas
from vnas import bridge, config, data, objectives, plots, posteriors, results, search, spaces, sweep

vnas.setup(seed=0)
MODE = vnas.mode()
cifar = data.load_cifar10()
DEVICE = vnas.device()
print(vnas.banner(cifar.describe()))
CHAPTER_START = time.perf_counter()

# %% [markdown]
# **Exercise.** Write the KL term of (4.2): the sum over every edge of every cell type, over $N$.

# %%
def architecture_kl(betas, c0, num_data):
    ### BEGIN SOLUTION
    return sum(posteriors.dirichlet_kl(beta, c0).sum() for beta in betas.values()) / num_data
    ### END SOLUTION


# %%
vnas.checks.check_architecture_kl(architecture_kl)

# %% [markdown]
# How large is the KL against the cross-entropy ($\log 10 \approx 2.3$ at the start)? At initialisation
# $\alpha \approx 0$, so $\beta \approx 1$: with $c_0 = 1$ the KL is zero. It grows as the posterior concentrates,
# and its pull on each image's share of the objective is $1/N$.

# %%
post = posteriors.build_posterior("variational", "nb201", c0=1.0)
print(f"KL at initialisation (c0 = 1): {objectives.structure_kl(post).item():.2e} nats")
with torch.no_grad():
    post.alphas["cell"][:, 3] = 20.0  # a posterior sure of nor_conv_3x3 on every edge
kl_sure = objectives.structure_kl(post).item()
print(f"KL of a posterior concentrated on one op per edge: {kl_sure:.1f} nats, i.e. {kl_sure / 25_000:.4f} per "
      f"image at the published N = 25,000 and {kl_sure / 500:.3f} at this chapter's N = 500")
terms = objectives.architecture_terms(post, nll=torch.tensor(2.3), num_data=500)
print("the terms of (4.2) at N = 500 with an NLL of 2.3:", {k: round(v.item(), 4) for k, v in terms.items()})

# %% [markdown]
# ## 2. The exact bridge: a cell whose posterior over structures is known
#
# No NAS benchmark tells us what the *posterior* over architectures is. So take a model where it can be
# computed exactly (`vnas.bridge`): a linear-Gaussian "cell" with $E = 3$ edges, each reading its own
# input $x_e \sim U(-1, 1)$ and choosing one of $K = 4$ basis functions (orthonormal polynomials); a structure
# $s$ gives $y = \sum_e w_e\, \mathrm{op}_{s_e}(x_e) + \varepsilon$, with $w \sim \mathcal N(0, \alpha^{-1}I)$ and
# $\varepsilon \sim \mathcal N(0, \sigma^2)$. Each structure's evidence $p(\mathcal D\mid s)$ is chapter 01's closed
# form (1.8), and the $K^E = 64$ structures can be enumerated: $p(s \mid \mathcal D) \propto p(\mathcal D \mid s)$, and from
# it every edge's exact marginal $p(\mathrm{op}_e = k \mid \mathcal D)$.
#
# Its **relaxed** counterpart mixes each edge's ops by $\theta_e$, as DARTS does, and integrates the weights
# out exactly:
#
# $$p(\mathcal D \mid \theta) = \mathcal N\big(y;\ 0,\ \sigma^2 I + \alpha^{-1}\Phi(\theta)\Phi(\theta)^\top\big),\qquad
#   \Phi(\theta)_{ne} = \sum_k \theta_{ek}\,\mathrm{op}_k(x_{ne}). \tag{4.4}$$
#
# So the likelihood of the relaxation is exact, and the comparison isolates the two approximations this
# chapter is about: the relaxation (a mixture is not a structure) and the Dirichlet family. The fit uses the
# **same** `vnas.posteriors` "variational" distribution and the same `objectives.architecture_terms` as the
# search, with the NLL of (4.2) being $-\log p(\mathcal D\mid\theta)/N$; DARTS' counterpart maximises
# $\log p(\mathcal D\mid\theta)$ over a softmax point. The relaxed model's own evidence
# $\log p(\mathcal D) = \log\int p(\mathcal D\mid\theta)p(\theta)\,d\theta$ comes from a large importance-sampling estimate,
# so we can watch the ELBO climb towards it.

# %%
gen = torch.Generator().manual_seed(0)
n_bridge = 15  # few data: the exact posterior is still unsure, which is where the approximations differ
steps_bridge = 100 if MODE == "smoke" else 600
problem = bridge.sample_problem(n_bridge, generator=gen)
run = bridge.run_bridge(problem, c0=1.0, steps=steps_bridge, generator=gen)
logz = bridge.log_evidence_is(problem, c0=1.0, proposal=run.variational.posterior,
                              samples=5_000 if MODE == "smoke" else 100_000, generator=gen)
final_elbo = bridge.elbo(run.variational.posterior, problem, samples=2_000 if MODE == "smoke" else 20_000,
                         generator=gen)
ops = list(problem.ops)
print(f"true structure: {[ops[k] for k in problem.structure.tolist()]}; exact MAP: "
      f"{[ops[k] for k in run.exact.map.tolist()]}")
print(f"relaxed log evidence (importance sampling): {logz.value:.2f} ± {logz.se:.2f}; ELBO of the fitted q: "
      f"{final_elbo.value:.2f} ± {final_elbo.se:.2f}: a gap of {logz.value - final_elbo.value:.2f} nats, the "
      f"KL from q to the relaxed posterior")
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
plots.plot_marginals(run.exact.marginals, run.q_argmax, run.darts_weights, ops, ax=axes[0])
axes[0].set_title(f"N = {n_bridge}: exact marginals vs q and DARTS")
plots.plot_bridge_elbo(run.variational, logz, ax=axes[1])
plt.tight_layout()
plt.show()
print(f"TV distance to the exact marginals (mean over edges): q's argmax probabilities {run.tv_q:.3f}, "
      f"DARTS' one-hot {run.tv_darts:.3f}")

# %% [markdown]
# **Exercise.** The bridge's objective is (4.2) with a likelihood that needs no mini-batch. Given the total
# log-likelihood $\log p(\mathcal D\mid\theta_s)$ of the data set for $S$ samples $\theta_s \sim q$, the KL of every
# edge and $N$, return the per-datum objective that the search minimises.

# %%
def bridge_objective(log_lik_samples, kl_per_edge, num_data):
    ### BEGIN SOLUTION
    return -log_lik_samples.mean() / num_data + kl_per_edge.sum() / num_data
    ### END SOLUTION


# %%
vnas.checks.check_bridge_elbo(bridge_objective)

# %% [markdown]
# **Where the relaxation is wrong.** Let one edge's true feature be half one op and half another: a mixture
# fits it better than any single op, so the relaxed model (DARTS and $q$ alike) sits in the middle of the
# simplex, while the exact posterior over *structures* has to choose one op.

# %%
mix = bridge.sample_problem(80, generator=torch.Generator().manual_seed(1), mixture=(0, 0, 1))
mix_run = bridge.run_bridge(mix, c0=1.0, steps=steps_bridge, generator=torch.Generator().manual_seed(1))
plots.plot_marginals(mix_run.exact.marginals, mix_run.q_argmax, mix_run.darts_weights, list(mix.ops))
plt.title(f"edge 0 is truly 0.5 {mix.ops[0]} + 0.5 {mix.ops[1]} (N = {mix.n})")
plt.show()
print(f"edge 0: exact p({mix.ops[0]}) = {mix_run.exact.marginals[0, 0]:.2f}, p({mix.ops[1]}) = "
      f"{mix_run.exact.marginals[0, 1]:.2f}; DARTS' weights {mix_run.darts_weights[0, 0]:.2f} / "
      f"{mix_run.darts_weights[0, 1]:.2f}; q's argmax probabilities {mix_run.q_argmax[0, 0]:.2f} / "
      f"{mix_run.q_argmax[0, 1]:.2f}; TV on that edge "
      f"{bridge.total_variation(mix_run.exact.marginals, mix_run.q_argmax)[0]:.2f}")

# %% [markdown]
# **Over many data sets, with $N$ and $c_0$.** For each $N$ the same random data sets (a random true structure
# each) go through the exact posterior, $q$ with two priors, and DARTS. Two numbers: the total-variation
# distance between the exact marginals and $q$'s argmax probabilities (DARTS: its one-hot), and how often the
# derived structure (the argmax of each edge's mean) is the exact MAP structure, with 95% intervals.

# %%
compare_rows = (bridge.compare(ns=(10, 40), c0s=(1.0,), datasets=4, steps=100) if MODE == "smoke"
                else bridge.compare())
plots.plot_compare(compare_rows, ax=plt.subplots(1, 2, figsize=(12, 3.4))[1])
plt.show()
for r in compare_rows:
    print(f"N = {r['n']:4d}, c0 = {r['c0']:.1f}: TV q {r['tv_q']:.3f} [{r['tv_q_low']:.3f}, {r['tv_q_high']:.3f}], "
          f"DARTS {r['tv_darts']:.3f}; MAP agreement q {r['map_agreement']:.2f} "
          f"[{r['map_agreement_low']:.2f}, {r['map_agreement_high']:.2f}], DARTS {r['darts_map_agreement']:.2f} "
          f"({r['datasets']} data sets)")
small, large = compare_rows[0], compare_rows[-1]
print(f"\nReading ({MODE} mode): from N = {small['n']} to N = {large['n']} the TV distance of q falls from "
      f"{small['tv_q']:.3f} to {large['tv_q']:.3f} and its MAP agreement goes from {small['map_agreement']:.2f} to "
      f"{large['map_agreement']:.2f}; DARTS' one-hot is "
      f"{'further from' if np.mean([r['tv_darts'] - r['tv_q'] for r in compare_rows]) > 0 else 'no further from'}"
      f" the exact marginals on average ({np.mean([r['tv_darts'] for r in compare_rows]):.3f} against "
      f"{np.mean([r['tv_q'] for r in compare_rows]):.3f}), because a point cannot express the uncertainty that "
      f"small data leave.")

# %% [markdown]
# ## 3. One search, with every term of its ELBO
#
# The quick NB201 protocol of this chapter is read from `configs/sweeps/nb201_comparison.toml` (section 5
# says how it was chosen and what departs from the published protocol). One search with the variational
# method, then what its history holds: per epoch, the means of the per-step values that were optimised.

# %%
SWEEPS = config.CONFIG_DIR / "sweeps"
COMPARISON = sweep.load_sweep_config(SWEEPS / "nb201_comparison.toml")
protocol = copy.deepcopy(COMPARISON)
if MODE == "smoke":  # CI: the smoke sizes of configs/search_nb201.toml, with the protocol's own settings
    protocol["base"] = {k: v for k, v in protocol["base"].items() if k in ("image_size", "arch_lr")} | {
        "hessian_every": 1}
protocol["mode"] = MODE
nb_cfg = sweep.search_config(protocol, {}, "variational", seed=0)
print(nb_cfg)
var_search = search.Search(nb_cfg, dataset=cifar, device=DEVICE)
var_history = var_search.fit()
N_VAL = len(var_search.val_idx)
last = var_history[-1]["architecture"]
print(f"last epoch: nll {last['nll']:.3f}, structure KL {last['structure_kl']:.2f} nats "
      f"(/N = {last['structure_kl'] / N_VAL:.4f}), per-datum ELBO {last['elbo']:.3f}, N = {N_VAL}")

# %%
epochs = [h["epoch"] for h in var_history]
fig, axes = plt.subplots(1, 3, figsize=(16, 3.4))
axes[0].plot(epochs, [h["architecture"]["nll"] for h in var_history], "o-", label="nll (validation, at θ ~ q)")
axes[0].plot(epochs, [-h["architecture"]["elbo"] for h in var_history], "s--", label="-ELBO / N, Eq. (4.3)")
axes[0].set_xlabel("epoch")
axes[0].legend(fontsize=8)
axes[0].set_title("the objective (4.2), epoch means")
kl_edges = np.array([h["structure_kl_edge"]["cell"] for h in var_history])
axes[1].plot(epochs, kl_edges, color="0.6", lw=0.8)
axes[1].plot(epochs, kl_edges.sum(1), "k-", lw=2, label="total")
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("KL (nats)")
axes[1].set_title("structure KL: per edge (grey) and total")
axes[1].legend(fontsize=8)
axes[2].plot(epochs, kl_edges.sum(1) / N_VAL, "k-", label="KL / N")
axes[2].plot(epochs, [h["architecture"]["nll"] - var_history[0]["architecture"]["nll"] for h in var_history], "b-",
             label="nll - its first-epoch value")
axes[2].set_xlabel("epoch")
axes[2].set_title("what each term moves, per datum")
axes[2].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Two senses of "concentrated".** A Dirichlet can be sure in two different ways, and they must not be mixed
# up. Its **total concentration** $\beta_{e,0} = \sum_o\beta_{e,o}$ says how tightly $\theta_e$ sits around its mean
# (every weight's variance shrinks like $1/\beta_{e,0}$); its **mean** $\beta_e/\beta_{e,0}$ can still be the centre of
# the simplex. A mean near a vertex (the largest mean weight near 1, the categorical entropy of the mean near 0)
# is what decides the edge. The first says "sure of the mixture", the second "sure of the op".

# %%
conc = np.array([h["edges"]["cell"]["concentration"] for h in var_history])
means = np.array([h["edges"]["cell"]["mean"] for h in var_history])
fig, axes = plt.subplots(1, 3, figsize=(16, 3.3))
axes[0].plot(epochs, conc, color="0.6", lw=0.8)
axes[0].plot(epochs, conc.mean(1), "k-", lw=2)
axes[0].axhline(5, color="r", ls=":", label="start: β = 1 on 5 ops")
axes[0].set_title("total concentration β₀ per edge")
axes[0].legend(fontsize=8)
axes[1].plot(epochs, means.max(-1), color="0.6", lw=0.8)
axes[1].plot(epochs, means.max(-1).mean(1), "k-", lw=2)
axes[1].axhline(0.2, color="r", ls=":", label="uniform: 0.2")
axes[1].set_title("largest mean op weight per edge")
axes[1].legend(fontsize=8)
axes[2].plot(epochs, [h["score"]["cifar10"] for h in var_history], "o-")
axes[2].set_xlabel("epoch")
axes[2].set_title("NB201 CIFAR-10 accuracy of the derived cell (%)")
plt.tight_layout()
plt.show()
plots.plot_weight_trajectories(var_history, spaces.nb201.PRIMITIVES, "cell", ncols=6)
plt.show()
print(f"start: β₀ = 5 and largest mean weight 0.20 on every edge; end ({MODE} mode): β₀ from {conc[-1].min():.1f} to "
      f"{conc[-1].max():.1f}, largest mean weight from {means[-1].max(-1).min():.2f} to {means[-1].max(-1).max():.2f}")

# %% [markdown]
# **Exercise.** Derive the NB201 cell from the posterior's concentrations: the argmax op of every edge under
# the posterior mean $\beta_e/\beta_{e,0}$ (in NB201, `none` is an ordinary choice).

# %%
def genotype_from_posterior(beta):
    ### BEGIN SOLUTION
    mean = beta / beta.sum(-1, keepdim=True)
    ops = [spaces.nb201.PRIMITIVES[k] for k in mean.argmax(-1).tolist()]
    return spaces.nb201.Genotype.from_ops(ops)
    ### END SOLUTION


# %%
vnas.checks.check_genotype_from_posterior(genotype_from_posterior)

# %%
print(genotype_from_posterior(var_search.posterior.concentration("cell").detach()))

# %% [markdown]
# ## 4. The posterior over NB201 cells
#
# A distribution over $\theta$ is a distribution over cells: draw $\theta \sim q$ and keep each edge's argmax op.
# NB201 knows the accuracy of every one of its 15,625 cells, so we can look at the whole posterior, not
# only its mean's cell, and set it beside the table's distribution over *all* cells (what a random cell
# gets).

# %%
S = 50 if MODE == "smoke" else 500
sampled = var_search.sample_genotypes(S)
sampled_acc = np.array([var_search.space.score(g)["cifar10"] for g in sampled])
derived = var_search.genotype()
derived_acc = var_search.space.score(derived)["cifar10"]
table = spaces.nb201_table.load_table()
all_acc = np.array([v[0] for v in table.values()])
fig, ax = plt.subplots(figsize=(8, 3.4))
bins = np.linspace(10, 95, 60)
ax.hist(all_acc, bins=bins, density=True, alpha=0.4, color="0.5", label=f"all {len(all_acc):,} cells (random cell)")
ax.hist(sampled_acc, bins=bins, density=True, alpha=0.6, label=f"{S} cells sampled from q")
ax.axvline(derived_acc, color="k", ls="--", label=f"derived cell {derived_acc:.2f}")
ax.set_xlabel("NB201 CIFAR-10 test accuracy (%)")
ax.legend(fontsize=8)
plt.show()
better = (all_acc < np.mean(sampled_acc)).mean()
print(f"posterior-expected accuracy {np.mean(sampled_acc):.2f}% (median {np.median(sampled_acc):.2f}), derived cell "
      f"{derived_acc:.2f}%, random cell: mean {all_acc.mean():.2f}%, median {np.median(all_acc):.2f}%; "
      f"{len({str(g) for g in sampled})} distinct cells among {S} draws; the posterior's mean accuracy beats "
      f"{100 * better:.0f}% of all cells ({MODE} mode)")

# %% [markdown]
# **Does the posterior's uncertainty follow the table's real ambiguity?** Per edge: how sure $q$ is of the
# op (the entropy of its argmax probabilities), and how much the choice matters in the table (the spread of
# the accuracy over the 5 ops on that edge, the other edges as in the derived cell).

# %%
p_argmax = var_search.posterior.argmax_probabilities(200 if MODE == "smoke" else 4000)["cell"].cpu().numpy()
ops_of = list(derived.ops())
stakes = []
for e in range(len(ops_of)):
    variants = [var_search.space.score(spaces.nb201.Genotype.from_ops(ops_of[:e] + [op] + ops_of[e + 1:]))["cifar10"]
                for op in spaces.nb201.PRIMITIVES]
    stakes.append(np.ptp(variants))
entropy = -(p_argmax * np.log(np.clip(p_argmax, 1e-12, None))).sum(-1)
fig, axes = plt.subplots(1, 2, figsize=(13, 3.3))
im = axes[0].imshow(p_argmax, cmap="viridis", vmin=0, vmax=1)
axes[0].set_xticks(range(5), spaces.nb201.PRIMITIVES, rotation=20, fontsize=8)
axes[0].set_yticks(range(6), [f"edge {i}~{j}" for i, j in spaces.nb201.EDGES])
axes[0].set_title("P_q(op is the argmax of θ_e)")
plt.colorbar(im, ax=axes[0])
axes[1].scatter(stakes, entropy)
for e, (x, y) in enumerate(zip(stakes, entropy, strict=True)):
    axes[1].annotate(str(spaces.nb201.EDGES[e]), (x, y), fontsize=8)
axes[1].set_xlabel("table: accuracy range over the 5 ops on the edge (points)")
axes[1].set_ylabel("q: entropy of the argmax probabilities (nats)")
plt.tight_layout()
plt.show()
rank = np.corrcoef(np.argsort(np.argsort(stakes)), np.argsort(np.argsort(entropy)))[0, 1]
verdict = ("q is less sure where the choice matters less, significant at the one-sided 5% level (critical value "
           "-0.829 for 6 edges)" if rank <= -0.829 else
           "in the expected direction, but not significant with 6 edges (one-sided 5% critical value -0.829)"
           if rank < 0 else "no sign that q's uncertainty follows the table's stakes")
print(f"Spearman correlation between the stakes of an edge and q's uncertainty on it: {rank:+.3f}: {verdict}. "
      f"One search, {MODE} mode.")

# %% [markdown]
# ## 5. A quick protocol in which the posterior moves
#
# At the published architecture learning rate (Adam, $3\cdot10^{-4}$) and a few hundred steps, $\alpha$ moves by a few
# hundredths: the posterior does not leave its start (the first rows of the table below), and a comparison
# of methods would compare their initialisations. The quick protocol was therefore chosen by a sweep,
# kept as a results file: the architecture learning rate and the number of epochs, for the variational
# method, two seeds each (`python -m vnas sweep configs/sweeps/nb201_protocol.toml --jobs 2`). The departures
# from the published protocol (NB201/DrNAS: $C=16$, $N=5$ cells per stage, 100 epochs, 25,000 + 25,000 images of
# $32\times32$, Adam $3\cdot10^{-4}$) are all in the config files: $C=8$, one cell per stage, 100 images per class
# (500 + 500), images averaged down to $16\times16$ (the resolution of NB201's ImageNet16), and the learning
# rate and epochs below.

# %%
proto = results.load_sweep("nb201_protocol")
if proto is None:
    print(results.missing("nb201_protocol"))
else:
    print(proto.describe())
    rows = proto.results["summary"]
    print(f"\n{'arch_lr':>8s} {'epochs':>6s} {'steps':>6s} {'max mean w':>10s} {'entropy':>8s} {'drift':>6s} "
          f"{'ELBO/N':>7s} {'derived %':>14s} {'E_q acc %':>9s}")
    for r in rows:
        m = r["movement"]["cell"]
        runs_ = [x for x in proto.results["runs"] if x["point"] == r["point"]]
        steps = sum(h["steps"] for h in runs_[0]["history"])
        elbo = np.mean([x["history"][-1]["architecture"]["elbo"] for x in runs_])
        print(f"{r['arch_lr']:8.0e} {r['epochs']:6d} {steps:6d} {m['max_weight_end']:10.2f} {m['entropy_end']:8.2f} "
              f"{m['drift_last_quarter']:6.3f} {elbo:7.3f} {r['score_mean']:7.2f} ± {r['score_ci95']:4.1f} "
              f"{r['expected_score']:9.2f}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.3))
    for ep in sorted({r["epochs"] for r in rows}):
        sel = [r for r in rows if r["epochs"] == ep]
        axes[0].plot([r["arch_lr"] for r in sel], [r["movement"]["cell"]["max_weight_end"] for r in sel], "o-",
                     label=f"{ep} epochs")
        axes[1].plot([r["arch_lr"] for r in sel], [r["movement"]["cell"]["drift_last_quarter"] for r in sel], "o-",
                     label=f"{ep} epochs")
    for ax, title in zip(axes, ["largest mean op weight at the end (uniform 0.2)",
                                "drift over the last quarter of the epochs (TV)"], strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("architecture learning rate")
        ax.set_title(title)
        ax.legend(fontsize=8)
    plt.show()
    chosen = COMPARISON["base"]
    pick = [r for r in rows if r["arch_lr"] == chosen["arch_lr"]]
    by_ep = {r["epochs"]: r["movement"]["cell"] for r in pick}
    published = min(rows, key=lambda r: r["arch_lr"])
    if len(by_ep) >= 2:
        e1, e2 = sorted(by_ep)[:2]
        rising = by_ep[e2]["max_weight_end"] > by_ep[e1]["max_weight_end"] + 0.02
        print(f"\nThe chosen protocol: arch_lr {chosen['arch_lr']:g}, {chosen['epochs']} epochs. At the published "
              f"rate {published['arch_lr']:g} the largest mean weight ends at "
              f"{published['movement']['cell']['max_weight_end']:.2f} (uniform: 0.20): nothing moves. At the "
              f"chosen rate it ends at {by_ep[e1]['max_weight_end']:.2f} after {e1} epochs and "
              f"{by_ep[e2]['max_weight_end']:.2f} after {e2}, and the entropy of the mean per edge falls from "
              f"{by_ep[e1]['entropy_start']:.2f} nats (uniform) to {by_ep[e1]['entropy_end']:.2f} and "
              f"{by_ep[e2]['entropy_end']:.2f}; over the last quarter of the {e2}-epoch runs the "
              f"mean still moves by {by_ep[e2]['drift_last_quarter']:.3f} in total variation, so the end state "
              f"{'has stopped changing (drift < 0.02)' if by_ep[e2]['drift_last_quarter'] < 0.02 else 'is still moving'}"
              f"{' and still concentrating with more steps: this budget does not reach the optimum' if rising else ''}"
              f". The comparison below uses {chosen['epochs']} epochs because a chapter cannot afford more.")

# %% [markdown]
# ## 6. The prior's concentration $c_0$
#
# $c_0 < 1$ puts the prior's mass in the corners of the simplex (sparse, decided edges); $c_0 = 1$ is flat;
# $c_0 > 1$ pulls towards the centre (every op mixed). Through the KL its pull is $1/N$ per image. Three runs at
# the protocol, the same seed (`sweep.run_sweep` runs them side by side, one core each).

# %%
prior_cfg = dict(protocol, methods=["variational"], seeds=1,
                 grid={"posterior.c0": [0.5] if MODE == "smoke" else [0.2, 1.0, 5.0]})
with tempfile.TemporaryDirectory() as tmp:
    prior_found = sweep.run_sweep(prior_cfg, Path(tmp), jobs=1 if MODE == "smoke" else 2, log=None)
fig, ax = plt.subplots(figsize=(6, 3.3))
for rec in prior_found["runs"]:
    c0 = prior_found["points"][rec["point"]]["posterior.c0"]
    h = rec["history"]
    ax.plot([x["epoch"] for x in h], [np.max(x["edges"]["cell"]["mean"], -1).mean() for x in h], "o-",
            label=f"c0 = {c0}")
    kl = h[-1]["architecture"]["structure_kl"]
    print(f"c0 = {c0:4.1f}: largest mean weight {np.max(h[-1]['edges']['cell']['mean'], -1).mean():.2f}, "
          f"mean β₀ {np.mean(h[-1]['edges']['cell']['concentration']):7.2f}, KL {kl:6.2f} nats, cell "
          f"{rec['genotype']} -> {rec['score']['cifar10']:.2f}% ({MODE} mode, one seed)")
ax.set_xlabel("epoch")
ax.set_ylabel("largest mean op weight (mean over edges)")
ax.legend()
plt.show()

# %% [markdown]
# ## 7. Seven methods, paired seeds, one budget (NAS-Bench-201)
#
# Every method runs the same protocol with the same seeds: seed $k$ gives every method the same subset, the
# same split and the same weight initialisation; only the distribution over the architecture differs. The
# baselines: `random` (one cell drawn uniformly; nothing is searched) and `random_ws` (random search with
# weight sharing: the supernet is trained on uniformly drawn cells and the best of 10 fresh random cells on
# the validation half is kept, Li & Talwalkar 2019). We report the NB201 CIFAR-10 test accuracy (200-epoch
# training, mean over the benchmark's seeds) of each derived cell as a mean with a 95% Student-t interval.

# %%
live = dict(protocol, methods=COMPARISON["methods"], seeds=3)
if MODE == "smoke":  # CI proves that the code runs: three methods, one seed
    live.update(methods=["darts", "variational", "random_ws"], seeds=1)
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    live_found = sweep.run_sweep(live, Path(tmp), jobs=1 if MODE == "smoke" else 2, log=None)
live_minutes = (time.perf_counter() - start) / 60
print(f"{len(live_found['runs'])} searches in {live_minutes:.1f} min ({MODE} mode, {vnas.config.hardware()})")
print(sweep.format_summary(live_found))

# %%
PUBLISHED = {  # NB201 CIFAR-10 test accuracy of the published searches (full protocols)
    "darts": "54.30 (DARTS 2nd order, 50-epoch search; Dong & Yang 2020)",
    "snas": "92.77 ± 0.83 (reported in later comparisons)",
    "gdas": "93.61 ± 0.09 (Dong & Yang 2020)",
    "drnas": "94.36 ± 0.00 (Chen et al. 2021)",
    "variational": "- (this course's method)",
    "random_ws": "87.66 ± 1.69 (RSPS, random search with parameter sharing; Dong & Yang 2020)",
    "random": f"{all_acc.mean():.2f} mean, {np.median(all_acc):.2f} median (the table itself)",
}
loaded = results.load_sweep("nb201_comparison")
sources = {f"live, {live['seeds']} seed(s)": live_found}
if loaded is not None:
    print(loaded.describe())
    sources[f"data/results, {loaded.results['summary'][0]['seeds'][-1] + 1} seeds"] = loaded.results
else:
    print(results.missing("nb201_comparison"))
for name, found in sources.items():
    print(f"\n{name}: {'method':12s} {'derived cell (mean ± 95% CI)':>30s} {'E_q accuracy':>13s}   published")
    for r in found["summary"]:
        ci = f"{r['score_ci95']:5.2f}" if np.isfinite(r["score_ci95"]) else "  n/a"
        print(f"{'':{len(name) + 1}s} {r['method']:12s} {r['score_mean']:22.2f} ± {ci} "
              f"{r.get('expected_score', float('nan')):13.2f}   {PUBLISHED[r['method']]}")
print(f"{'optimum':12s} {spaces.nb201_table.table_best()[1]['cifar10']:.2f}")

# %%
fig, axes = plt.subplots(1, len(sources), figsize=(7 * len(sources), 3.6), squeeze=False)
for ax, (name, found) in zip(axes[0], sources.items(), strict=True):
    methods = [r["method"] for r in found["summary"]]
    parts = ax.violinplot([all_acc], positions=[-1], showextrema=False, widths=0.8)
    parts["bodies"][0].set_color("0.7")
    for i, r in enumerate(found["summary"]):
        ax.scatter([i] * len(r["scores"]), r["scores"], color="black", s=12, zorder=3)
        ax.errorbar(i + 0.2, r["score_mean"], yerr=np.nan_to_num(r["score_ci95"]), fmt="o", color="tab:blue")
    ax.axhline(spaces.nb201_table.table_best()[1]["cifar10"], color="green", ls="--", lw=0.8, label="best cell")
    ax.axhline(np.median(all_acc), color="0.4", ls=":", lw=0.8, label="median random cell")
    ax.set_xticks([-1, *range(len(methods))], ["all cells", *methods], rotation=20)
    ax.set_ylim(max(10, min(all_acc.min(), 40)), 95)
    ax.set_ylabel("NB201 CIFAR-10 test accuracy (%)")
    ax.set_title(f"{name}; dots: seeds, bars: 95% CI")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Paired differences.** With paired seeds the right comparison is per seed: each method's accuracy minus
# the `random_ws` baseline's on the same seed, with a 95% interval over seeds. An interval that contains 0 is
# no evidence of a difference.

# %%
best_source = list(sources.values())[-1]
by_method = {r["method"]: np.array(r["scores"]) for r in best_source["summary"]}
baselines = [b for b in ("random_ws", "random") if b in by_method]
clear = {b: [] for b in baselines}
for method, accs in by_method.items():
    for b in baselines:
        if method in baselines:
            continue
        mean, half = sweep.mean_interval(accs - by_method[b])
        verdict = ("n/a (one seed)" if not np.isfinite(half) else
                   "better" if mean - half > 0 else "worse" if mean + half < 0 else "not distinguishable")
        if verdict == "better":
            clear[b].append(method)
        print(f"{method:12s} - {b:9s}: {mean:+6.2f} ± {half:5.2f} points -> {verdict}")
name = list(sources)[-1]
print(f"\nReading ({name}, {MODE} mode): "
      + " ".join(f"{', '.join(ms)} beat{'s' if len(ms) == 1 else ''} `{b}` on paired seeds." if ms else
                 f"No method beats `{b}` by more than the seeds' spread." for b, ms in clear.items())
      + " This is one proxy budget (section 5: the posteriors are still moving when it ends); a ranking at this "
        "size is not evidence about the ranking at full size.")

# %% [markdown]
# **Collapse diagnostics.** DARTS' failure on NB201 (54.30%: skip connections everywhere) comes with two
# signs: the derived cell fills with parameter-free ops, and the validation loss becomes sharp in $\alpha$, i.e.
# the dominant eigenvalue of $\nabla^2_\alpha\mathcal L_{val}$ grows (Zela et al., ICLR 2020). Both are recorded per
# epoch (the eigenvalue every few epochs, by power iteration on Hessian-vector products at the posterior
# mean, over one validation batch).

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.4))
for method in [m for m in by_method if posteriors.get_method(m).trained]:
    recs = [r for r in best_source["runs"] if r["method"] == method]
    share = np.mean([[h["parameter_free_share"]["cell"] for h in r["history"]] for r in recs], 0)
    axes[0].plot(range(1, len(share) + 1), share, label=method)
    eig = [(h["epoch"], h["hessian_eigenvalue"]) for h in recs[0]["history"] if "hessian_eigenvalue" in h]
    if eig:
        vals = np.mean([[h["hessian_eigenvalue"] for h in r["history"] if "hessian_eigenvalue" in h] for r in recs],
                       0)
        axes[1].plot([e for e, _ in eig], vals, "o-", label=method)
axes[0].set_xlabel("epoch")
axes[0].set_title("share of parameter-free ops in the derived cell (mean over seeds)")
axes[1].set_xlabel("epoch")
axes[1].set_title("dominant Hessian eigenvalue of L_val in α (mean over seeds)")
for ax in axes:
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
rows_ = {r["method"]: r for r in best_source["summary"]}
sharp = {m: r["hessian_eigenvalue"] for m, r in rows_.items() if "hessian_eigenvalue" in r}
free = {m: r["parameter_free_share"]["cell"] for m, r in rows_.items() if "parameter_free_share" in r}
if sharp:
    top = max(sharp, key=sharp.get)
    others = np.median([v for m, v in sharp.items() if m != top]) if len(sharp) > 1 else float("nan")
    print(f"last epoch ({name}): dominant eigenvalue " + ", ".join(f"{m} {v:.3g}" for m, v in sharp.items())
          + (f"; the largest is {top}'s, {sharp[top] / others:.0f} times the median of the others" if others > 0
             else f"; the largest is {top}'s") + ". Parameter-free "
          "share of the derived cell: " + ", ".join(f"{m} {v:.2f}" for m, v in free.items())
          + f" (an all-skip collapse would be 1.00; {MODE} mode).")

# %% [markdown]
# ## 8. Longer runs, from `data/results/`
#
# Two runs are longer than this chapter can afford; they are loaded, with where they come from, when present.
# **The variational search in the DARTS space** (the CIFAR-10 proxy of chapter 02, the protocol's learning
# rate), and **a long DARTS run on NB201** at this chapter's quick size, to see whether the collapse shows
# up when DARTS gets four times the steps.

# %%
darts_var = results.load_sweep("darts_variational")
if darts_var is None:
    print(results.missing("darts_variational"))
else:
    print(darts_var.describe())
    rec = darts_var.results["runs"][0]
    cell = spaces.load_genotype(rec["genotype"])
    print(cell)
    fig, axes = plt.subplots(1, 3, figsize=(18, 3.2))
    plots.plot_cell(cell, "normal", ax=axes[0])
    plots.plot_cell(cell, "reduce", ax=axes[1])
    plots.plot_edge_statistic(rec["history"], "concentration", cell_type="normal", ax=axes[2])
    axes[2].set_title("normal cell: total concentration β₀ per edge")
    plt.show()
    mv = sweep.movement(rec)
    print(f"normal cell: largest mean weight {mv['normal']['max_weight_start']:.3f} -> "
          f"{mv['normal']['max_weight_end']:.3f}, drift over the last quarter {mv['normal']['drift_last_quarter']:.3f}; "
          f"parameter-free share of the derived cell {rec['history'][-1]['parameter_free_share']}")

# %%
long = results.load_sweep("nb201_darts_long")
if long is None:
    print(results.missing("nb201_darts_long"))
else:
    print(long.describe())
    fig, axes = plt.subplots(1, 3, figsize=(17, 3.3))
    for rec in long.results["runs"]:
        h = rec["history"]
        ep = [x["epoch"] for x in h]
        axes[0].plot(ep, [x["score"]["cifar10"] for x in h], label=f"seed {rec['seed']}")
        axes[1].plot(ep, [x["parameter_free_share"]["cell"] for x in h], label=f"seed {rec['seed']}")
        eig = [(x["epoch"], x["hessian_eigenvalue"]) for x in h if "hessian_eigenvalue" in x]
        axes[2].plot(*zip(*eig, strict=True), "o-", label=f"seed {rec['seed']}")
    for ax, title in zip(axes, ["NB201 accuracy of the derived cell (%)", "parameter-free share of the cell",
                                "dominant Hessian eigenvalue"], strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=8)
    plt.show()
    ends = [r["history"][-1] for r in long.results["runs"]]
    share_end = np.mean([x["parameter_free_share"]["cell"] for x in ends])
    print(f"after {ends[0]['epoch']} epochs: parameter-free share {share_end:.2f}, accuracy "
          f"{np.mean([x['score']['cifar10'] for x in ends]):.2f}% (mean over {len(ends)} seeds): "
          f"{'the collapse shows' if share_end > 0.5 else 'no collapse at this size and length'}.")

# %%
print(f"chapter 04 ran in {(time.perf_counter() - CHAPTER_START) / 60:.1f} min ({MODE} mode on "
      f"{vnas.config.hardware()})")
