# %% [markdown]
# # 07 · Adversarial robustness and calibration of what each method finds
#
# The course's founding proposal ends with an experiment: compare the **adversarial robustness** of the networks
# that each NAS method finds, and see whether a posterior over structure and weights makes them more robust. This
# chapter builds the attacks from their definitions (FGSM, PGD, and EOT-PGD for models that sample), checks that
# each attack does what it claims (an attack that silently fails makes every model look robust), and then
# compares, with paired seeds and intervals, the cells found by DARTS, DrNAS and the variational posterior of
# chapter 04, the joint Bayesian network of chapter 05, a random cell, NB201's hand-designed ResNet cell, and two
# Bayesian model averages: over cells drawn from $q(\theta)$, and over weights drawn from $q(w)$.
#
# The honest frame first: robustness to small perturbations depends strongly on how well and how long a network
# is trained. A comparison means something only between networks trained under the same budget, and the
# published numbers come from 200-epoch trainings that two CPU cores cannot repeat. What this chapter runs live
# is a slice; the full comparison is a results file made by `python -m vnas sweep`, loaded and labelled.

# %%
import math
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import vnas
from vnas import attacks, config, data, plots, results, robustness, sweep, train

vnas.setup(seed=0)
MODE = vnas.mode()
cifar = data.load_cifar10()
DEVICE = vnas.device()
print(vnas.banner(cifar.describe()))
CHAPTER_START = time.perf_counter()

# %% [markdown]
# ## 1. The threat model
#
# A classifier $p(y \mid x)$ takes pixels $x \in [0, 1]^d$ (vnas networks normalise inside their first module, so
# that an attack works on the pixels a camera would record). An adversary may move $x$ anywhere in the ball
#
# $$\mathcal B_p(x, \varepsilon) = \{x' : \|x' - x\|_p \le \varepsilon\} \cap [0, 1]^d, \qquad
#   x^\star = \arg\max_{x' \in \mathcal B_p(x, \varepsilon)} L(x', y), \quad L(x', y) = -\log p(y \mid x'), \tag{7.1}$$
#
# and the **robust accuracy** at $\varepsilon$ is the accuracy on $x^\star$. For CIFAR-10 the usual budgets are
# $\varepsilon = 8/255$ in $L_\infty$ (no pixel moves by more than 8 grey levels) and $\varepsilon = 0.5$ in $L_2$;
# networks trained without any defence are usually measured at $1/255$ and $2/255$ as well, because at $8/255$ they
# are at or near 0 (Madry et al., ICLR 2018). Nobody can compute $x^\star$ exactly, so an attack gives an
# **upper bound** on the robust accuracy, and a weak attack a loose one. That is why the checks of section 3 matter.

# %% [markdown]
# ## 2. FGSM, PGD and EOT
#
# **FGSM** (Goodfellow et al., ICLR 2015) linearises $L$ around $x$ and takes the best step in the $L_\infty$ ball
# of that linear model: every pixel moves by $\varepsilon$ in the direction that raises the loss,
#
# $$x' = \mathrm{clip}_{[0,1]}\big(x + \varepsilon\,\mathrm{sign}\,\nabla_x L(x, y)\big). \tag{7.2}$$
#
# **PGD** (Madry et al., ICLR 2018) takes many smaller steps from a random start in the ball, projecting back
# after each:
#
# $$x_{t+1} = \Pi_{\mathcal B_p(x, \varepsilon)}\big(x_t + \eta\, g_t\big), \qquad
#   g_t = \mathrm{sign}\,\nabla_x L(x_t, y)\ (L_\infty), \qquad g_t = \frac{\nabla_x L(x_t, y)}{\|\nabla_x L(x_t, y)\|_2}\ (L_2),
#   \tag{7.3}$$
#
# where $\Pi$ clips $\delta = x' - x$ to $[-\varepsilon, \varepsilon]$ ($L_\infty$), or rescales it to length
# $\varepsilon$ when it is longer ($L_2$), and then clips to $[0, 1]$. Clipping to $[0, 1]$ after the $L_2$
# rescaling can only shorten $\delta$, since $x$ itself lies in $[0, 1]$: the result is in both sets.
#
# **EOT.** A Bayesian network is stochastic: each forward pass draws new weights $w \sim q(w)$, so one pass's
# gradient is a noisy direction, and PGD on it wanders. A model can look robust only because its gradients are
# noisy (Athalye, Carlini & Wagner, ICML 2018: "obfuscated gradients"). The fix, expectation over
# transformation, ascends the expected loss and averages the gradient over $S$ draws:
#
# $$g_t \propto \frac1S \sum_{s=1}^S \nabla_x \sum_n L\big(f_{w_s}(x_{t,n}), y_n\big), \qquad w_s \sim q(w). \tag{7.4}$$
#
# `vnas.attacks` implements (7.2)-(7.4) (`fgsm`, `pgd`, `eot_pgd`) and `robust_accuracy`; the exercises below
# write the three key lines yourself.

# %% [markdown]
# **Exercise.** FGSM in one line: given a `model` (pixels in, logits out), pixels `x`, labels `y` and `eps`,
# return (7.2). Use the cross-entropy summed over the batch.

# %%
def fgsm_step(model, x, y, eps):
    ### BEGIN SOLUTION
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()
    ### END SOLUTION


# %%
vnas.checks.check_fgsm(fgsm_step)

# %% [markdown]
# **Exercise.** The projection of (7.3) for $L_2$: given the moved images `x_adv`, the originals `x` (both
# [n, 3, H, W]) and `eps`, return $\Pi_{\mathcal B_2(x, \varepsilon)}(x_\mathrm{adv})$, one ball per image.

# %%
def l2_projection(x_adv, x, eps):
    ### BEGIN SOLUTION
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta * (eps / norms).clamp(max=1)).clamp(0, 1)
    ### END SOLUTION


# %%
vnas.checks.check_l2_projection(l2_projection)

# %% [markdown]
# **Exercise.** The EOT gradient (7.4): call the stochastic `model` once per draw, `samples` times, and return
# the average of the input gradients of the summed cross-entropy.

# %%
def eot_gradient(model, x, y, samples):
    ### BEGIN SOLUTION
    total = torch.zeros_like(x)
    for _ in range(samples):
        xr = x.clone().requires_grad_(True)
        total += torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0]
    return total / samples
    ### END SOLUTION


# %%
vnas.checks.check_eot_gradient(eot_gradient)

# %% [markdown]
# ## 3. Networks to attack, and the checks every attack must pass
#
# The comparison of section 5 retrains each method's cell under one budget. Its seed-0 networks are kept in
# `data/results/robustness_nb201/models/`, so that this chapter can attack them live, on a slice of the test set.
# (Where that folder is absent, a ResNet cell is trained here for a few epochs instead, and said so.)

# %%
ROB_CFG = config.read_toml(config.CONFIG_DIR / "sweeps" / "robustness_nb201.toml")
MODELS_DIR = config.RESULTS_DIR / "robustness_nb201" / "models"
models = {}
for name in ROB_CFG["models"]:
    path = MODELS_DIR / f"{name}__seed0.pt"
    if path.is_file():
        models[name] = robustness.load_model(path, DEVICE)
if models:
    print(f"loaded {len(models)} networks trained by `python -m vnas sweep configs/sweeps/robustness_nb201.toml` "
          f"(seed 0; not trained by this notebook): {', '.join(models)}")
else:
    resnet_cell = ROB_CFG["models"]["resnet"]["genotype"]
    tcfg = train.load_train_config(resnet_cell, run_mode=MODE, **({} if MODE == "smoke" else {"epochs": 5}))
    trainer = train.Trainer(tcfg, dataset=cifar, device=DEVICE, progress=False)
    trainer.fit(log=None)
    models["resnet (trained here)"] = trainer.model.eval()
    print(f"no saved networks in {MODELS_DIR}: trained the ResNet cell here ({MODE} mode, {tcfg.epochs} epochs, "
          f"test accuracy {trainer.history[-1]['test_acc']:.3f})")
for name, model in models.items():
    kind = "stochastic (Bayesian weights)" if attacks.is_stochastic(model) else (
        f"ensemble of {len(model.members)}" if isinstance(model, robustness.Ensemble) else "deterministic")
    print(f"  {name:14s} {kind:30s} {sum(p.numel() for p in model.parameters()):>8,d} parameters")

# %% [markdown]
# The live slice: the same test images for every network (class-balanced, the first of the set that the sweep
# attacks), PGD with 7 steps of $\eta = 2.5\,\varepsilon/7$.

# %%
N_LIVE = 20 if MODE == "smoke" else 200
STEPS = 2 if MODE == "smoke" else 7
x_live, y_live = robustness.attack_images(cifar, N_LIVE)
live_batches = data.Batches(x_live, y_live, 100, device=DEVICE, train=False)
EPS = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
first = "resnet" if "resnet" in models else next(iter(models))
target = models[first]
x0, y0 = next(iter(live_batches))
print(f"{len(y_live)} test images, classes {np.bincount(y_live, minlength=10).tolist()}")

# %% [markdown]
# **The checks.** `robust_accuracy` runs them on every call (they are cheap): each adversarial image lies in its
# ball and in $[0, 1]$ (else an error: the attack is broken); $\varepsilon = 0$ gives the clean accuracy; PGD is
# never weaker than FGSM at the same $\varepsilon$, up to the noise of $n$ images; and on the first batch a huge
# $\varepsilon$ (0.25) brings the accuracy to about 0. Here they are, spelled out, on one network.

# %%
out = attacks.robust_accuracy(target, live_batches, "pgd", EPS, steps=STEPS)
delta = {e: (attacks.pgd(target, x0, y0, e, steps=STEPS) - x0).abs().amax().item() for e in EPS[1:]}
print(f"{first}: clean accuracy {out['clean']:.3f} on {out['n']} images; accuracy at eps = 0: {out['acc'][0]:.3f}")
for e, acc, acc_f in zip(out["eps"], out["acc"], out["fgsm"], strict=True):
    if e > 0:
        print(f"  eps {255 * e:3.0f}/255: PGD-{STEPS} {acc:.3f} <= FGSM {acc_f:.3f}; largest |δ| {delta[e] * 255:.2f}/255")
print(f"  at eps = 0.25 (first batch): {out['checks']['large_eps_accuracy']:.3f}; checks: {out['checks']}")

# %% [markdown]
# **What a failed check looks like.** Put a hard quantisation in front of the same network: its input gradient is
# zero almost everywhere, so PGD (here without its random start) cannot move, and the network looks perfectly
# robust. It is not: its decision is the same function of nearly the same image. The masking check catches it.

# %%
class Quantised(nn.Module):
    """Rounds pixels to 4 levels before the network: the forward pass is the quantised image, the gradient 0."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + (torch.round(x * 3) / 3 - x).detach() - (x - x.detach()))


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", attacks.AttackWarning)
    masked = attacks.robust_accuracy(Quantised(target), live_batches, "pgd", [0.0, 8 / 255], steps=STEPS,
                                     random_start=False)
print(f"quantised {first}: clean {masked['clean']:.3f}, 'robust' accuracy at 8/255 {masked['acc'][-1]:.3f}, at 0.25 "
      f"{masked['checks']['large_eps_accuracy']:.3f}")
for w in caught:
    print("AttackWarning:", str(w.message)[:160])

# %% [markdown]
# ## 4. The live slice: every network, every budget
#
# Each network is attacked with FGSM and PGD at every $\varepsilon$ and with PGD in $L_2$ at 0.5. The Bayesian
# network is attacked three ways: FGSM, plain PGD (one weight draw per step) and EOT-PGD (4 draws per step), and it
# classifies with the posterior predictive of 4 draws. If its plain-PGD accuracy is above its EOT accuracy, that
# difference is robustness that only the noise of the gradient provided.

# %%
live = {}
start = time.perf_counter()
for name, model in models.items():
    stochastic = attacks.is_stochastic(model)
    kw = dict(steps=STEPS, generator=torch.Generator(device=DEVICE).manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", attacks.AttackWarning)  # kept in the results and printed below
        if stochastic:
            r = attacks.robust_accuracy(model, live_batches, "eot_pgd", EPS, predict_samples=4, samples=4, **kw)
            r_l2 = attacks.robust_accuracy(model, live_batches, "eot_pgd", [0.5], predict_samples=4, samples=4,
                                           norm="l2", masking_eps=8.0, **kw)
        else:
            r = attacks.robust_accuracy(model, live_batches, "pgd", EPS, **kw)
            r_l2 = attacks.robust_accuracy(model, live_batches, "pgd", [0.5], norm="l2", masking_eps=8.0, **kw)
    live[name] = {"linf": r, "l2": r_l2}
print(f"attacked {len(models)} networks on {N_LIVE} images in {time.perf_counter() - start:.0f} s ({MODE} mode)")
print(f"{'network':14s} {'clean':>6s} " + " ".join(f"{'PGD ' + format(255 * e, 'g'):>7s}" for e in EPS[1:])
      + f" {'L2 0.5':>7s}  EOT?")
for name, r in live.items():
    lin = r["linf"]
    line = f"{name:14s} {lin['clean']:6.3f} " + " ".join(f"{a:7.3f}" for a in lin["acc"][1:]) + f" {r['l2']['acc'][0]:7.3f}"
    if "pgd" in lin:
        line += "  EOT; plain PGD " + " ".join(f"{a:.3f}" for a in lin["pgd"][1:])
    if lin["warnings"] or r["l2"]["warnings"]:
        line += "  WARNINGS: " + " | ".join(w[:80] for w in lin["warnings"] + r["l2"]["warnings"])
    print(line)

# %%
n_live = len(y_live)
curves = {name: (r["linf"]["eps"], r["linf"]["acc"],
                 [2 * math.sqrt(max(a * (1 - a), 1e-12) / n_live) for a in r["linf"]["acc"]]) for name, r in live.items()}
ax = plots.plot_robust_accuracy(curves, title=f"live slice: PGD-{STEPS} on {n_live} test images, seed-0 networks "
                                              f"(bands: ±2 binomial s.e.)")
plt.show()

# %% [markdown]
# ## 5. The full comparison: three seeds, every budget, paired
#
# `python -m vnas sweep configs/sweeps/robustness_nb201.toml --jobs 2` retrains, for each seed $k$, the cell that
# seed $k$ of chapter 04's comparison (or chapter 05's joint search) found, and attacks it on the same test
# images with PGD-10, FGSM, $L_2$ PGD and, for the Bayesian network, EOT-PGD. It keeps the clean accuracy, NLL
# and ECE on the whole test set. Because every method's seed-$k$ network sees the same training subset, the same
# training seed and the same attacked images, differences between methods are paired by seed.

# %%
loaded = results.load_sweep("robustness_nb201")
if loaded is None:
    print(results.missing("robustness_nb201"))
    rows = {}
else:
    print(loaded.describe())
    rows = {row["model"]: row for row in loaded.results["summary"]}
    cfg_run = loaded.manifest["config"]
    print(f"\n{'model':13s} {'clean acc':>15s} {'NLL':>6s} {'ECE':>6s} " +
          " ".join(f"{'PGD ' + format(e, 'g'):>13s}" for e in cfg_run["attack"]["eps"]) + f" {'L2 PGD':>13s}")
    for name, row in rows.items():
        v = row["values"]
        pgd = " ".join(f"{v[f'pgd@{e:g}']['mean']:6.3f} ± {v[f'pgd@{e:g}']['ci95']:.3f}"
                       for e in cfg_run["attack"]["eps"])
        print(f"{name:13s} {v['clean_acc']['mean']:6.3f} ± {v['clean_acc']['ci95']:.3f} {v['clean_nll']['mean']:6.3f} "
              f"{v['clean_ece']['mean']:6.3f} {pgd} {v['pgd_l2']['mean']:6.3f} ± {v['pgd_l2']['ci95']:.3f}"
              + ("  (plain PGD; EOT below)" if row["stochastic"] else ""))

# %% [markdown]
# **Published anchors, beside ours.** Jung et al. (ICLR 2023) attacked all 6,466 distinct NB201 cells after NB201's
# own 200-epoch training: architecture 13433, for example, has 0.893 clean accuracy on CIFAR-10 and 0.336 under
# PGD at $1/255$. Devaguptapu et al. (2021) found NAS cells more robust than hand-made networks on small data and
# weak attacks, and less so as the task grows, and that ensembling random DARTS-space cells gives about 12% more
# PGD accuracy. Adversarially trained cells are another regime: RobNet-large reaches about 83.5% clean and
# 52.1% under PGD-20 at $8/255$ (47.5% under AutoAttack). None of our networks is adversarially trained.

# %%
if rows:
    curves = {}
    for name, row in rows.items():
        v = row["values"]
        key = "eot_pgd" if row["stochastic"] else "pgd"
        eps = row["eps_255"]
        curves[name + (" (EOT)" if row["stochastic"] else "")] = (
            [e / 255 for e in eps], [v[f"{key}@{e:g}"]["mean"] for e in eps], [v[f"{key}@{e:g}"]["ci95"] for e in eps])
    anchors = {"Jung et al. 2023, NB201 #13433 (200 epochs)": (1 / 255, 0.336),
               "same, clean": (0.0, 0.893)}
    ax = plots.plot_robust_accuracy(curves, reference=anchors,
                                    title=f"data/results/robustness_nb201: PGD-{cfg_run['attack']['steps']}, "
                                          f"{cfg_run['attack']['images']} images, {cfg_run['seeds']} seeds (95% t bands)")
    plt.show()

# %% [markdown]
# **Paired differences.** For each seed, the difference between two networks trained and attacked on the same
# data; then the mean and its 95% Student-t interval over seeds. An interval that covers 0 is no finding.
# "robust@k" is the accuracy under the strongest attack run on that network at $k/255$: PGD, or EOT-PGD for the
# Bayesian one. A network that is right less often has fewer images to lose, so "kept@k" also divides by the
# accuracy on the same images at $\varepsilon = 0$: the share of its correct answers that survive the attack.

# %%
def per_seed(name, key):
    """Per-seed values of a measure: a summary key ('clean_acc', 'pgd@2', ...), 'robust@k' (EOT-PGD for a
    stochastic network, PGD otherwise) or 'kept@k' (robust@k / robust@0)."""
    if key.startswith("kept@"):
        return per_seed(name, "robust@" + key[5:]) / per_seed(name, "robust@0")
    if key.startswith("robust@"):
        key = ("eot_pgd@" if rows[name]["stochastic"] else "pgd@") + key[7:]
    return np.asarray(rows[name]["values"][key]["per_seed"], dtype=float)


def paired(a, b, key):
    """(mean, half-width) of a − b over seeds, for measure ``key``."""
    return sweep.mean_interval(per_seed(a, key) - per_seed(b, key))


def verdict(mean, half, higher="higher", lower="lower"):
    if not np.isfinite(half):
        return "one seed: no interval"
    if mean - half > 0:
        return higher
    if mean + half < 0:
        return lower
    return "no difference detectable"


comparisons = []
if rows:
    small = cfg_run["attack"]["eps"][:2]
    keys = ["clean_acc", *[f"robust@{e:g}" for e in small], f"kept@{small[-1]:g}", "clean_nll"]
    pairs = [(m, "resnet") for m in rows if m != "resnet"] + [(m, "darts") for m in ("drnas", "variational") if m in rows]
    pairs += [(a, b) for a, b in (("bma_cells", "variational"), ("joint_bayes", "joint_point")) if a in rows and b in rows]
    print(f"{'a − b':26s} " + " ".join(f"{k:>16s}" for k in keys))
    for a, b in pairs:
        cells = {k: paired(a, b, k) for k in keys}
        comparisons.append((a, b, cells))
        print(f"{a + ' − ' + b:26s} " + " ".join(f"{m:+8.3f} ± {h:5.3f}" for m, h in cells.values()))

# %% [markdown]
# **Bayesian model averaging, and whether the randomness fooled plain PGD.** Two averages: `bma_cells` ensembles
# three cells drawn from the variational $q(\theta)$ (each retrained), and `joint_bayes` averages weight draws from
# $q(w)$. The ensemble is deterministic (it averages its members' probabilities), so PGD on it is exact; the
# Bayesian network is attacked with plain PGD and with EOT-PGD, on the same images.

# %%
eot_gap = {}
if rows and "joint_bayes" in rows:
    for e in cfg_run["attack"]["eps"]:
        gap = per_seed("joint_bayes", f"pgd@{e:g}") - per_seed("joint_bayes", f"eot_pgd@{e:g}")
        eot_gap[e] = sweep.mean_interval(gap)
        print(f"joint_bayes at {e:g}/255: plain PGD − EOT-PGD accuracy {eot_gap[e][0]:+.3f} ± {eot_gap[e][1]:.3f} "
              f"({verdict(*eot_gap[e], 'plain PGD overstates the robustness', 'EOT weaker: check the attack')})")
if "joint_bayes" in live and "pgd" in live["joint_bayes"]["linf"]:
    lin = live["joint_bayes"]["linf"]
    print("live slice, joint_bayes: plain PGD " + ", ".join(f"{a:.3f}" for a in lin["pgd"][1:]) + " against EOT "
          + ", ".join(f"{a:.3f}" for a in lin["acc"][1:]) + f" at {[round(255 * e) for e in lin['eps'][1:]]}/255")

# %% [markdown]
# ## 6. Calibration of the same networks
#
# A robust network and a calibrated one are different things; chapter 05 measured the second. The clean NLL and
# ECE (15 bins) of each network, on the whole test set, from the same runs, and its reliability diagram on the
# live slice for the ResNet cell against the two Bayesian averages.

# %%
if rows:
    for name, row in rows.items():
        v = row["values"]
        print(f"{name:13s} NLL {v['clean_nll']['mean']:.3f} ± {v['clean_nll']['ci95']:.3f}   "
              f"ECE {v['clean_ece']['mean']:.3f} ± {v['clean_ece']['ci95']:.3f}   "
              f"Brier {v['clean_brier']['mean']:.3f}")
fig, ax = plt.subplots(figsize=(4.6, 3.6), layout="constrained")
for name in [n for n in ("resnet", "bma_cells", "joint_bayes") if n in models] or list(models)[:1]:
    model = models[name]
    probs = torch.cat([attacks.predict(model, x, 4).exp() for x, _ in live_batches]).cpu()
    plots.plot_reliability(probs, torch.as_tensor(y_live), ax=ax, label=name)
ax.set_title(f"live slice ({N_LIVE} images)")
plt.show()

# %% [markdown]
# ## 7. What this chapter shows, and what it cannot
#
# Computed from the numbers above.

# %%
summary = []
if rows:
    clean = {m: rows[m]["values"]["clean_acc"]["mean"] for m in rows}
    best, worst = max(clean, key=clean.get), min(clean, key=clean.get)
    budget = train.load_train_config(ROB_CFG["models"]["resnet"]["genotype"], run_mode=cfg_run["mode"], **cfg_run["train"])
    n_train = budget.images_per_class * 10 if budget.images_per_class else len(cifar.y_train)
    summary.append(f"- Budget: {budget.epochs} epochs on {n_train:,d} images, C = {budget.channels}, N = {budget.layers} "
                   f"({loaded.manifest['mode']} mode): clean accuracy from {clean[worst]:.3f} "
                   f"({worst}) to {clean[best]:.3f} ({best}), "
                   + ("far below the ~0.80 at which robustness is usually compared and the 0.89 of Jung et al.'s "
                      "networks: these are robustness numbers of under-trained networks."
                      if clean[best] < 0.8 else "in the range where robustness is usually compared."))
    top = max(cfg_run["attack"]["eps"])
    at_top = {m: rows[m]["values"][f"{'eot_pgd' if rows[m]['stochastic'] else 'pgd'}@{top:g}"]["mean"] for m in rows}
    summary.append(f"- At {top:g}/255 every network falls to at most {max(at_top.values()):.3f} (chance is 0.1): none "
                   "of them is robust at the standard budget, as expected without adversarial training.")
    e1, e2 = (f"{e:g}" for e in cfg_run["attack"]["eps"][:2])
    for a, b, cells in comparisons:
        (mc, hc), (mr, hr), (mk, hk) = cells["clean_acc"], cells[f"robust@{e1}"], cells[f"kept@{e2}"]
        summary.append(f"- {a} − {b}: clean {mc:+.3f} ± {hc:.3f} ({verdict(mc, hc)}); robust at {e1}/255 "
                       f"{mr:+.3f} ± {hr:.3f} ({verdict(mr, hr)}); share of correct answers kept at {e2}/255 "
                       f"{mk:+.3f} ± {hk:.3f} ({verdict(mk, hk)}).")
    kept = {m: float(np.mean(per_seed(m, f"kept@{e2}"))) for m in rows}
    acc = {m: float(np.mean(per_seed(m, "clean_acc"))) for m in rows}
    names = sorted(rows)
    if len(names) > 2:
        r = float(np.corrcoef([acc[m] for m in names], [kept[m] for m in names])[0, 1])
        summary.append(f"- Across the {len(names)} networks, clean accuracy and the share kept at {e2}/255 correlate "
                       f"with r = {r:+.2f}" + (": the less accurate networks lose less, so a robustness gap between "
                                               "networks of different accuracy is not a property of the cell alone."
                                               if r < -0.5 else "."))
    if eot_gap:
        e1 = min(eot_gap)
        m, h = eot_gap[e1]
        summary.append(f"- The Bayesian network under plain PGD against EOT-PGD at {e1:g}/255: {m:+.3f} ± {h:.3f} "
                       f"({verdict(m, h, 'plain PGD overstates its robustness: EOT is needed', 'EOT is weaker here')}).")
    warned = sorted({m for m in rows if rows[m]["warnings"]})
    summary.append("- Sanity checks: " + ("all passed in every run." if not warned else
                                          f"warnings in {', '.join(warned)} (see the results' `warnings`)."))
else:
    summary.append("- No loaded comparison: only the live slice ran; it is one seed and no finding.")
summary.append(f"- The live slice ({N_LIVE} images, PGD-{STEPS}, seed 0, {MODE} mode) repeats the attack on the "
               "saved networks; its ±2 s.e. bands are binomial noise of the images only, not of training.")
summary.append("- Not shown: anything at the published protocols (200 epochs, C = 16, N = 5; "
               "configs/sweeps/robustness_nb201_full.toml, a GPU run), AutoAttack, or adversarial training.")
print("\n".join(summary))
print(f"\nchapter run time: {(time.perf_counter() - CHAPTER_START) / 60:.1f} min ({MODE} mode)")
