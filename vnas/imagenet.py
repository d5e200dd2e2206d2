"""ImageNet: a folder of JPEGs streamed by DataLoader workers, the DARTS augmentation, and the DARTS protocol.

CIFAR-10 (``vnas.data``) is 180 MB of uint8: it lives on the device and is augmented there in batches.
ImageNet's 1.28 M training images (about 140 GB of JPEGs) fit in no device's memory, and decoding them is
the bottleneck: they are streamed from disk, decoded and augmented on the CPU by DataLoader worker processes
(``num_workers``; ``pin_memory`` speeds the copy to a GPU), a batch at a time.

The layout is torchvision's ``ImageFolder``: ``root/<class>/<image>.JPEG``, one folder per class (ImageNet's
``train/`` and ``val/`` after the usual preparation). The loader yields pixels in [0, 1]: the network
normalises them with ImageNet's statistics in its first module (``vnas.spaces.darts_imagenet``), as every
vnas network does, so that attacks and calibration work on pixels.

The protocol (configs/train_imagenet.toml, ``ImageNetTrainConfig``) is DARTS' mobile setting: Liu et al.,
ICLR 2019, appendix A.2, and the defaults of quark0/darts ``cnn/train_imagenet.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from vnas import config
from vnas.data import DataError

LAYOUT = "root/<class>/<image>.JPEG, one subfolder per class (e.g. train/n01440764/n01440764_10026.JPEG)"


def train_transform() -> transforms.Compose:
    """The DARTS ImageNet training augmentation (after Inception and NASNet): a random crop of 8%-100% of the
    image at a random aspect ratio resized to 224x224, a horizontal flip, colour jitter; pixels in [0, 1]."""
    return transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
        transforms.ToTensor(),
    ])


def eval_transform() -> transforms.Compose:
    """The evaluation view: the shorter side resized to 256, the central 224x224; pixels in [0, 1]."""
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])


def image_folder(root: str | os.PathLike, train: bool = True) -> datasets.ImageFolder:
    """The images under ``root`` (ImageFolder layout) with the training or the evaluation transform; a
    ``DataError`` that says what is wrong when ``root`` is missing, has no class folders, or a class folder
    holds no images."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"ImageNet folder {root} does not exist. Give a folder laid out as {LAYOUT}.")
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise DataError(f"ImageNet folder {root} has no class subfolders. The layout is {LAYOUT}.")
    # allow_empty: find the empty classes in the one walk over the files, and name them below
    dataset = datasets.ImageFolder(root, train_transform() if train else eval_transform(), allow_empty=True)
    counts = torch.bincount(torch.tensor(dataset.targets, dtype=torch.long), minlength=len(dataset.classes))
    empty = [name for name, n in zip(dataset.classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        shown = ", ".join(str(root / name) for name in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5
                                                                    else "")
        raise DataError(f"ImageNet folder {root}: {len(empty)} of {len(dataset.classes)} class folders hold no "
                        f"images: {shown}. Images are files ending in {', '.join(IMG_EXTENSIONS)} (any case).")
    return dataset


def loader(root: str | os.PathLike, batch_size: int, train: bool = True, num_workers: int = 4,
           pin_memory: bool = True, seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches ``(x, y)`` of ``root``'s images, x: (B, 3, 224, 224) pixels in [0, 1], y: class indices in the
    sorted order of the class folders. Training batches are shuffled (by ``seed``) and augmented; ``num_workers``
    processes decode them (0: in this process)."""
    dataset = image_folder(root, train)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers,
                                       pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def label_smoothing_nll(logits: torch.Tensor, y: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Cross-entropy against smoothed targets (1 - epsilon) * onehot(y) + epsilon / K, averaged over the batch:
    the ImageNet objective of DARTS (Szegedy et al., 2016)."""
    return F.cross_entropy(logits, y, label_smoothing=epsilon)


@dataclass
class ImageNetTrainConfig:
    """The DARTS ImageNet protocol (mobile setting); configs/train_imagenet.toml sets each mode."""

    genotype: str = "DARTS_V2"
    layers: int = 14  # cells
    channels: int = 48
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path: float = 0.0
    epochs: int = 250
    batch_size: int = 128
    lr: float = 0.1
    lr_gamma: float = 0.97  # lr <- lr * lr_gamma after every epoch
    momentum: float = 0.9
    weight_decay: float = 3e-5  # SGD's: the gradient of weight_decay / 2 * ||w||^2, BN parameters included
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    steps_per_epoch: int = 0  # 0: one pass over the training images
    num_workers: int = 4
    pin_memory: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("layers", "channels", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise config.ConfigError(f"{name}={getattr(self, name)} must be >= 1.")
        for name, lo, hi in (("drop_path", 0, 1), ("label_smoothing", 0, 1)):
            if not lo <= getattr(self, name) < hi:
                raise config.ConfigError(f"{name}={getattr(self, name)} must lie in [{lo}, {hi}).")
        if not 0 < self.lr_gamma <= 1:
            raise config.ConfigError(f"lr_gamma={self.lr_gamma} must lie in (0, 1]: the lr is multiplied by it "
                                     f"after every epoch.")
        if self.num_workers < 0:
            raise config.ConfigError(f"num_workers={self.num_workers} must be >= 0 (0: decode in this process).")


def load_imagenet_config(file: Path | None = None, run_mode: str | None = None, **overrides) -> ImageNetTrainConfig:
    """configs/train_imagenet.toml for the mode, then ``file``, then ``overrides``."""
    return config.load_config(ImageNetTrainConfig, "train_imagenet", file, run_mode, **overrides)


def build_optimizer(model: torch.nn.Module, cfg: ImageNetTrainConfig):
    """SGD with momentum and weight decay, and the lr schedule (x lr_gamma per epoch: call ``scheduler.step()``
    after each)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.lr_gamma)


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               cfg: ImageNetTrainConfig) -> torch.Tensor:
    """One SGD step on label-smoothed cross-entropy + auxiliary_weight x the auxiliary head's, gradient norm
    clipped to grad_clip; returns the (detached) loss."""
    model.train()
    out = model(x)
    logits, logits_aux = out if isinstance(out, tuple) else (out, None)
    loss = label_smoothing_nll(logits, y, cfg.label_smoothing)
    if logits_aux is not None:
        loss = loss + cfg.auxiliary_weight * label_smoothing_nll(logits_aux, y, cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach()


__all__ = ["ImageNetTrainConfig", "build_optimizer", "eval_transform", "image_folder", "label_smoothing_nll",
           "load_imagenet_config", "loader", "train_step", "train_transform"]
