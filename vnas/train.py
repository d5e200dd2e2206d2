"""Training a final network from a genotype (the DARTS evaluation protocol), with a run folder that resumes.

    loss = CE(logits, y) + auxiliary_weight * CE(logits_aux, y);  drop-path ramps 0 -> drop_path;
    SGD + cosine schedule, cutout, gradient clipping; bf16 autocast on CUDA.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vnas import config, data, runs, spaces
from vnas.networks import build_network


@dataclass
class TrainConfig:
    """The evaluation protocol; defaults are the DARTS paper's (configs/train_<space>.toml sets each mode)."""

    genotype: str = "DARTS_V2"  # a published name, a genotype string, or a genotype.json path
    layers: int = 20  # DARTS: cells; NB201: cells per stage (N)
    channels: int = 36
    auxiliary: bool = True  # DARTS networks only
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2  # DARTS networks only
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int = 16
    images_per_class: int = 0  # 0: the whole training set
    test_images_per_class: int = 0  # 0: the whole test set
    steps_per_epoch: int = 0  # 0: one pass over the training images
    seed: int = 0
    channels_last: bool = True
    amp: bool = True

    def __post_init__(self):
        for name in ("layers", "channels", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path={self.drop_path} must lie in [0, 1).")


def load_train_config(genotype: str, file: Path | None = None, run_mode: str | None = None,
                      **overrides) -> TrainConfig:
    """configs/train_<space>.toml for the genotype's space and the mode, then ``file``, then ``overrides``."""
    space = spaces.space_of(spaces.load_genotype(genotype)).name
    return config.load_config(TrainConfig, f"train_{space}", file, run_mode, genotype=str(genotype), **overrides)


def network_kwargs(cfg: TrainConfig, genotype) -> dict:
    """The keyword arguments of vnas.networks.build_network for this config and genotype."""
    if spaces.space_of(genotype).name == "darts":
        return dict(C=cfg.channels, layers=cfg.layers, auxiliary=cfg.auxiliary, drop_path=cfg.drop_path)
    return dict(C=cfg.channels, N=cfg.layers)


class Trainer(runs.EpochLoop):
    """Train and evaluate one final network; in memory (``run=None``) or backed by a run folder.

    Introduced in chapters/02_darts.py.
    """

    KIND, CONFIG = "train", TrainConfig

    def __init__(self, cfg: TrainConfig, run: runs.RunDir | None = None, dataset: data.Cifar10 | None = None,
                 device: torch.device | None = None, progress: bool = True):
        self.cfg, self.run, self.progress = cfg, run, progress
        self.device = device or config.device()
        config.setup(cfg.seed)
        self.genotype = spaces.load_genotype(cfg.genotype)
        self.model = build_network(self.genotype, num_classes=10, **network_kwargs(cfg, self.genotype))
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        d = dataset or data.load_cifar10()
        tr = data.per_class_subset(d.y_train, cfg.images_per_class, cfg.seed) if cfg.images_per_class \
            else np.arange(len(d.y_train))
        te = data.per_class_subset(d.y_test, cfg.test_images_per_class, cfg.seed) if cfg.test_images_per_class \
            else np.arange(len(d.y_test))
        common = dict(device=self.device, channels_last=cfg.channels_last)
        self.train_batches = data.Batches(d.x_train[tr], d.y_train[tr], min(cfg.batch_size, len(tr)), cutout=cfg.cutout,
                                          seed=cfg.seed, **common)
        self.test_batches = data.Batches(d.x_test[te], d.y_test[te], 256, train=False, **common)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(cfg.epochs, 1),
                                                                    eta_min=cfg.lr_min)
        self.epoch = 0
        self.history: list[dict] = []

    def steps_per_epoch(self) -> int:
        n = len(self.train_batches)
        return min(n, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else n

    def train_epoch(self, on_step=None) -> dict:
        cfg, start = self.cfg, time.perf_counter()
        self.model.train()
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = cfg.drop_path * self.epoch / max(cfg.epochs, 1)
        self.train_batches.set_epoch(self.epoch)
        lr = self.scheduler.get_last_lr()[0]
        total, correct, loss_sum = 0, 0, 0.0
        steps = self.steps_per_epoch()
        for step, (x, y) in enumerate(self.train_batches):
            if step >= steps:
                break
            with self._autocast():
                out = self.model(x)
                logits, logits_aux = out if isinstance(out, tuple) else (out, None)
                loss = F.cross_entropy(logits, y)
                if logits_aux is not None:
                    loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y)
            if not torch.isfinite(loss):
                raise self._non_finite("training", loss.item(), step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
            if on_step is not None:
                on_step()
        self.scheduler.step()
        test = self.evaluate()
        self.epoch += 1
        row = {"epoch": self.epoch, "lr": lr, "train_loss": loss_sum / max(total, 1),
               "train_acc": correct / max(total, 1), "test_loss": test["loss"], "test_acc": test["acc"],
               "seconds": time.perf_counter() - start}
        self.history.append(row)
        return row

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss and accuracy on the test images."""
        self.model.eval()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in self.test_batches:
            with self._autocast():
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}

    def model_state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def description(self) -> str:
        return f"train {self.genotype}"[:60]

    @staticmethod
    def summary(row: dict) -> str:
        return (f"epoch {row['epoch']:3d} | train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
                f"test loss {row['test_loss']:.3f} acc {row['test_acc']:.3f} | {row['seconds']:.1f}s")

    def final(self) -> dict:
        return {"test_acc": self.history[-1]["test_acc"] if self.history else None}


def start(cfg: TrainConfig, out: Path, overwrite: bool = False, run_mode: str | None = None, **kw) -> Trainer:
    run = runs.RunDir.create(out, "train", config.config_dict(cfg), run_mode or config.mode(), overwrite=overwrite)
    trainer = Trainer(cfg, run=run, **kw)
    run.write_json("genotype.json", trainer.genotype.to_json())
    return trainer


resume = Trainer.resume  # the training of a run folder, restored from its checkpoint
