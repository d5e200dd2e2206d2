"""The search loop: alternate architecture steps (search-val half) and weight steps (search-train half),
record every term of both objectives and how the architecture distribution moves, checkpoint every
epoch, resume exactly.

    for each step:  α <- Adam on Eq. (4.2): E_q[NLL_val(w, θ)] + KL(q(θ) || p(θ)) / N + regularisers
                    w <- SGD on NLL_train(w, θ) + λ/2 ||w||²,  θ ~ q                     (DARTS Alg. 1)

The loop knows no method and no space by name: the distribution (``vnas.posteriors``) says whether it
is trained, searched and sparse, and what its terms are; the space (``vnas.spaces``) builds the supernet
and scores a genotype.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vnas import config, data, metrics, objectives, posteriors, runs, spaces
from vnas.runs import NonFiniteError


@dataclass
class SearchConfig:
    """One search's protocol; defaults are the DARTS paper's (configs/search_<space>.toml sets each mode).

    The L2 on α is an option of the method's distribution (``posterior = {l2 = ...}``, DARTS' 1e-3 by
    default); the weights' L2 is ``weight_decay``. Both are terms of the objectives, not optimiser options."""

    space: str = "darts"
    method: str = "darts"
    layers: int = 8  # DARTS: cells in the supernet; NB201: cells per stage (N)
    channels: int = 16
    partial_channels: int = 1  # PC-DARTS: 1/K of the channels enter each mixed op (1 = off)
    images_per_class: int = 0  # 0: the whole training set; else a class-balanced subset, split in two halves
    image_size: int = 32  # < 32: images averaged down to this side (16: NB201's ImageNet16 resolution)
    batch_size: int = 64
    epochs: int = 50
    steps_per_epoch: int = 0  # 0: one pass over the search-train half
    eval_batches: int = 0  # validation batches for the per-epoch accuracy (0: all)
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4  # the weights' L2 term l2_w = weight_decay / 2 * ||w||^2
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple = (0.5, 0.999)
    arch_start_epoch: int = 0  # warm-up epochs with weight steps only (DrNAS uses 10 of 25 per stage)
    order: str = "first"  # "second": one unrolled step, DARTS Eq. 7-8
    hessian_every: int = 0  # epochs between collapse diagnostics (dominant eigenvalue of ∂²L_val/∂α²); 0: never
    hessian_batches: int = 1  # validation batches the Hessian's loss averages over
    posterior: dict = field(default_factory=dict)  # options of the method's distribution (vnas.posteriors)
    seed: int = 0
    channels_last: bool = True
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self):
        spaces.get_space(self.space)  # raises with the valid names
        method = posteriors.get_method(self.method)  # likewise
        if self.space not in method.spaces:
            raise ValueError(f"Method {self.method!r} is defined for the spaces {method.spaces}, not {self.space!r}.")
        if self.order not in ("first", "second"):
            raise ValueError(f"order={self.order!r}: use 'first' or 'second'.")
        for name in ("layers", "channels", "partial_channels", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.epochs < 0 or self.steps_per_epoch < 0 or self.images_per_class < 0 or self.hessian_every < 0:
            raise ValueError("epochs, steps_per_epoch, images_per_class and hessian_every must be >= 0.")
        if self.hessian_batches < 1:
            raise ValueError(f"hessian_batches={self.hessian_batches} must be >= 1.")
        if self.image_size not in (8, 16, 32):
            raise ValueError(f"image_size={self.image_size}: use 32 (CIFAR-10 as is), 16 or 8 (averaged down).")
        if not method.trained and self.order != "first":
            raise ValueError(f"Method {self.method!r} has no architecture step, so order={self.order!r} does not "
                             "apply; leave order at 'first'.")


def load_search_config(space: str = "darts", file: Path | None = None, run_mode: str | None = None,
                       **overrides) -> SearchConfig:
    """configs/search_<space>.toml for the mode, then ``file``, then ``overrides``.

    Introduced in chapters/02_darts.py."""
    space = spaces.get_space(space).name
    return config.load_config(SearchConfig, f"search_{space}", file, run_mode, space=space, **overrides)


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
        self.supernet = self.space.build_supernet(C=cfg.channels, layers=cfg.layers, num_classes=10,
                                                  partial_channels=cfg.partial_channels).to(self.device)
        if cfg.channels_last:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        self.posterior = posteriors.build_posterior(cfg.method, self.space, **cfg.posterior).to(self.device)
        # the L2 terms are in the objectives (objectives.architecture_terms / weight_terms), not here
        self.arch_optimizer = (torch.optim.Adam(self.posterior.parameters(), lr=cfg.arch_lr,
                                                betas=tuple(cfg.arch_betas)) if self.posterior.trained else None)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(cfg.epochs, 1),
                                                                    eta_min=cfg.lr_min)
        self.watch = runs.FiniteWatch(self.device)
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
        x_train, x_val = (data.downsample(d.x_train[i], cfg.image_size) for i in (self.train_idx, self.val_idx))
        self.train_batches = data.Batches(x_train, d.y_train[self.train_idx], seed=cfg.seed, **batch)
        self.val_batches = data.Batches(x_val, d.y_train[self.val_idx], seed=cfg.seed + 1, **batch)

    # --- one step ---
    def steps_per_epoch(self) -> int:
        n = min(len(self.train_batches), len(self.val_batches))
        return min(n, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else n

    def _active(self, theta):
        """Which ops run: only a sparse distribution's samples have exact zeros worth skipping."""
        return self.supernet.active(theta) if self.posterior.sparse else None

    def architecture_step(self, train_batch, val_batch, xi: float) -> dict:
        """One Adam step on the architecture objective, Eq. (4.2); returns its terms.

        The NLL's gradient with respect to θ comes first or second order; it reaches α through the sample
        θ(α) (``objectives.pullback``), the KL and the regularisers by autograd."""
        self.arch_optimizer.zero_grad(set_to_none=True)
        theta = self.posterior.sample()  # one reparameterised sample per edge, shared by the whole step
        active = self._active(theta)
        # finite differences need full precision: no bf16 for the second-order step
        with self._autocast() if self.cfg.order == "first" else contextlib.nullcontext():
            if self.cfg.order == "first":
                grad_theta, nll = objectives.first_order_gradient(self.supernet, theta, val_batch, active)
            else:
                grad_theta, nll = objectives.second_order_gradient(self.supernet, theta, train_batch, val_batch, xi,
                                                                   active=active)
        terms = objectives.architecture_terms(self.posterior, nll, num_data=len(self.val_idx))
        # the NLL's gradient reaches α through θ; the penalty (KL / N, L2 on α) carries its own
        (objectives.pullback(theta, grad_theta) + terms["penalty"]).backward()
        self.arch_optimizer.step()
        return terms

    def structure_kl_per_edge(self) -> dict[str, torch.Tensor] | None:
        """KL(q(θ_e) || p(θ_e)) [E] per cell type, detached, or None for a method without a prior term."""
        per_edge = self.posterior.structure_kl()
        return None if per_edge is None else {c: kl.detach() for c, kl in per_edge.items()}

    def weight_step(self, train_batch) -> tuple[dict, torch.Tensor]:
        """One SGD step on the weight objective at one sample of θ, Eq. (2.8): the NLL of the network that θ
        selects plus the L2 of that network's weights (every weight for a dense θ; for a one-hot θ only the
        sampled ops', as the SGD weight decay of GDAS and random search skips weights without a gradient).
        Returns its terms and the logits."""
        x, y = train_batch
        with torch.no_grad():
            theta = {k: v.detach() for k, v in self.posterior.sample().items()}
        active = self._active(theta)
        with self._autocast():
            logits = self.supernet(x, theta, active)
            nll = objectives.expected_nll(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        # the weights of the network that θ selects: all of them for a dense θ, the sampled ops' for a one-hot one
        used = [p for p in self.supernet.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(used, self.cfg.grad_clip)  # the data term's gradient is clipped (DARTS) ...
        terms = objectives.weight_terms(nll, len(self.train_idx), used, self.cfg.weight_decay,
                                        weight_kl=objectives.weight_kl(self.supernet))
        terms["penalty"].backward()  # ... and the L2 term's is added after, where SGD adds its weight decay
        self.optimizer.step()
        return terms, logits.detach()

    # --- one epoch ---
    def train_epoch(self, on_step=None) -> dict:
        """One epoch of alternating architecture and weight steps; returns the history row."""
        cfg = self.cfg
        start = time.perf_counter()
        self.supernet.train()
        self.posterior.set_progress(self.epoch, max(cfg.epochs, self.epoch + 1))
        self.train_batches.set_epoch(self.epoch)
        self.val_batches.set_epoch(self.epoch)
        lr = self.scheduler.get_last_lr()[0]
        update_arch = self.posterior.trained and self.epoch >= cfg.arch_start_epoch
        means = runs.EpochMeans()
        self.watch.reset()
        steps = self.steps_per_epoch()
        for step, (train_batch, val_batch) in enumerate(zip(self.train_batches, self.val_batches, strict=False)):
            if step >= steps:
                break
            watched = {}
            if update_arch:
                kl_edges = self.structure_kl_per_edge()  # before the step: the KL its objective holds, per edge
                arch = self.architecture_step(train_batch, val_batch, xi=lr)
                means.add("architecture", arch)
                if kl_edges is not None:
                    means.add("structure_kl_edge", kl_edges)
                watched["architecture"] = arch["objective"]
            weights, logits = self.weight_step(train_batch)
            means.add("weights", weights)
            means.add("train", {"acc": (logits.argmax(1) == train_batch[1]).float().mean()})
            watched["weight"] = weights["objective"]
            self.check(self.watch.watch(step, watched, self.posterior.valid()))
            if on_step is not None:
                on_step()
        self.check(self.watch.bad())  # on CUDA the only read back of the epoch
        self.scheduler.step()
        self.posterior.end_epoch(self.score_theta)
        val = self.evaluate()
        self.epoch += 1
        terms = means.means()
        row = {"epoch": self.epoch, "lr": lr, "steps": steps,
               "train_loss": terms["weights"]["nll"], "train_acc": terms["train"]["acc"],
               "val_loss": val["nll"], "val_acc": val["acc"],
               "architecture": terms.get("architecture"), "structure_kl_edge": terms.get("structure_kl_edge"),
               "weights": terms["weights"], **self.posterior.scalars(), "edges": self.posterior.edge_stats()}
        if self._curvature_due():
            row["hessian_eigenvalue"] = self.architecture_curvature()
        genotype = self.genotype()
        row["genotype"] = str(genotype)
        row["parameter_free_share"] = self.space.parameter_free_share(genotype)
        score = self.space.score(genotype)
        if score is not None:
            row["score"] = score
        row["seconds"] = time.perf_counter() - start
        self.history.append(row)
        return row

    def diagnose(self) -> str:
        found = []
        try:
            self.posterior.check_finite()
        except FloatingPointError as err:
            found.append(f"{err}.")
        name = runs.first_non_finite(self.supernet)
        if name:
            found.append(f"The first non-finite supernet weight is {name}.")
        return " ".join(found)

    def evaluate(self, theta: dict[str, torch.Tensor] | None = None, batches: int | None = None) -> dict:
        """Accuracy and NLL on the search-val half with the supernet at θ (default: the distribution's mean)."""
        theta = {k: v.detach() for k, v in (theta if theta is not None else self.posterior.mean()).items()}
        limit = batches if batches is not None else (self.cfg.eval_batches or None)
        return metrics.evaluate(self.supernet.at(theta, self._active(theta)), self.val_batches, max_batches=limit,
                                amp=self.cfg.amp)

    def score_theta(self, theta: dict[str, torch.Tensor]) -> float:
        """The validation accuracy of the supernet at θ on a few batches: what ``end_epoch`` hooks rank by."""
        return self.evaluate(theta, batches=self.cfg.eval_batches or 2)["acc"]

    def genotype(self):
        """The cell the search has found so far, derived from the distribution's mean."""
        return self.space.derive({k: v.detach().float().cpu() for k, v in self.posterior.mean().items()})

    @torch.no_grad()
    def sample_genotypes(self, samples: int) -> list:
        """``samples`` cells drawn from q: the genotype derived from each sample θ ~ q (for a point estimate,
        the same cell every time).
    Introduced in chapters/04_bayesian_structure_posterior.py."""
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}.")
        return [self.space.derive({k: v.float().cpu() for k, v in self.posterior.sample().items()})
                for _ in range(samples)]

    # --- collapse diagnostics ---
    def _curvature_due(self) -> bool:
        every = self.cfg.hessian_every
        return bool(every) and self.posterior.trained and (self.epoch % every == 0 or self.epoch == self.cfg.epochs)

    def architecture_curvature(self, iterations: int = 20) -> float:
        """The dominant eigenvalue of the Hessian of the validation NLL with respect to the architecture
        parameters α, at θ = the distribution's mean, over ``hessian_batches`` validation batches (Zela et al.,
        ICLR 2020). Leaves no trace: BN statistics and every RNG are as before.
        Introduced in chapters/04_bayesian_structure_posterior.py."""
        buffers = {k: v.clone() for k, v in self.supernet.state_dict().items() if "running" in k or "batches" in k}
        self.val_batches.set_epoch(self.epoch)  # the same batches whenever it is called at this epoch
        batches = [b for _, b in zip(range(self.cfg.hessian_batches), self.val_batches, strict=False)]
        params = list(self.posterior.parameters())

        def loss():
            theta = self.posterior.mean()
            return sum(objectives.loss_on(self.supernet, theta, b) for b in batches) / len(batches)

        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000 + self.epoch)
        was_training = self.supernet.training
        self.supernet.train()  # batch statistics, as in the architecture step whose loss this is
        try:
            return objectives.dominant_hessian_eigenvalue(loss, params, iterations, generator)
        finally:
            self.supernet.load_state_dict(buffers, strict=False)
            self.supernet.train(was_training)

    # --- state ---
    def model_state(self) -> dict:
        state = {"supernet": self.supernet.state_dict(), "posterior": self.posterior.state_dict()}
        if self.arch_optimizer is not None:
            state["arch_optimizer"] = self.arch_optimizer.state_dict()
        return state

    def load_model_state(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.posterior.load_state_dict(state["posterior"])
        if self.arch_optimizer is not None:
            self.arch_optimizer.load_state_dict(state["arch_optimizer"])

    # --- the whole search (EpochLoop.fit) ---
    def target_epochs(self) -> int:
        return self.cfg.epochs if self.posterior.searched else self.epoch  # a fixed draw: nothing to search

    def started(self) -> None:
        if not self.posterior.searched:  # its genotype is known now; save it as the run's result
            self.save_epoch()

    def description(self) -> str:
        return f"{self.cfg.method} on {self.cfg.space}"

    @staticmethod
    def summary(row: dict) -> str:
        score = row.get("score")
        extra = " | table " + ", ".join(f"{k} {v:.2f}%" for k, v in score.items()) if score else ""
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
start = Search.start  # a new search backed by a run folder (refused if it already holds a run)
resume = Search.resume  # the search of a run folder, restored from its checkpoint

__all__ = ["NonFiniteError", "Search", "SearchConfig", "load_search_config", "resume", "start"]
