# %% [markdown]
# # 08 · From CIFAR-10 to ImageNet: stacking cells, transfer, budgets
#
# Every search in this course ran on CIFAR-10 (or on images averaged down from it). DARTS' paper ends its
# convolutional story elsewhere: the cell found on CIFAR-10 is stacked into a network for ImageNet's 224 × 224
# images, trained there from scratch, and compared with NASNet, AmoebaNet and PNAS under one budget, the *mobile
# setting*: fewer than 600 M multiply-adds per image (Liu, Simonyan & Yang, ICLR 2019, Table 3 and appendix
# A.2.3). Two questions hide in that step. Does a cell that is good on CIFAR-10 stay good on another dataset?
# And how big is the network the cell makes?
#
# Training on ImageNet takes the DARTS authors 12 days on one GPU, so this chapter trains nothing. It answers
# both questions with what two CPU cores can compute exactly:
#
# 1. **Stacking.** How `vnas.spaces.darts_imagenet` builds the ImageNet network from a cell, with the shapes and
#    the multiply-adds of every stage counted live (and your own formula for a convolution's cost).
# 2. **Transfer, on real data.** NAS-Bench-201 trained all 15,625 cells of its space on CIFAR-10 *and* on
#    ImageNet16-120. From that table: how well the CIFAR-10 ranking of cells predicts their ImageNet16-120 ranking,
#    over all cells and among the best ones, and where the cells that each method of chapter 04 found rank there.
# 3. **Budgets.** Parameters and multiply-adds of our networks beside the published mobile-setting table.

# %%
import math
import time
from bisect import bisect_left, bisect_right, insort

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import vnas
from vnas import networks, plots, results, spaces, sweep
from vnas.spaces import darts
from vnas.spaces.darts_imagenet import MOBILE_MACS

vnas.setup(seed=0)
MODE = vnas.mode()
# this chapter runs single images through networks and trains nothing: one thread avoids the synchronisation
# between threads, measured here to slow such forward passes 10-60 times on a busy 2-core machine
torch.set_num_threads(1)
print(vnas.banner("no images: the NAS-Bench-201 table (data/nb201_table.csv) and stored search results"))
CHAPTER_START = time.perf_counter()
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Stacking the searched cell for ImageNet
#
# **On CIFAR-10** (chapter 02) the evaluation network is a stem (one 3 × 3 convolution to $3C$ channels at
# 32 × 32), 20 cells with $C = 36$, reduction cells (stride 2, twice the channels) at 1/3 and 2/3 of the depth,
# an auxiliary classifier after the second reduction, global average pooling and a linear classifier.
#
# **On ImageNet** the images have 49 times as many pixels (224² / 32²), and a cell run at full resolution would
# cost 49 times as much. DARTS' ImageNet network (quark0/darts, `NetworkImageNet`; here
# `vnas.spaces.darts_imagenet.DartsImageNetNetwork`) keeps the cells and changes the rest:
#
# - a **stem of three stride-2 3 × 3 convolutions**, 224 → 112 → 56 (`stem0`, 3 → $C/2$ → $C$ channels) → 28
#   (`stem1`): the cells start on 28 × 28 maps. The first cell reads both stems' outputs; since `stem0`'s is
#   twice as large, it is halved on the way in, as after a reduction cell;
# - **14 cells with $C = 48$**, reductions at cells $\lfloor 14/3 \rfloor = 4$ and $\lfloor 2 \cdot 14/3 \rfloor = 9$,
#   so the last cells run on 7 × 7 maps, which the classifier averages;
# - the **auxiliary head** after cell 9 reads 7 × 7 maps, so its 5 × 5 average pool has stride 2 (7 × 7 → 2 × 2,
#   which its 2 × 2 convolution turns into one vector). It helps training (weight 0.4 in the loss) and is dropped
#   at test time, so papers report the network's parameters without it.
#
# What a layer costs. A convolution with a $k \times k$ kernel, stride $s$, padding $p$ and dilation $d$ maps an
# $H \times W$ input to
#
# $$H_\text{out} = \left\lfloor \frac{H + 2p - d\,(k - 1) - 1}{s} \right\rfloor + 1
#   \qquad (\text{the same for } W), \tag{8.1}$$
#
# and each output value is a sum over a $k \times k$ window of $C_\text{in}/g$ input channels ($g$ groups: a
# depthwise convolution, as in DARTS' separable ones, has $g = C_\text{in}$), so the layer costs
#
# $$\text{MACs} = k^2 \cdot \frac{C_\text{in}}{g} \cdot C_\text{out} \cdot H_\text{out} \cdot W_\text{out}
#   \tag{8.2}$$
#
# multiply-adds (one multiplication and one addition each; "FLOPs" in some papers count them as two).
#
# **Exercise.** Write (8.1)-(8.2): the multiply-adds of one convolution on a `c_in` × `h` × `w` input.

# %%
def conv_macs(c_in, c_out, k, h, w, stride=1, padding=0, dilation=1, groups=1):
    ### BEGIN SOLUTION
    h_out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    return k * k * (c_in // groups) * c_out * h_out * w_out
    ### END SOLUTION


# %%
vnas.checks.check_conv_macs(conv_macs)

# %% [markdown]
# Your formula, summed over every convolution of the network (and $C_\text{in} \cdot C_\text{out}$ for the
# linear classifier), gives the cost of each stage. Hooks record each stage's output shape on one zero image;
# consecutive cells with the same kind and shape are merged into one row.

# %%
def stages(model, size):
    """[(part, output shape, multiply-adds)] for one image of ``size``: stems, each cell, the classifier (eval
    mode: the auxiliary head does not run). Every convolution is counted with conv_macs (8.1)-(8.2)."""
    names = [n for n in ("stem", "stem0", "stem1") if hasattr(model, n)]
    parts = [(n, getattr(model, n)) for n in names]
    parts += [(f"cell {i} {'reduce' if c.reduction else 'normal'}", c) for i, c in enumerate(model.cells)]
    parts.append(("classifier", model.classifier))
    shape, macs, hooks = {}, {}, []

    def record_shape(name):
        def hook(part, inputs, out):
            shape[name] = tuple(out.shape[1:])
        return hook

    def count(name):
        def hook(m, inputs, out):
            if isinstance(m, nn.Linear):
                macs[name] += m.in_features * m.out_features
            else:
                h, w = inputs[0].shape[-2:]
                macs[name] += conv_macs(m.in_channels, m.out_channels, m.kernel_size[0], h, w, m.stride[0],
                                        m.padding[0], m.dilation[0], m.groups)
        return hook

    for name, part in parts:
        macs[name] = 0
        hooks.append(part.register_forward_hook(record_shape(name)))
        hooks += [m.register_forward_hook(count(name)) for m in part.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        networks.count_macs(model, size)  # one eval-mode forward pass of a zero image (our hooks run too)
    finally:
        for h in hooks:
            h.remove()
    return [(name, shape[name], macs[name]) for name, _ in parts]


def merged(rows):
    """Consecutive cells of the same kind and output shape as one row: ("cells 5-8 normal (x4)", shape, macs)."""
    out = []
    for name, shape, macs in rows:
        kind = name.split()[-1] if name.startswith("cell ") else None
        if out and kind and out[-1][3] == kind and out[-1][1] == shape:
            first, count = out[-1][4], out[-1][5] + 1
            out[-1] = (f"cells {first}-{name.split()[1]} {kind} (x{count})", shape, out[-1][2] + macs, kind, first,
                       count)
        else:
            out.append((name, shape, macs, kind, name.split()[1] if kind else None, 1))
    return [(name, shape, macs) for name, shape, macs, *_ in out]


def show(model, size, title):
    rows = stages(model, size)
    total, library = sum(r[2] for r in rows), networks.count_macs(model, size)
    print(f"{title}: input {size[1]} x {size[2]} x {size[3]}")
    for name, shape, macs in merged(rows):
        print(f"  {name:26s} {' x '.join(map(str, shape)):>15s} {macs / 1e6:9.1f} M  {100 * macs / total:5.1f}%")
    print(f"  {'total (your conv_macs)':26s} {'':15s} {total / 1e6:9.1f} M; vnas.networks.count_macs: "
          f"{library / 1e6:.1f} M ({'the same' if total == library else 'DIFFERENT'})\n")
    return rows


V2 = darts.DARTS_V2
DARTS_SPACE = spaces.get_space("darts")  # its build_network(genotype, dataset=...) has a CIFAR-10 and an ImageNet network
imagenet_net = DARTS_SPACE.build_network(V2, dataset="imagenet")
cifar_net = networks.build_network(V2)
imagenet_rows = show(imagenet_net, (1, 3, 224, 224), "DARTS_V2, ImageNet network (C = 48, 14 cells)")
cifar_rows = show(cifar_net, (1, 3, 32, 32), "DARTS_V2, CIFAR-10 network (C = 36, 20 cells)")

# %% [markdown]
# Read the two tables side by side: how the stem sets the resolution at which the cells work, and where each
# network spends its multiply-adds. Each reduction halves the side and doubles the channels, so a 1 × 1
# convolution costs the same before and after it ($\tfrac14$ of the positions, 4 times the channel pairs); the
# depthwise parts of the separable convolutions get cheaper.

# %%
def by_resolution(rows):
    """{side of the cells' output maps: share of the network's multiply-adds spent in those cells}."""
    total, out = sum(m for *_, m in rows), {}
    for name, shape, m in rows:
        if name.startswith("cell"):
            out[shape[-1]] = out.get(shape[-1], 0) + m / total
    return out


stem_share = sum(m for name, _, m in imagenet_rows if name.startswith("stem")) / sum(m for *_, m in imagenet_rows)
first_res, last_res = imagenet_rows[2][1][-1], imagenet_rows[-2][1][-1]  # after the stems; before the classifier
for title, rows in (("ImageNet", imagenet_rows), ("CIFAR-10", cifar_rows)):
    print(f"{title}: multiply-adds in the cells by map size: "
          + ", ".join(f"{side} x {side}: {100 * f:.1f}%" for side, f in by_resolution(rows).items()))
print(f"ImageNet's stem takes 224 x 224 down to {first_res} x {first_res} for {100 * stem_share:.1f}% of the "
      f"multiply-adds, so its {len(imagenet_net.cells)} cells run on {first_res} x {first_res} to {last_res} x "
      f"{last_res} maps; CIFAR-10's {len(cifar_net.cells)} cells run on {cifar_rows[1][1][-1]} x "
      f"{cifar_rows[1][1][-1]} to {cifar_rows[-2][1][-1]} x {cifar_rows[-2][1][-1]}.")

# %% [markdown]
# **Parameters and multiply-adds of the published cells.** DARTS_V1 (first order) and DARTS_V2 (second order),
# in both networks, counted now (`vnas.networks.count_parameters` leaves the auxiliary head out, as the papers
# do; `count_macs` counts the convolutions and the linear layer of one forward pass in eval mode):

# %%
sizes = {}
for name in ("DARTS_V1", "DARTS_V2"):
    im, cf = DARTS_SPACE.build_network(darts.NAMED[name], dataset="imagenet"), networks.build_network(darts.NAMED[name])
    sizes[name] = {"params": networks.count_parameters(im), "aux": networks.count_parameters(im, True)
                   - networks.count_parameters(im), "macs": networks.count_macs(im, (1, 3, 224, 224)),
                   "cifar_params": networks.count_parameters(cf), "cifar_macs": networks.count_macs(cf, (1, 3, 32, 32))}
    s = sizes[name]
    print(f"{name}: ImageNet network {s['params'] / 1e6:.2f} M parameters (+ {s['aux'] / 1e6:.2f} M in the auxiliary "
          f"head), {s['macs'] / 1e6:.1f} M multiply-adds at 224 x 224 ({'under' if s['macs'] < MOBILE_MACS else 'OVER'}"
          f" the {MOBILE_MACS / 1e6:.0f} M budget); CIFAR-10 network {s['cifar_params'] / 1e6:.2f} M parameters, "
          f"{s['cifar_macs'] / 1e6:.1f} M multiply-adds at 32 x 32")
v2 = sizes["DARTS_V2"]
ratio = v2["macs"] / v2["cifar_macs"]
print(f"\nDARTS_V2's ImageNet network has {v2['params'] / v2['cifar_params']:.2f} times the CIFAR-10 network's "
      f"parameters and {ratio:.2f} times its multiply-adds, for 49 times the pixels"
      + (f": the stem's reduction from 224 to {first_res} pays for the larger images." if ratio < 2 else "."))

# %% [markdown]
# **The gap to the published 574 M.** DARTS' Table 3 gives 4.7 M parameters and 574 M multiply-adds for
# DARTS_V2 on ImageNet. Our parameter count is the original code's exactly (quark0/darts, `NetworkImageNet`; see
# `tests/test_imagenet.py`), so the network is the same; the multiply-adds are not. The `darts_imagenet` module
# docstring records what is known: counted the same way, the original code gives our number too; other counters
# give 523 M and 545 M (quark0/darts issue #46); the paper's counting code was not published. What else could a
# counter include? Batch norm (a scale and a shift per value, one multiply-add), pooling ($k^2$ additions per
# output value) and the auxiliary head (which does not run at test time) are the candidates; counted here:

# %%
def other_ops(model, size):
    """Multiply-adds that count_macs leaves out: batch norm (one per output value) and pooling (k^2 per output
    value), over one eval-mode forward pass."""
    extra = {"batch norm": 0, "pooling": 0}

    def count(m, inputs, out):
        if isinstance(m, nn.BatchNorm2d):
            extra["batch norm"] += out.numel()
        else:
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            extra["pooling"] += out.numel() * k * k

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d | nn.AvgPool2d | nn.MaxPool2d)]
    try:
        networks.count_macs(model, size)
    finally:
        for h in hooks:
            h.remove()
    return extra


PUBLISHED_V2 = {"params": 4.7e6, "macs": 574e6}  # Liu et al., ICLR 2019, Table 3
extra = other_ops(imagenet_net, (1, 3, 224, 224))
aux_in = imagenet_net.auxiliary_head.features[2].in_channels
extra["auxiliary head"] = networks.count_macs(imagenet_net.auxiliary_head, (1, aux_in, last_res, last_res))
everything = v2["macs"] + sum(extra.values())
print(f"conv + linear (count_macs): {v2['macs'] / 1e6:.1f} M, {100 * (v2['macs'] / PUBLISHED_V2['macs'] - 1):+.1f}% "
      f"against the published {PUBLISHED_V2['macs'] / 1e6:.0f} M")
for name, value in extra.items():
    print(f"  + {name:15s} {value / 1e6:6.2f} M")
print(f"everything above: {everything / 1e6:.1f} M, {100 * (everything / PUBLISHED_V2['macs'] - 1):+.1f}% against "
      f"574 M: " + ("these extra operations do not close the gap; the paper's count stays unexplained, and every "
                    "comparison of multiply-adds across papers carries an uncertainty of this size."
                    if everything < 0.99 * PUBLISHED_V2["macs"] else "a count that includes them comes close."))
print(f"parameters: {v2['params'] / 1e6:.3f} M, published {PUBLISHED_V2['params'] / 1e6:.1f} M "
      f"({'the same to the digit given' if round(v2['params'] / 1e6, 1) == 4.7 else 'DIFFERENT'})")

# %% [markdown]
# ## 2. Does a good CIFAR-10 cell stay good? Transfer on NAS-Bench-201
#
# Whether a cell transfers can only be measured by training it on both datasets. NAS-Bench-201 (Dong & Yang,
# ICLR 2020) did that for every cell of its space: each of the 15,625 cells, in the same skeleton, was trained
# for 200 epochs on CIFAR-10, CIFAR-100 and ImageNet16-120 (ImageNet down-sampled to 16 × 16 pixels, 120 of its
# classes). The shipped table (`vnas.spaces.nb201_table`) holds their test accuracies. This is transfer between
# datasets at one small resolution and one skeleton, not to the 224 × 224 network of section 1; it is the
# measurement the table makes possible, and it is exact for this space.
#
# The question is about *rankings*: a search keeps the cell it ranks first, so what matters is whether the
# ordering of cells by CIFAR-10 accuracy is the ordering by ImageNet16-120 accuracy. Two rank correlations
# measure that.
#
# **Spearman's $\rho$** is Pearson's correlation of the ranks. The table's accuracies have two decimals, so
# many cells tie; tied values share the average of the ranks they span. With $x_1, \dots, x_n$ and their ranks
# $r_i$ (and $s_i$ for $y$):
#
# $$r_i = \#\{j : x_j < x_i\} + \frac{1 + \#\{j : x_j = x_i\}}{2}, \qquad
#   \rho = \frac{\sum_i (r_i - \bar r)(s_i - \bar s)}{\sqrt{\sum_i (r_i - \bar r)^2 \sum_i (s_i - \bar s)^2}}.
#   \tag{8.3}$$
#
# **Exercise.** Write $\rho$ of (8.3) for two float arrays `x` and `y` (numpy only; `np.unique` with
# `return_inverse=True, return_counts=True` gives each value's group of ties).

# %%
def spearman(x, y):
    ### BEGIN SOLUTION
    def average_ranks(v):
        _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
        below = np.cumsum(counts) - counts  # values smaller than each distinct value
        return (below + (1 + counts) / 2)[inverse.reshape(-1)]

    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])
    ### END SOLUTION


# %%
vnas.checks.check_spearman(spearman)

# %% [markdown]
# **Kendall's $\tau_b$** counts pairs of cells instead: a pair is *concordant* when the two datasets order it
# the same way, *discordant* when they order it oppositely, and neither when it ties in either. With $n_c$ and
# $n_d$ such pairs, $n_0 = n(n-1)/2$ pairs in all, and $n_1 = \sum t(t-1)/2$ over the groups of $t$ tied $x$
# values ($n_2$ the same for $y$):
#
# $$\tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}}. \tag{8.4}$$
#
# $\frac{1 + \tau}{2}$ is roughly the probability that CIFAR-10 orders a random pair of cells (one that neither
# dataset ties) the way ImageNet16-120 does, which makes $\tau$ the more direct measure for a search that
# compares cells. Counting all
# $n_0 \approx 1.2 \times 10^8$ pairs one by one is slow; one sweep over the cells sorted by $x$ is enough: each
# cell is compared at once with all cells of smaller $x$ through a sorted list of their $y$ values.

# %%
def kendall_tau_b(x, y):
    """Kendall's tau_b (8.4) in one sweep: cells in increasing x (ties in x together), each compared with the
    sorted y values of all cells of smaller x by two bisections."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.lexsort((y, x))
    x, y = x[order], y[order].tolist()
    seen, n_c, n_d, start = [], 0, 0, 0
    for end in [*(np.flatnonzero(np.diff(x)) + 1).tolist(), len(x)]:  # one group of equal x at a time
        for v in y[start:end]:
            n_c += bisect_left(seen, v)  # smaller x and smaller y
            n_d += len(seen) - bisect_right(seen, v)  # smaller x and larger y
        for v in y[start:end]:
            insort(seen, v)
        start = end
    n0 = len(x) * (len(x) - 1) / 2
    n1, n2 = (sum(t * (t - 1) / 2 for t in np.unique(v, return_counts=True)[1].tolist()) for v in (x, y))
    return (n_c - n_d) / math.sqrt((n0 - n1) * (n0 - n2))


def kendall_by_pairs(x, y):
    """(8.4) by counting every pair: for checking kendall_tau_b on a few hundred cells."""
    dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), k=1)
    prod, tx, ty = (dx * dy)[upper], dx[upper] == 0, dy[upper] == 0
    n0 = len(prod)
    return ((prod > 0).sum() - (prod < 0).sum()) / math.sqrt((n0 - tx.sum()) * (n0 - ty.sum()))


table = spaces.nb201_table.load_table()
acc = np.array(list(table.values()))  # rows: cells in NAS-Bench-201 order; columns: cifar10, cifar100, imagenet16
c10, c100, in16 = acc.T
some = rng.choice(len(c10), 300, replace=False)
print(f"{len(c10):,} cells; {len(np.unique(c10)):,} distinct CIFAR-10 accuracies and {len(np.unique(in16)):,} "
      f"distinct ImageNet16-120 accuracies: ties are the rule")
print(f"check on 300 cells: kendall_tau_b {kendall_tau_b(c10[some], in16[some]):.12f}, every pair counted "
      f"{kendall_by_pairs(c10[some], in16[some]):.12f}")

# %% [markdown]
# **How certain are these numbers?** The table holds *every* cell, so a coefficient over all cells has no
# sampling error over cells. Two things are uncertain. Each cell's accuracy is a mean over a few training runs,
# so it carries training noise, which the table does not let us resample. And a coefficient over a *subset*
# (the top 1% of cells below) depends on which cells happen to fall in it. The bootstrap measures the second:
# draw $n$ cells with replacement from the $n$ at hand, recompute, repeat $B$ times, and report the 2.5 and 97.5
# percentiles. Read it as "how much the coefficient would move for another sample of this many cells from a space
# like this one", not as an error bar on the table.

# %%
B = 20 if MODE == "smoke" else 500


def bootstrap(stat, x, y, reps=B):
    """(value, 2.5th, 97.5th percentile) of stat(x, y) over ``reps`` resamples of the pairs with replacement."""
    draws = [stat(x[i], y[i]) for i in rng.integers(0, len(x), size=(reps, len(x)))]
    return stat(x, y), *np.percentile(draws, [2.5, 97.5])


start = time.perf_counter()
corr = {("CIFAR-10", target): {"spearman": bootstrap(spearman, c10, y), "kendall": bootstrap(kendall_tau_b, c10, y)}
        for target, y in (("ImageNet16-120", in16), ("CIFAR-100", c100))}
print(f"all {len(c10):,} cells, {B} bootstrap resamples ({time.perf_counter() - start:.0f} s, {MODE} mode):")
for (a, b), coef in corr.items():
    print(f"  {a} vs {b:14s}: " + "; ".join(f"{k} {v:.3f} [{lo:.3f}, {hi:.3f}]" for k, (v, lo, hi) in coef.items()))

# %% [markdown]
# **Among the best cells.** A search does not need to order bad cells; it needs to pick among good ones. Keep
# only the cells whose CIFAR-10 accuracy is in the top fraction $f$ (ties at the threshold kept) and recompute.
# Cutting the range of $x$ tends to lower a correlation by itself (less spread is left to explain, the noise
# stays), so the same cut for CIFAR-100 is the yardstick: if ImageNet16-120's correlation falls further, transfer
# to it is weaker among the best cells, beyond what the cut alone does.

# %%
FRACTIONS = [1.0, 0.5, 0.1, 0.05, 0.01]
by_top = {1.0: {"cells": len(c10), "keep": np.ones(len(c10), bool),  # all cells: computed above
                "ImageNet16-120": corr[("CIFAR-10", "ImageNet16-120")]["spearman"],
                "CIFAR-100": corr[("CIFAR-10", "CIFAR-100")]["spearman"],
                "kendall": corr[("CIFAR-10", "ImageNet16-120")]["kendall"]}}
for f in FRACTIONS[1:]:
    keep = c10 >= np.quantile(c10, 1 - f, method="higher")  # cells tied at the threshold are kept
    by_top[f] = {"cells": int(keep.sum()), "keep": keep,
                 "ImageNet16-120": bootstrap(spearman, c10[keep], in16[keep]),
                 "CIFAR-100": bootstrap(spearman, c10[keep], c100[keep]),
                 "kendall": bootstrap(kendall_tau_b, c10[keep], in16[keep])}
print(f"{'top by CIFAR-10':>16s} {'cells':>6s}  {'Spearman with ImageNet16-120':>30s}  {'with CIFAR-100':>24s}  "
      f"{'Kendall with ImageNet16-120':>28s}")
for f, r in by_top.items():
    cells = [f"{r[k][0]:.3f} [{r[k][1]:.3f}, {r[k][2]:.3f}]" for k in ("ImageNet16-120", "CIFAR-100", "kendall")]
    print(f"{100 * f:15g}% {r['cells']:6d}  {cells[0]:>30s}  {cells[1]:>24s}  {cells[2]:>28s}")

# %%
top = by_top[0.01]["keep"]
best_c10 = int(np.argmax(c10))  # the first of the cells that share the maximum (NB201 order)
best_in16 = int(np.argmax(in16))
optima = {"best on CIFAR-10": (c10[best_c10], in16[best_c10]),
          "best on ImageNet16-120": (c10[best_in16], in16[best_in16])}
fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), layout="constrained")
plots.plot_transfer(c10, in16, ax=axes[0], top=top, top_label="top 1% by CIFAR-10 ({n} cells)", marked=optima,
                    title="NAS-Bench-201: every cell, 200 epochs on each dataset")
plots.plot_transfer(c10[top], in16[top], ax=axes[1], marked=optima, all_label="top 1% by CIFAR-10 ({n} cells)",
                    title=f"the top 1% by CIFAR-10 only: Spearman {by_top[0.01]['ImageNet16-120'][0]:.2f}")
for key, style in (("ImageNet16-120", "o-"), ("CIFAR-100", "s--")):
    vals = np.array([by_top[f][key] for f in FRACTIONS])
    axes[2].errorbar(100 * np.array(FRACTIONS), vals[:, 0], yerr=[vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]],
                     fmt=style, capsize=3, label=f"Spearman, CIFAR-10 vs {key}")
axes[2].set_xscale("log")
axes[2].set_xlabel("top % of cells by CIFAR-10 accuracy (log scale)")
axes[2].set_ylabel("rank correlation among those cells")
axes[2].set_title(f"among the top cells (bootstrap 95% intervals, B = {B})")
axes[2].grid(alpha=0.3)
axes[2].legend(fontsize=8)
plt.show()

# %% [markdown]
# The picture above, in numbers: how much the best cells' ranking carries over, and what the CIFAR-10 winner
# loses on ImageNet16-120.

# %%
k = int(top.sum())
top_in16 = in16 >= np.quantile(in16, 1 - 0.01, method="higher")
overlap = (top & top_in16).sum() / top.sum()
rho_in, rho_100 = by_top[0.01]["ImageNet16-120"], by_top[0.01]["CIFAR-100"]
weaker_at = [f for f in FRACTIONS if by_top[f]["ImageNet16-120"][2] < by_top[f]["CIFAR-100"][1]]
overlap_at = [f for f in FRACTIONS if f not in weaker_at]
tops = lambda fs: ", ".join(f"{100 * f:g}%" if f < 1 else "100% (all cells)" for f in fs)  # noqa: E731
print(f"Spearman with ImageNet16-120 below CIFAR-100's, beyond both bootstrap intervals, among the top "
      f"{tops(weaker_at) or '(none)'} by CIFAR-10: there the ranking transfers worse to ImageNet16-120 than to "
      f"CIFAR-100 under the same cut. The intervals overlap among the top {tops(overlap_at) or '(none)'}.")
print(f"Top 1% ({k} cells): {rho_in[0]:.3f} [{rho_in[1]:.3f}, {rho_in[2]:.3f}] with ImageNet16-120, {rho_100[0]:.3f} "
      f"[{rho_100[1]:.3f}, {rho_100[2]:.3f}] with CIFAR-100; {100 * overlap:.0f}% of these cells are also among the "
      f"top 1% by ImageNet16-120 ({top_in16.sum()} cells; {k} cells drawn at random would hold about 1% of them).")
print(f"The best CIFAR-10 cell ({c10[best_c10]:.2f}%) reaches {in16[best_c10]:.2f}% on ImageNet16-120; the best "
      f"ImageNet16-120 cell reaches {in16[best_in16]:.2f}% (published optimum 47.31, Dong & Yang 2020) with "
      f"{c10[best_in16]:.2f}% on CIFAR-10: picking by CIFAR-10 loses {in16[best_in16] - in16[best_c10]:.2f} points.")

# %% [markdown]
# ## 3. Where the cells each method found rank on ImageNet16-120
#
# Chapter 04 compared the searches on NB201 with paired seeds: `python -m vnas sweep
# configs/sweeps/nb201_comparison.toml` ran each method with several seeds on CIFAR-10 (its quick protocol) and kept
# each seed's cell. Chapter 05's joint search (`bayes_nb201`) did the same with Bayesian weights. Here the same
# cells are looked up in the ImageNet16-120 column. To compare across datasets whose accuracies live on different
# scales, each cell gets its **percentile rank** among all $N$ cells, ties counting half:
#
# $$\text{pct}(a) = 100 \cdot \frac{\#\{j : a_j < a\} + \tfrac12 \#\{j : a_j = a\}}{N}. \tag{8.5}$$
#
# In terms of the average ranks of (8.3), the cell of rank $r_i$ has $\text{pct}(a_i) = 100\,(r_i - \tfrac12)/N$,
# so the percentiles of all $N$ cells average exactly 50: a cell drawn at random sits at 50 in expectation, on
# every dataset. That is the random-cell baseline below.
#
# **Exercise.** Write (8.5): the percentile rank of accuracy `acc` among the array `all_acc`.

# %%
def percentile_rank(all_acc, acc):
    ### BEGIN SOLUTION
    all_acc = np.asarray(all_acc)
    return float(100 * (np.sum(all_acc < acc) + 0.5 * np.sum(all_acc == acc)) / len(all_acc))
    ### END SOLUTION


# %%
vnas.checks.check_percentile_rank(percentile_rank)

# %%
found, manifests = {}, {}
for folder in ("nb201_comparison", "bayes_nb201"):  # chapter 04's comparison, chapter 05's joint search
    loaded = results.load_sweep(folder)
    if loaded is None:
        print(results.missing(folder))
        continue
    print(loaded.describe())
    manifests[folder] = loaded.manifest
    points = loaded.results.get("points") or [{}]
    for run in loaded.results["runs"]:
        point = points[run.get("point", 0)]
        label = run["method"]
        if point.get("weights") == "gaussian":  # chapter 05's joint search; its point-weight runs repeat chapter 04's
            label += f" + Bayesian weights ({point.get('weight_prior')} prior" + (
                f", KL x {point['weight_kl_weight']:g})" if "weight_kl_weight" in point else ")")
        elif folder != "nb201_comparison":
            continue
        found.setdefault(label, {})[run["config"]["seed"]] = spaces.load_genotype(run["genotype"])
print(f"\n{len(found)} methods, {sum(len(v) for v in found.values())} found cells")

# %%
def pct_of(genotype):
    a = spaces.nb201_table.table_accuracy(genotype)
    return {"CIFAR-10": percentile_rank(c10, a["cifar10"]), "ImageNet16-120": percentile_rank(in16, a["imagenet16"]),
            "acc": a["imagenet16"]}


rows, stats = {}, {}
for method, by_seed in found.items():
    per = [pct_of(by_seed[s]) for s in sorted(by_seed)]
    stats[method] = {key: np.array([p[key] for p in per]) for key in ("CIFAR-10", "ImageNet16-120", "acc")}
    stats[method]["distinct"] = len({str(g) for g in by_seed.values()})
    rows[method] = {key: (stats[method][key], *sweep.mean_interval(stats[method][key]))
                    for key in ("CIFAR-10", "ImageNet16-120")}
optimum = {"best on CIFAR-10": pct_of(spaces.nb201_table.table_best("cifar10")[0]),
           "best on ImageNet16-120": pct_of(spaces.nb201_table.table_best("imagenet16")[0])}
W = max(map(len, [*stats, "a random cell (expectation over all cells)"]))
print(f"{'method':{W}s} {'seeds':>5s} {'cells':>5s} {'CIFAR-10 pct':>15s} {'ImageNet16-120 pct':>19s} "
      f"{'IN16 − C10':>16s} {'IN16 acc %':>13s}")
for method, s in stats.items():
    (m10, h10), (m16, h16) = (sweep.mean_interval(s[k]) for k in ("CIFAR-10", "ImageNet16-120"))
    md, hd = sweep.mean_interval(s["ImageNet16-120"] - s["CIFAR-10"])
    ma, ha = sweep.mean_interval(s["acc"])
    print(f"{method:{W}s} {len(s['acc']):5d} {s['distinct']:5d} {m10:7.1f} ± {h10:5.1f} {m16:10.1f} ± {h16:5.1f} "
          f"{md:+8.1f} ± {hd:5.1f} {ma:6.2f} ± {ha:5.2f}")
for name, p in optimum.items():
    print(f"{'NB201 ' + name:{W}s} {'':11s} {p['CIFAR-10']:15.2f} {p['ImageNet16-120']:19.2f} {'':16s} "
          f"{p['acc']:13.2f}")
print(f"{'a random cell (expectation over all cells)':{W}s} {'':11s} {50:15.1f} {50:19.1f}")
print("(cells: distinct cells among the seeds; ± : 95% t interval over seeds; each cell is looked up in the table, "
      "nothing is retrained here)")

# %%
labels = {m: m.replace(" + ", "\n+ ") for m in rows}  # two lines for the long names
reference = {"a random cell (50)": 50.0,
             "best CIFAR-10 cell on ImageNet16-120": optimum["best on CIFAR-10"]["ImageNet16-120"]}
fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
plots.plot_percentiles({labels[m]: r for m, r in rows.items()}, ax=ax, reference=reference,
                       title=f"percentile among all {len(c10):,} NB201 cells (dots: seeds; bars: 95% t interval)")
plt.show()

# %% [markdown]
# **Reading the table against its baselines.** A method's cells beat a random cell on a dataset when the
# interval of their mean percentile lies above 50; the cells lose rank in transfer when the paired difference
# (ImageNet16-120 minus CIFAR-10 percentile, same cell) lies below 0. The searches themselves ran the quick
# protocol recorded in the manifests (printed above): small proxies, so the ranking of methods here is evidence
# about that protocol, not about the published searches.

# %%
verdicts = {}
for method, s in stats.items():
    m, h = sweep.mean_interval(s["ImageNet16-120"])
    md, hd = sweep.mean_interval(s["ImageNet16-120"] - s["CIFAR-10"])
    if s["distinct"] == 1:  # every seed found the same cell: a spread of 0 is no interval
        verdict = {"vs random": f"every seed found the same cell, at percentile {m:.1f}: one cell, no interval",
                   "transfer": f"its percentile changes by {md:+.1f} in transfer"}
    else:
        verdict = {"vs random": ("one seed: no interval" if not np.isfinite(h) else "above a random cell"
                                 if m - h > 50 else "below a random cell" if m + h < 50 else
                                 "not distinguishable from a random cell"),
                   "transfer": ("n/a" if not np.isfinite(hd) else "loses rank in transfer" if md + hd < 0 else
                                "gains rank in transfer" if md - hd > 0 else "no rank change detectable")}
    verdicts[method] = {**verdict, "mean": m}
for method, v in verdicts.items():
    print(f"{method:{W}s} ImageNet16-120 percentile {v['mean']:5.1f}: {v['vs random']}; {v['transfer']}")
proto = manifests.get("nb201_comparison", {}).get("config", {}).get("base", {})
if proto:
    print(f"\nsearch protocol (nb201_comparison manifest, {manifests['nb201_comparison']['mode']} mode): "
          + ", ".join(f"{k} = {v}" for k, v in proto.items()))

# %% [markdown]
# ## 4. Budgets: our networks beside the published mobile-setting table
#
# The mobile setting caps the multiply-adds at 600 M for a 224 × 224 image (DARTS appendix A.2.3, after NASNet).
# DARTS' Table 3, as published (top-1 / top-5 error after training on ImageNet; parameters; multiply-adds; the
# search's GPU-days), beside the sizes of our networks. Ours are computed here; nobody trained them on ImageNet
# in this course, so they have no error to show.

# %%
PUBLISHED = {  # Liu, Simonyan & Yang, "DARTS", ICLR 2019, Table 3: (top-1 %, top-5 %, params M, mult-adds M,
    # search cost GPU-days, search method); None where the table has a dash
    "Inception-v1": (30.2, 10.1, 6.6, 1448, None, "manual"),
    "MobileNet": (29.4, 10.5, 4.2, 569, None, "manual"),
    "ShuffleNet 2x (g = 3)": (26.3, None, 5.0, 524, None, "manual"),  # "~5" M parameters in the table
    "NASNet-A": (26.0, 8.4, 5.3, 564, 2000, "RL"),
    "NASNet-B": (27.2, 8.7, 5.3, 488, 2000, "RL"),
    "NASNet-C": (27.5, 9.0, 4.9, 558, 2000, "RL"),
    "AmoebaNet-A": (25.5, 8.0, 5.1, 555, 3150, "evolution"),
    "AmoebaNet-B": (26.0, 8.5, 5.3, 555, 3150, "evolution"),
    "AmoebaNet-C": (24.3, 7.6, 6.4, 570, 3150, "evolution"),
    "PNAS": (25.8, 8.1, 5.1, 588, 225, "SMBO"),  # "~225" GPU-days in the table
    "DARTS (searched on CIFAR-10)": (26.7, 8.7, 4.7, 574, 4, "gradient-based"),
}
print(f"{'published (DARTS Table 3)':30s} {'top-1':>6s} {'top-5':>6s} {'params':>7s} {'mult-adds':>10s} "
      f"{'GPU-days':>9s}  method")
APPROX = {"ShuffleNet 2x (g = 3)": "params", "PNAS": "cost"}  # the table's "~"
for name, (t1, t5, p, m, cost, how) in PUBLISHED.items():
    params = ("~" if APPROX.get(name) == "params" else "") + f"{p:.1f}M"
    days = "-" if cost is None else ("~" if APPROX.get(name) == "cost" else "") + str(cost)
    print(f"{name:30s} {t1:6.1f} {'-' if t5 is None else t5:>6} {params:>7s} {m:9d}M {days:>9s}  {how}"
          + ("   (over the mobile budget: listed for reference)" if m * 1e6 > MOBILE_MACS else ""))

# %% [markdown]
# Ours: DARTS_V1 and DARTS_V2; the DARTS-space cells that this course's own searches found on CIFAR-10
# (chapter 04's `darts_variational` and chapter 05's `bayes_darts`, loaded with their manifests); and random
# DARTS cells, a baseline that shows how much of the budget depends on the cell at all. All at $C = 48$ and 14
# cells, as DARTS_V2 is published.

# %%
def size_of(genotype):
    model = DARTS_SPACE.build_network(genotype, dataset="imagenet")
    return networks.count_parameters(model) / 1e6, networks.count_macs(model, (1, 3, 224, 224)) / 1e6


ours = {name: (sizes[name]["params"] / 1e6, sizes[name]["macs"] / 1e6) for name in ("DARTS_V1", "DARTS_V2")}
short = {name: name for name in ours}  # the plot's labels
for folder in ("darts_variational", "bayes_darts"):
    loaded = results.load_sweep(folder)
    if loaded is None:
        print(results.missing(folder))
        continue
    print(loaded.describe())
    points = loaded.results.get("points") or [{}]
    for i, run in enumerate(loaded.results["runs"]):
        point = points[run.get("point", 0)]
        label = f"{folder} #{i}: {run['method']}" + "".join(f", {k}={v}" for k, v in point.items()) + \
            f" (seed {run['seed']})"
        ours[label] = size_of(spaces.load_genotype(run["genotype"]))
        short[label] = f"{folder} #{i}"
N_RANDOM = 3 if MODE == "smoke" else 30
gen = vnas.setup(seed=0)
start = time.perf_counter()
random_sizes = np.array([size_of(darts.random_genotype(gen)) for _ in range(N_RANDOM)])
print(f"\n{N_RANDOM} random DARTS cells sized in {time.perf_counter() - start:.0f} s")
W = max(map(len, ours))
print(f"{'ours (C = 48, 14 cells)':{W}s} {'params':>8s} {'mult-adds':>10s}")
for name, (p, m) in ours.items():
    print(f"{name:{W}s} {p:7.2f}M {m:9.1f}M " + ("" if m * 1e6 < MOBILE_MACS else " OVER the mobile budget"))
under = (random_sizes[:, 1] * 1e6 < MOBILE_MACS).mean()
print(f"{'random cells: ' + str(N_RANDOM):{W}s} {random_sizes[:, 0].min():.2f}-{random_sizes[:, 0].max():.2f}M "
      f"{random_sizes[:, 1].min():.0f}-{random_sizes[:, 1].max():.0f}M; {100 * under:.0f}% under "
      f"{MOBILE_MACS / 1e6:.0f} M")

# %%
mobile = {name: (p, m) for name, (_, _, p, m, _, _) in PUBLISHED.items() if m * 1e6 <= MOBILE_MACS}
fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
plots.plot_budgets(mobile, {short[name]: v for name, v in ours.items()}, ax=ax, limit=MOBILE_MACS / 1e6,
                   cloud=(random_sizes[:, 0], random_sizes[:, 1]),
                   title="mobile setting: published (DARTS Table 3) and ours (computed here)")
plt.show()

# %% [markdown]
# ## 5. What this chapter shows, and what it cannot
#
# Computed from the numbers above.

# %%
summary = []
gap = 100 * (v2["macs"] / PUBLISHED_V2["macs"] - 1)
summary.append(f"- Stacking: DARTS_V2's ImageNet network has {v2['params'] / 1e6:.2f} M parameters (published 4.7 M) "
               f"and {v2['macs'] / 1e6:.0f} M conv + linear multiply-adds at 224 x 224, {gap:+.1f}% from the "
               f"published 574 M; adding batch norm, pooling and the auxiliary head gives {everything / 1e6:.0f} M. The "
               f"stem spends {100 * stem_share:.1f}% of the multiply-adds to take the cells from 224 x 224 to "
               f"{first_res} x {first_res}.")
(rho, lo, hi), (tau, tlo, thi) = corr[("CIFAR-10", "ImageNet16-120")].values()
summary.append(f"- Transfer over all {len(c10):,} NB201 cells: CIFAR-10 and ImageNet16-120 accuracies rank cells "
               f"alike (Spearman {rho:.3f} [{lo:.3f}, {hi:.3f}], Kendall {tau:.3f} [{tlo:.3f}, {thi:.3f}]): "
               f"(1 + tau) / 2 = {(1 + tau) / 2:.2f}, roughly the share of pairs of cells (untied) that both datasets "
               f"order the same way.")
summary.append(f"- Among the top 1% by CIFAR-10 ({k} cells) the Spearman correlation with ImageNet16-120 "
               f"{'falls to' if rho_in[0] < rho else 'is'} {rho_in[0]:.3f} [{rho_in[1]:.3f}, {rho_in[2]:.3f}] (CIFAR-100: {rho_100[0]:.3f}); "
               + ("weaker than CIFAR-100's beyond the bootstrap intervals; " if 0.01 in weaker_at else
                  "the intervals of the two overlap there; ")
               + (f"ImageNet16-120's lies below CIFAR-100's among the top {tops(weaker_at)}. " if weaker_at else
                  "no cut separates them. ")
               + f"{100 * overlap:.0f}% of these cells are also ImageNet16-120's top 1%, and the CIFAR-10 winner "
                 f"is {in16[best_in16] - in16[best_c10]:.2f} points below the ImageNet16-120 optimum "
                 f"({in16[best_in16]:.2f}; published 47.31).")
if stats:
    searches = [m for m in verdicts if m != "random"]  # `random`: chapter 04's random cells, a baseline
    best = max(searches, key=lambda m: verdicts[m]["mean"])
    above = [m for m in searches if verdicts[m]["vs random"] == "above a random cell"]
    losing = [m for m in searches if verdicts[m]["transfer"] == "loses rank in transfer"]
    modes = sorted({m["mode"] for m in manifests.values()})
    summary.append(f"- Found cells ({'/'.join(modes)}-mode searches, {len(next(iter(stats.values()))['acc'])} seeds "
                   f"each): "
                   f"the cells of {len(above)} of the {len(searches)} searches rank above a random cell on ImageNet16-120 "
                   f"({', '.join(above) or 'none'}); the highest mean percentile is {best}'s, "
                   f"{verdicts[best]['mean']:.1f}. Cells that lose percentile in transfer beyond the seeds' spread: "
                   f"{', '.join(losing) or 'none'}.")
else:
    summary.append("- No stored search results: the found cells could not be ranked.")
lo_m, hi_m = random_sizes[:, 1].min(), random_sizes[:, 1].max()
over = [short[n] for n, (_, m) in ours.items() if m * 1e6 >= MOBILE_MACS]
pub = [m for _, m in mobile.values()]
close_pairs = sum(abs(a - b) / max(a, b) < abs(gap) / 100 for i, a in enumerate(pub) for b in pub[i + 1:])
n_pairs = len(pub) * (len(pub) - 1) // 2
summary.append(f"- Budgets: at C = 48 and 14 cells, {100 * under:.0f}% of {N_RANDOM} random DARTS cells fit under 600 M "
               f"(from {lo_m:.0f} M to {hi_m:.0f} M)"
               + (": the cell, not only C, decides whether the network fits the mobile setting" if lo_m < 600 < hi_m
                  else "") + f"; over the budget among ours: {', '.join(over) or 'none'}. Counters disagree by "
               f"{abs(gap):.1f}% on the same network (section 1); {close_pairs} of the {n_pairs} pairs of mobile-setting "
               f"rows in the published table differ by less than that.")
summary.append("- Not shown: any ImageNet training (the published 26.7% top-1 error of DARTS is the paper's, not "
               "ours); transfer to 224 x 224 images (NB201's ImageNet16-120 is 16 x 16, in NB201's skeleton); the "
               "training noise of each table entry.")
if MODE == "smoke":
    summary.append(f"- SMOKE MODE: {B} bootstrap resamples and {N_RANDOM} random cells; the intervals and the "
                   "random-cell range above are not results.")
print("\n".join(summary))
print(f"\nchapter run time: {(time.perf_counter() - CHAPTER_START) / 60:.1f} min ({MODE} mode)")
