"""The search loop: alternate weight steps (search-train half) and architecture steps (search-val half),
record how the architecture distribution moves, checkpoint every epoch, resume exactly.

    for each step:  alpha <- Architect.step(train batch, val batch)           (objectives)
                    w     <- SGD on L_train(w, m),  m ~ q(alpha)              (DARTS Alg. 1)

Methods: the distributions of vnas.posteriors (darts, snas, gdas, drnas, variational), plus two
baselines: ``random_ws`` (random sampling with shared weights: every weight step trains one uniformly
drawn cell, then the best of ``candidates`` random cells on validation data is kept; Li & Talwalkar,
2019) and ``random`` (one random cell, no search).
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vnas import config, data, posteriors, runs, spaces
from vnas.objectives import Architect
from vnas.runs import NonFiniteError
from vnas.supernet import build_supernet

BASELINES = ("random_ws", "random")
METHODS = (*posteriors.METHODS, *BASELINES)
# Which spaces each method is defined for. Every method here works on both cell spaces; a method that
# needs a space's structure (e.g. a progressive, DARTS-only schedule) would list only that space.
METHOD_SPACES = {m: ("darts", "nb201") for m in METHODS}


@dataclass
class SearchConfig:
    """One search's protocol; defaults are the DARTS paper's (configs/search_<space>.toml sets each mode)."""

    space: str = "darts"
    method: str = "darts"
    layers: int = 8  # DARTS: cells in the supernet; NB201: cells per stage (N)
    channels: int = 16
    partial_channels: int = 1  # PC-DARTS: 1/K of the channels enter each mixed op (1 = off)
    images_per_class: int = 0  # 0: the whole training set; else a class-balanced subset, split in two halves
    batch_size: int = 64
    epochs: int = 50
    steps_per_epoch: int = 0  # 0: one pass over the search-train half
    eval_batches: int = 0  # validation batches for the per-epoch accuracy (0: all)
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_start_epoch: int = 0  # warm-up epochs with weight steps only (DrNAS uses 10 of 25 per stage)
    order: str = "first"  # "second": one unrolled step, DARTS Eq. 7-8
    candidates: int = 10  # random_ws: random cells compared at the end of every epoch
    posterior: dict = field(default_factory=dict)  # options of the method's distribution (vnas.posteriors)
    seed: int = 0
    channels_last: bool = True
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self):
        spaces.get_space(self.space)  # raises with the valid names
        if self.method not in METHODS:
            close = difflib.get_close_matches(self.method, METHODS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown method {self.method!r}; valid methods: {', '.join(METHODS)}.{hint}")
        if self.space not in METHOD_SPACES[self.method]:
            raise ValueError(f"Method {self.method!r} is defined for the spaces {METHOD_SPACES[self.method]}, "
                             f"not {self.space!r}.")
        if self.order not in ("first", "second"):
            raise ValueError(f"order={self.order!r}: use 'first' or 'second'.")
        for name in ("layers", "channels", "partial_channels", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.epochs < 0 or self.steps_per_epoch < 0 or self.images_per_class < 0:
            raise ValueError("epochs, steps_per_epoch and images_per_class must be >= 0.")
        if self.method in BASELINES and self.posterior:
            raise ValueError(f"Method {self.method!r} has no distribution options; remove `posterior`.")
        if self.method in BASELINES and self.order != "first":
            raise ValueError(f"Method {self.method!r} has no architecture step, so order={self.order!r} does not "
                             "apply; leave order at 'first'.")


def load_search_config(space: str = "darts", file: Path | None = None, run_mode: str | None = None,
                       **overrides) -> SearchConfig:
    """configs/search_<space>.toml for the mode, then ``file``, then ``overrides``.

    Introduced in chapters/02_darts.py."""
    spaces.get_space(space)
    return config.load_config(SearchConfig, f"search_{space}", file, run_mode, space=space, **overrides)


class UniformCells(torch.nn.Module):
    """Random sampling with shared weights: every sample is the one-hot of a uniformly drawn cell."""

    def __init__(self, space: spaces.Space, seed: int):
        super().__init__()
        self.space = space
        self.generator = torch.Generator().manual_seed(seed)
        self.best = None  # the cell kept at the last evaluation

    def sample(self) -> dict[str, torch.Tensor]:
        return self.space.one_hot(self.space.random_genotype(self.generator))

    def mean(self) -> dict[str, torch.Tensor]:
        return self.space.one_hot(self.best) if self.best is not None else self.sample()


class Search(runs.EpochLoop):
    """A search in memory (``run=None``, as in the chapters) or backed by a run folder (the CLI).

    Introduced in chapters/02_darts.py.
    """

    KIND, CONFIG = "search", SearchConfig

    def __init__(self, cfg: SearchConfig, run: runs.RunDir | None = None, dataset: data.Cifar10 | None = None,
                 device: torch.device | None = None, progress: bool = True):
        self.cfg, self.run, self.progress = cfg, run, progress
        self.device = device or config.device()
        self.space = spaces.get_space(cfg.space)
        config.setup(cfg.seed)
        self.dataset = dataset or data.load_cifar10()
        self._make_data()
        num_classes = 10
        depth = {"layers": cfg.layers} if cfg.space == "darts" else {"N": cfg.layers}
        self.supernet = build_supernet(cfg.space, C=cfg.channels, num_classes=num_classes,
                                       partial_channels=cfg.partial_channels, **depth).to(self.device)
        if cfg.channels_last:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        if cfg.method in BASELINES:
            self.posterior = UniformCells(self.space, cfg.seed)
            self.architect = None
        else:
            self.posterior = posteriors.build_posterior(cfg.method, self.space.cell_types, self.space.num_edges,
                                                        self.space.num_ops, **cfg.posterior).to(self.device)
            self.architect = Architect(self.supernet, self.posterior, num_data=len(self.val_idx), order=cfg.order,
                                       lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                       weight_decay=cfg.arch_weight_decay)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(cfg.epochs, 1),
                                                                    eta_min=cfg.lr_min)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []

    def _make_data(self) -> None:
        cfg, d = self.cfg, self.dataset
        idx = np.arange(len(d.y_train))
        if cfg.images_per_class:
            idx = data.per_class_subset(d.y_train, min(cfg.images_per_class, np.bincount(d.y_train).min()),
                                        seed=cfg.seed)
        a, b = data.stratified_split(d.y_train[idx], 0.5, seed=cfg.seed)
        self.train_idx, self.val_idx = idx[a], idx[b]
        batch = dict(batch_size=min(cfg.batch_size, len(self.val_idx)), device=self.device,
                     channels_last=cfg.channels_last)
        self.train_batches = data.Batches(d.x_train[self.train_idx], d.y_train[self.train_idx], seed=cfg.seed, **batch)
        self.val_batches = data.Batches(d.x_train[self.val_idx], d.y_train[self.val_idx], seed=cfg.seed + 1, **batch)

    # --- one epoch ---
    def steps_per_epoch(self) -> int:
        n = min(len(self.train_batches), len(self.val_batches))
        return min(n, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else n

    def _check(self, loss: torch.Tensor, what: str, step: int) -> None:
        if not torch.isfinite(loss):
            raise self._non_finite(what, loss.item(), step)
        if self.architect is not None:
            self.posterior.check_finite()  # a FloatingPointError naming the edge; train_epoch adds where and what

    def _step(self, train_batch, val_batch, lr: float, update_arch: bool, step: int):
        """One architecture step (if due) and one weight step.

        Returns (the architecture step's validation loss, the training loss, the training logits)."""
        val_loss = 0.0
        if update_arch:
            # finite differences need full precision: no bf16 for the second-order step
            with self._autocast() if self.cfg.order == "first" else contextlib.nullcontext():
                loss = self.architect.step(train_batch, val_batch, xi=lr)
            self._check(loss, "architecture (validation)", step)
            val_loss = loss.item()
        x, y = train_batch
        with torch.no_grad():
            mix = {k: v.detach() for k, v in self.posterior.sample().items()}
        with self._autocast():
            logits = self.supernet(x, mix)
            loss = F.cross_entropy(logits, y)
        self._check(loss.detach(), "training", step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return val_loss, loss.item(), logits.detach()

    def train_epoch(self, on_step=None) -> dict:
        """One epoch of alternating architecture and weight steps; returns the history row."""
        cfg = self.cfg
        start = time.perf_counter()
        self.supernet.train()
        if hasattr(self.posterior, "set_progress"):
            self.posterior.set_progress(self.epoch, cfg.epochs)
        self.train_batches.set_epoch(self.epoch)
        self.val_batches.set_epoch(self.epoch)
        lr = self.scheduler.get_last_lr()[0]
        update_arch = self.architect is not None and self.epoch >= cfg.arch_start_epoch
        total, correct, loss_sum, val_loss_sum = 0, 0, 0.0, 0.0
        steps = self.steps_per_epoch()
        for step, (train_batch, val_batch) in enumerate(zip(self.train_batches, self.val_batches, strict=False)):
            if step >= steps:
                break
            try:
                val_loss, loss, logits = self._step(train_batch, val_batch, lr, update_arch, step)
            except NonFiniteError:
                raise
            except FloatingPointError as err:  # a distribution that cannot sample (NaN concentration, ...)
                raise NonFiniteError(f"{err} (epoch {self.epoch + 1}, step {step}). " + self._kept()) from err
            y = train_batch[1]
            val_loss_sum += val_loss
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
            if on_step is not None:
                on_step()
        self.scheduler.step()
        if cfg.method == "random_ws":
            self.posterior.best = self._best_random_cell()
        val = self.evaluate()
        self.epoch += 1
        row = {"epoch": self.epoch, "lr": lr, "train_loss": loss_sum / max(total, 1),
               "train_acc": correct / max(total, 1), "val_loss": val["loss"], "val_acc": val["acc"],
               "arch_val_loss": val_loss_sum / steps if update_arch else None, "steps": steps}
        tau = getattr(self.posterior, "tau", None)
        if tau is not None:
            row["tau"] = float(tau)
        if hasattr(self.posterior, "edge_stats"):
            row["edges"] = self.posterior.edge_stats()
        genotype = self.genotype()
        row["genotype"] = str(genotype)
        if cfg.space == "nb201":
            row["nb201"] = spaces.nb201.table_accuracy(genotype)
        row["seconds"] = time.perf_counter() - start
        self.history.append(row)
        return row

    @torch.no_grad()
    def evaluate(self, mix: dict[str, torch.Tensor] | None = None, batches: int | None = None) -> dict:
        """Loss and accuracy on the search-val half with the point weights (the distribution's mean)."""
        self.supernet.eval()
        mix = mix if mix is not None else {k: v.detach() for k, v in self.posterior.mean().items()}
        limit = batches if batches is not None else (self.cfg.eval_batches or len(self.val_batches))
        total, correct, loss_sum = 0, 0, 0.0
        for i, (x, y) in enumerate(self.val_batches):
            if i >= limit:
                break
            with self._autocast():
                logits = self.supernet(x, mix)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        self.supernet.train()
        return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}

    def _best_random_cell(self):
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.epoch)
        cells = [self.space.random_genotype(gen) for _ in range(self.cfg.candidates)]
        scores = [self.evaluate(self.space.one_hot(g), batches=self.cfg.eval_batches or 2)["acc"] for g in cells]
        return cells[int(np.argmax(scores))]

    def genotype(self):
        """The cell the search has found so far (derived from the distribution's mean)."""
        if self.cfg.method == "random":
            return self.space.random_genotype(torch.Generator().manual_seed(self.cfg.seed))
        if self.cfg.method == "random_ws":
            return self.posterior.best if self.posterior.best is not None else self.space.random_genotype(
                torch.Generator().manual_seed(self.cfg.seed))
        return self.space.derive({k: v.detach().float().cpu() for k, v in self.posterior.mean().items()})

    # --- state ---
    def model_state(self) -> dict:
        state = {"supernet": self.supernet.state_dict()}
        if self.architect is not None:
            state["posterior"] = self.posterior.state_dict()
            state["arch_optimizer"] = self.architect.optimizer.state_dict()
        else:
            state["uniform_generator"] = self.posterior.generator.get_state()
            state["best"] = self.posterior.best.to_json() if self.posterior.best is not None else None
        return state

    def load_model_state(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        if self.architect is not None:
            self.posterior.load_state_dict(state["posterior"])
            self.architect.optimizer.load_state_dict(state["arch_optimizer"])
        else:
            self.posterior.generator.set_state(state["uniform_generator"])
            self.posterior.best = self.space.Genotype.from_json(state["best"]) if state["best"] else None

    # --- the whole search (EpochLoop.fit) ---
    def target_epochs(self) -> int:
        return self.epoch if self.cfg.method == "random" else self.cfg.epochs  # random: drawn, not searched

    def description(self) -> str:
        return f"{self.cfg.method} on {self.cfg.space}"

    @staticmethod
    def summary(row: dict) -> str:
        extra = f" | NB201 CIFAR-10 {row['nb201']['cifar10']:.2f}%" if "nb201" in row else ""
        return (f"epoch {row['epoch']:3d} | train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
                f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} | {row['seconds']:.1f}s{extra}\n"
                f"           {row['genotype']}")

    def save_epoch(self) -> None:
        super().save_epoch()
        if self.run is not None:
            self.run.write_json("genotype.json", self.genotype().to_json())

    def final(self) -> dict:
        return {"genotype": str(self.genotype())}


# --- run folders ---

def start(cfg: SearchConfig, out: Path, overwrite: bool = False, run_mode: str | None = None, **kw) -> Search:
    """A new search backed by the run folder ``out`` (refused if it already holds a run)."""
    run = runs.RunDir.create(out, "search", config.config_dict(cfg), run_mode or config.mode(), overwrite=overwrite)
    search = Search(cfg, run=run, **kw)
    if cfg.method == "random":
        search.save_epoch()
    return search


resume = Search.resume  # the search of a run folder, restored from its checkpoint
