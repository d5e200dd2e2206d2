# %% [markdown]
# # 00 · Welcome: how this course works, and a first look at CIFAR-10
#
# This course builds **Bayesian neural architecture search** from the ground up. Instead of picking
# one architecture by a point estimate (as DARTS does), we put a *distribution* over the choice of
# operation on every edge of a cell (a Dirichlet prior and posterior), and possibly over the weights,
# and learn it by maximising an evidence lower bound (ELBO). Every derivation is checked by code, and
# every number you see comes from code that ran in this notebook.
#
# **The chapters**
#
# | chapter | what it teaches |
# | --- | --- |
# | 00 welcome | the modes, the data, the library; a first look at CIFAR-10 |
# | 01 Bayesian model selection | evidence, the ELBO derived and checked on an exact model |
# | 02 DARTS | search spaces, the continuous relaxation, bilevel search, genotypes, NAS-Bench-201 |
# | 03 stochastic relaxations | Gumbel-max, Concrete, straight-through, the Dirichlet and its gradients |
# | 04 Bayesian structure posterior | the variational search; DARTS / SNAS / GDAS / DrNAS / ours compared |
#
# **Modes.** One switch, `VNAS_MODE`, sizes every experiment:
# - `smoke`: a 1-2 step pass that only proves the code runs (used by CI; its numbers are *not* results);
# - `quick` (default): real, small experiments on a laptop CPU, minutes per chapter;
# - `full`: the published protocols, for a GPU.
#
# Run `make book` to execute every chapter and read them as HTML in `_build/`, `make lab` to open them
# in JupyterLab (the `.py` files open as notebooks through jupytext), and `make test` for the test suite.
#
# The first cell of every chapter prints the mode, the device, where the data came from and the
# torch version, so that a smoke-mode figure is never mistaken for a result.

# %%
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch

import vnas
from vnas import data, plots, widgets

vnas.setup(seed=0)
cifar = data.load_cifar10()
print(vnas.banner(cifar.describe()))

# %% [markdown]
# ## The library and the command line
#
# Reusable code lives in the package `vnas/`, which the chapters import. Data flows one way:
#
# `data → spaces + posteriors → supernet → objectives → search → genotype → final network → evaluation → plots`
#
# Everything a chapter does can also be run from the command line (on a GPU, for the paper-scale runs):

# %%
print(subprocess.run([sys.executable, "-m", "vnas", "--help"], capture_output=True, text=True, check=True).stdout)

# %% [markdown]
# ## Where the data comes from
#
# `vnas.data.load_cifar10()` takes the first of: the folder or `.npz` named by `VNAS_DATA`;
# `data/cifar10.npz` or the official `data/cifar-10-batches-py/`; a torchvision download if you allow it
# (`VNAS_DOWNLOAD=1`); and finally the 1,500-image subset shipped in `data/cifar10_tiny.npz`, which is
# enough to run the code but far too small for results. Smoke mode always uses the subset.

# %%
print("source:", cifar.describe())
print("train:", cifar.x_train.shape, cifar.x_train.dtype, " test:", cifar.x_test.shape)
plots.plot_image_grid(cifar.x_train, cifar.y_train, per_class=10)
plt.show()

# %% [markdown]
# CIFAR-10 (Krizhevsky, 2009) has 10 classes, 5,000 training and 1,000 test images each, at 32×32
# pixels. A balanced dataset means accuracy is a fair summary; we check the balance rather than assume it.

# %%
plots.plot_class_balance(cifar.y_train, cifar.y_test)
plt.show()
counts = np.bincount(cifar.y_train, minlength=10)
print(f"images per class in train: min {counts.min()}, max {counts.max()}")

# %% [markdown]
# ## Pixel statistics
#
# Networks see normalised pixels $\hat x_c = (x_c/255 - \mu_c)/\sigma_c$ with the per-channel mean
# $\mu_c$ and standard deviation $\sigma_c$ of the official training set. For $N$ images of $H \times W$
# pixels $x_{nijc} \in \{0, \dots, 255\}$, channel $c$ pools all $NHW$ of its pixels, whatever image they
# come from:
#
# $$\mu_c = \frac{1}{NHW} \sum_{n, i, j} \frac{x_{nijc}}{255}, \qquad
#   \sigma_c^2 = \frac{1}{NHW} \sum_{n, i, j} \Big(\frac{x_{nijc}}{255} - \mu_c\Big)^2. \tag{0.1}$$
#
# **Exercise.** Write `channel_stats(x)` for uint8 images `x` of shape (N, H, W, 3), NHWC as `cifar.x_train`
# stores them, returning `(mean, std)` with one value per channel each. The check says what is wrong, if
# anything.

# %%
def channel_stats(x):
    ### BEGIN SOLUTION
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255  # one row per pixel, one column per channel
    return pixels.mean(0), pixels.std(0)
    ### END SOLUTION


# %%
vnas.checks.check_channel_stats(channel_stats)

# %% [markdown]
# Now on the data we loaded, against the published statistics. (If your copy is the JPEG-rebuilt one
# described in `data/README.md`, expect the means to agree to about 0.001 and the standard deviations to be
# ~0.002 smaller: JPEG smooths a little.)

# %%
ours_mean, ours_std = channel_stats(cifar.x_train)
print(f"{'channel':>8} {'mean (ours)':>12} {'published':>10} {'std (ours)':>11} {'published':>10}")
for c, name in enumerate("RGB"):
    print(f"{name:>8} {ours_mean[c]:12.4f} {data.MEAN[c]:10.4f} {ours_std[c]:11.4f} {data.STD[c]:10.4f}")
print(f"(computed on {len(cifar.x_train)} training images from {cifar.source})")

# %% [markdown]
# ## Augmentation, batched on the device
#
# Training uses random crops (zero padding of 4 pixels), horizontal flips and, for final networks,
# cutout (a 16×16 square set to the mean colour; DeVries & Taylor, 2017). `vnas.data.Batches` keeps the
# whole dataset on the device as one uint8 tensor and augments a batch with a single gather, with no
# per-image Python, so the data never limits the speed of search. The same seed gives the same batches.
#
# Move the sliders to see what the network sees (in smoke mode you get a static figure).

# %%
widgets.explore(plots.plot_augmentations, fixed={"x": cifar.x_train},
                image=(0, len(cifar.x_train) - 1), pad=(0, 8), flip=[True, False], cutout=(0, 24), seed=(0, 20))

# %% [markdown]
# **Exercise: the random crop, once the offsets are drawn.** Pad an $H \times W$ image $x$ with $p$ zeros on
# every side, giving $\tilde x$ of $(H + 2p) \times (W + 2p)$ pixels, and cut out the $H \times W$ window whose
# top-left corner is $(\delta_y, \delta_x)$, with offsets $\delta_y, \delta_x \in \{0, \dots, 2p\}$ drawn for
# each image:
#
# $$x'_{ij} = \tilde x_{i + \delta_y,\, j + \delta_x}
#   = \begin{cases} x_{i + \delta_y - p,\ j + \delta_x - p} & \text{inside the image,} \\
#     0 & \text{otherwise.} \end{cases} \tag{0.2}$$
#
# $\delta_y = \delta_x = p$ leaves the image where it was; any other offset shifts it and uncovers a border
# of zeros. Write `pad_and_crop(x, pad, dy, dx)` for a uint8 torch tensor `x` of shape (n, H, W, C) (NHWC)
# and integer tensors `dy`, `dx` of shape (n,). The check compares it with `vnas.data.crop_flip` (without
# the flip), which draws the offsets and crops the whole batch in one gather.

# %%
def pad_and_crop(x, pad, dy, dx):
    ### BEGIN SOLUTION
    n, h, w, _ = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))  # NHWC: pad W and H, never C
    return torch.stack([padded[k, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])
    ### END SOLUTION


# %%
vnas.checks.check_pad_and_crop(pad_and_crop)

# %% [markdown]
# A batch as the search loop receives it: float32 pixels in $[0, 1]$, NCHW. Every network of the course
# normalises them in its first module (`vnas.ops.Normalise`, with the statistics above), so that a
# model is a function of pixels: chapter 07 perturbs exactly those. Cutout holes hold the mean colour,
# which the normalisation maps to 0.

# %%
batches = data.Batches(cifar.x_train, cifar.y_train, batch_size=64, device=vnas.device(), cutout=16, seed=0)
x, y = next(iter(batches))
normalised = vnas.ops.Normalise().to(x.device)(x)
print(f"{len(batches)} batches per epoch; x {tuple(x.shape)} {x.dtype} on {x.device}, in "
      f"[{x.min():.2f}, {x.max():.2f}]; after Normalise, per-channel mean "
      f"{normalised.mean((0, 2, 3)).cpu().numpy().round(2)} and std {normalised.std((0, 2, 3)).cpu().numpy().round(2)}")

# %% [markdown]
# ## Exercise: a stratified split
#
# DARTS searches with half of the training set for the weights and the other half for the architecture.
# Both halves must keep the class balance. Write `split_in_two(y, seed)` returning two disjoint index
# arrays, each with half of every class. The check says what is wrong, if anything.

# %%
def split_in_two(y, seed=0):
    ### BEGIN SOLUTION
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.concatenate(first), np.concatenate(second)
    ### END SOLUTION


# %%
vnas.checks.check_stratified_split(split_in_two)

# %% [markdown]
# `vnas.data.stratified_split` is the library's version, used by every search in the course.
#
# **Next:** chapter 01 derives the evidence lower bound and checks it on a model where everything is exact.
