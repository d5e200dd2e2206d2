"""Pictures of the data: image grids, class balance, augmentations. Introduced in chapters/00_welcome.py."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from vnas import data

__all__ = ["plot_image_grid", "plot_class_balance", "plot_augmentations"]


def _axes(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_image_grid(x: np.ndarray, y: np.ndarray, per_class: int = 8, seed: int = 0, ax=None):
    """A grid with one row per class and ``per_class`` random images of it (uint8 NHWC input).

    Introduced in chapters/00_welcome.py.
    """
    ax = _axes(ax, (per_class * 0.8 + 1.5, 8))
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        pick = rng.choice(idx, min(per_class, len(idx)), replace=False)
        tiles = [x[i] for i in pick] + [np.full_like(x[0], 255)] * (per_class - len(pick))
        rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in tiles], 1))
    ax.imshow(np.concatenate(rows, 0))
    ax.set_yticks([34 * c + 17 for c in range(10)], data.CLASSES)
    ax.set_xticks([])
    ax.set_title(f"{per_class} random images per class")
    return ax


def plot_class_balance(y_train: np.ndarray, y_test: np.ndarray, ax=None):
    """Images per class in the train and test sets. Introduced in chapters/00_welcome.py."""
    ax = _axes(ax, (8, 3))
    pos = np.arange(10)
    ax.bar(pos - 0.2, np.bincount(y_train, minlength=10), 0.4, label=f"train ({len(y_train)})")
    ax.bar(pos + 0.2, np.bincount(y_test, minlength=10), 0.4, label=f"test ({len(y_test)})")
    ax.set_xticks(pos, data.CLASSES, rotation=30)
    ax.set_ylabel("images")
    ax.legend()
    return ax


def plot_augmentations(x: np.ndarray, image: int = 0, pad: int = 4, flip: bool = True, cutout: int = 16,
                       copies: int = 8, seed: int = 0, ax=None):
    """One training image as the batched augmentation of vnas.data sees it, ``copies`` times.

    Cutout holes hold the mean colour, as in the batches the networks see.
    Introduced in chapters/00_welcome.py.
    """
    ax = _axes(ax, (copies * 1.1, 1.6))
    gen = torch.Generator().manual_seed(seed)
    batch = torch.as_tensor(x[image:image + 1]).repeat(copies, 1, 1, 1)
    out = data.crop_flip(batch, gen, pad=pad, flip=flip) if pad else batch
    if cutout:
        hole = data.cutout_mask(copies, 32, 32, cutout, gen).permute(0, 2, 3, 1)
        out = torch.where(hole, torch.tensor(data.MEAN) * 255, out.float()).round().to(torch.uint8)
    tiles = [np.pad(t.numpy(), ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in out]
    ax.imshow(np.concatenate([np.pad(x[image], ((1, 1), (1, 1), (0, 0)), constant_values=255),
                              np.full((34, 6, 3), 255, np.uint8)] + tiles, 1))
    ax.set_axis_off()
    ax.set_title(f"original | {copies} draws: crop (pad {pad}), flip {'on' if flip else 'off'}, cutout {cutout}")
    return ax
