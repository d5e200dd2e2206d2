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
import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vnas import bayes, config, data, distributed, metrics, objectives, posteriors, runs, spaces
from vnas.runs import NonFiniteError
from vnas.supernet import ProgressiveSchedule, carry_optimizer_state, fold_edge_weights


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
    # DrNAS' progressive search: [[partial_channels K, ops kept per edge, epochs], ...] ([] = off); at each stage
    # boundary every edge keeps its strongest ops and the ops widen to C/K; arch_start_epoch then counts per stage
    stages: list = field(default_factory=list)
    images_per_class: int = 0  # 0: the whole training set; else a class-balanced subset, split in two halves
    image_size: int = 32  # < 32: images averaged down to this side (16: NB201's ImageNet16 resolution)
    batch_size: int = 64  # the global batch: with K processes (torchrun) each takes batch_size / K images
    accumulate: int = 1  # gradients averaged over this many equal micro-batches of each batch (BN per micro-batch)
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
    # Bayesian weights (chapter 05): "point" (SGD + the L2 term) or "gaussian" (mean-field q(w), vnas.bayes)
    weights: str = "point"
    weight_prior: str = "gaussian"  # gaussian | mixture | coupled (p(w | θ): needs a structure posterior)
    weight_prior_sigma: float | str = "weight_decay"  # σ0; "weight_decay": the σ0 whose L2 on μ is weight_decay's
    weight_prior_pi: float = 0.5  # mixture: π N(0, σ0²) + (1 − π) N(0, σ2²)
    weight_prior_sigma2: float = 2.5e-3  # mixture: the narrow component (≈ e^-6, Blundell et al.)
    weight_prior_eps: float = 0.05  # coupled: the floor ε in s(θ) = σ0 (θ + ε) / (1 + ε)
    weight_kl_weight: float = 1.0  # the weight KL's temperature (1: the ELBO)
    weight_kl_warmup: float = 0.0  # epochs over which the weight KL's temperature anneals linearly from 0
    weight_sigma_init: float = 1e-3  # q(w)'s initial scale σ
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
        for name in ("layers", "channels", "partial_channels", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.epochs < 0 or self.steps_per_epoch < 0 or self.images_per_class < 0 or self.hessian_every < 0:
            raise ValueError("epochs, steps_per_epoch, images_per_class and hessian_every must be >= 0.")
        if self.batch_size % self.accumulate:
            raise ValueError(f"accumulate={self.accumulate} must divide batch_size={self.batch_size}: each batch is "
                             "cut into that many equal micro-batches.")
        if self.hessian_batches < 1:
            raise ValueError(f"hessian_batches={self.hessian_batches} must be >= 1.")
        if self.image_size not in (8, 16, 32):
            raise ValueError(f"image_size={self.image_size}: use 32 (CIFAR-10 as is), 16 or 8 (averaged down).")
        self._check_weights()
        self._check_stages(method)
        if not method.trained and self.order != "first":
            raise ValueError(f"Method {self.method!r} has no architecture step, so order={self.order!r} does not "
                             "apply; leave order at 'first'.")

    def _check_stages(self, method) -> None:
        if not self.stages:
            return
        try:
            schedule = ProgressiveSchedule(self.stages, self.arch_start_epoch)
            schedule.check(self.channels, spaces.get_space(self.space).ops)
        except (ValueError, TypeError) as err:
            raise ValueError(f"stages: {err}") from None
        if schedule.epochs != self.epochs:
            raise ValueError(f"stages last {schedule.epochs} epochs in all "
                             f"({' + '.join(str(s.epochs) for s in schedule.stages)}); set epochs = {schedule.epochs}.")
        if self.partial_channels not in (1, schedule.stages[0].partial_channels):
            raise ValueError("stages set partial_channels per stage; leave partial_channels at 1.")
        if not method.trained:
            raise ValueError(f"stages prune ops by the distribution's mean weights; method {self.method!r} "
                             "learns none.")
        if self.weights != "point":
            raise ValueError("stages rebuild the ops wider, which Bayesian weight layers do not support; "
                             "use weights = 'point'.")

    def _check_weights(self) -> None:
        if check_weight_options(self) and self.weight_prior == "coupled":
            q = posteriors.build_posterior(self.method, self.space, **self.posterior)
            if q.structure_kl() is None:
                able = [m for m in posteriors.METHODS if self.space in posteriors.get_method(m).spaces
                        and posteriors.build_posterior(m, self.space).structure_kl() is not None]
                raise ValueError(
                    f"weight_prior='coupled' couples the weights to a structure posterior q(θ) with a prior p(θ); "
                    f"method {self.method!r} has none ({type(q).__name__}: a point estimate, a relaxation "
                    f"without a prior, or a baseline). Use method {' or '.join(map(repr, able))} (or drnas with "
                    "posterior.regularise = 'kl'), or weight_prior 'gaussian' / 'mixture'.")


def check_weight_options(cfg) -> bool:
    """Check the Bayesian-weight keys of a SearchConfig or TrainConfig (names, scales, temperature); returns
    whether the weights are Bayesian. Introduced in chapters/05_bayesian_weights.py."""
    if cfg.weights not in WEIGHTS:
        close = difflib.get_close_matches(str(cfg.weights), WEIGHTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown weights {cfg.weights!r}.{hint} Use one of: {', '.join(WEIGHTS)}.")
    bayes.build_prior(cfg.weight_prior, 1.0, cfg.weight_prior_pi, cfg.weight_prior_sigma2,
                      cfg.weight_prior_eps)  # raises for an unknown name or a bad pi, sigma2, eps
    if cfg.weight_prior_sigma != "weight_decay":
        bayes.GaussianPrior(cfg.weight_prior_sigma)  # raises for a non-positive scale
    if isinstance(cfg.weight_kl_weight, bool) or not isinstance(cfg.weight_kl_weight, (int, float)) or \
            not 0 <= cfg.weight_kl_weight < float("inf"):
        raise ValueError(f"weight_kl_weight={cfg.weight_kl_weight!r} must be a finite number >= 0.")
    if cfg.weight_kl_warmup < 0:
        raise ValueError(f"weight_kl_warmup={cfg.weight_kl_warmup!r} must be >= 0 epochs.")
    if cfg.weights == "point":
        if cfg.weight_prior != "gaussian":
            raise ValueError(f"weight_prior={cfg.weight_prior!r} needs Bayesian weights: add weights = "
                             "'gaussian' (--weights gaussian). Point weights have the L2 term weight_decay.")
        return False
    if cfg.weight_sigma_init <= 0:
        raise ValueError(f"weight_sigma_init={cfg.weight_sigma_init!r}: q(w)'s initial scale must be > 0.")
    if cfg.weight_prior_sigma == "weight_decay" and cfg.weight_decay <= 0:
        raise ValueError("weight_prior_sigma = 'weight_decay' takes the prior scale from weight_decay, which is "
                         f"{cfg.weight_decay!r}; set weight_prior_sigma to a number > 0 instead.")
    return True


WEIGHTS = ("point", "gaussian")
"""The kinds of network weights a search or a training can have. Introduced in chapters/05_bayesian_weights.py."""


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
                 device: torch.device | None = None, progress: bool = True, group: distributed.Group | None = None):
        self.cfg, self.run, self.progress = cfg, run, progress
        self.group = group or distributed.Group()  # one process, or rank r of K under torchrun (vnas.distributed)
        self.device = self.group.device(device or config.device())
        # each rank's share of a batch, cut into micro-batches: an error now if the world does not divide it
        self._shard = self.group.shard_size(cfg.batch_size)
        if self._shard % cfg.accumulate:
            raise distributed.DistributedError(
                f"batch_size={cfg.batch_size} over {self.group.world} processes leaves {self._shard} images per "
                f"process, which accumulate={cfg.accumulate} micro-batches do not divide.")
        self.space = spaces.get_space(cfg.space)
        config.setup(cfg.seed)
        self.dataset = dataset or data.load_cifar10()
        self._make_data()
        self.schedule = ProgressiveSchedule(cfg.stages, cfg.arch_start_epoch) if cfg.stages else None
        self.stage = 0  # the progressive schedule's stage (0 without one)
        k0 = self.schedule.stages[0].partial_channels if self.schedule else cfg.partial_channels
        self.supernet = self.space.build_supernet(C=cfg.channels, layers=cfg.layers, num_classes=10,
                                                  partial_channels=k0).to(self.device)
        if cfg.channels_last:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        self.weight_prior = None  # point weights: their prior is the L2 term weight_decay
        if cfg.weights == "gaussian":
            bayes.make_bayesian(self.supernet, cfg.weight_sigma_init)
            self.weight_prior = build_weight_prior(cfg, len(self.train_idx))
        self._weight_kl_weight = self.weight_kl_weight(0.0)  # updated before every step (KL annealing)
        self._variational = {id(p) for _, m in bayes.variational_layers(self.supernet) for p in m.parameters()}
        self.posterior = posteriors.build_posterior(cfg.method, self.space, **cfg.posterior).to(self.device)
        if self.schedule is not None:  # DrNAS' DARTS space has no 'none': its first stage keeps the other 7 ops
            initial = self.schedule.initial_keep(self.supernet.shapes, self.supernet.primitives)
            if initial is not None:
                self.posterior.prune(initial)
                self.supernet.set_stage(initial, k0)
        # the L2 terms are in the objectives (objectives.architecture_terms / weight_terms), not here
        # one kernel per optimiser step on CUDA, and no host read (vnas.runs.optimizer_options)
        self.arch_optimizer = (torch.optim.Adam(self.posterior.parameters(), lr=cfg.arch_lr,
                                                betas=tuple(cfg.arch_betas), **runs.optimizer_options(self.device))
                               if self.posterior.trained else None)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         **runs.optimizer_options(self.device, sparse=self.posterior.sparse))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, self.schedule.stages[0].epochs if self.schedule else max(cfg.epochs, 1), eta_min=cfg.lr_min)
        self.watch = runs.FiniteWatch(self.device)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        if self.group.world > 1:  # the same initial weights on every rank, then each its own sampling noise
            torch.manual_seed(distributed.rank_seed(cfg.seed, self.group.rank))

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

    def enter_stage(self, index: int, keep=None) -> None:
        """Stage ``index`` of the progressive schedule: every edge keeps its ``ops`` strongest ops by the mean
        weight (or the recorded ``keep``), the ops widen to C/K channels (their old weights in the leading ones),
        and the weight optimiser is rebuilt, its momentum carried, with a fresh cosine schedule over the stage
        (an assumption: DrNAS' code restarts the learning rate at the boundary, on its 50-epoch curve).
        Introduced in chapters/06_full_search.py."""
        cfg, stage = self.cfg, self.schedule.stages[index]
        if keep is None:
            keep = self.posterior.top_k_keep(stage.ops)
        self.posterior.prune(keep)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 1000 + index)  # the new channels: the same on every rank; global RNG untouched
            carried = self.supernet.set_stage(keep, stage.partial_channels)  # keeps the memory layout
        old = self.optimizer
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         **runs.optimizer_options(self.device, sparse=self.posterior.sparse))
        carry_optimizer_state(old, self.optimizer, carried)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, stage.epochs, eta_min=cfg.lr_min)
        self.stage = index

    def _local(self, batch):
        """This process's shard of a global batch (all of it in one process)."""
        return self.group.shard(batch, self._shard)

    def _micro(self, batch) -> list:
        """This process's shard of a global batch cut into ``accumulate`` micro-batches."""
        x, y = self._local(batch)
        k = self.cfg.accumulate
        return [(x, y)] if k == 1 else list(zip(x.chunk(k), y.chunk(k), strict=True))

    def architecture_step(self, train_batch, val_batch, xi: float) -> dict:
        """One Adam step on the architecture objective, Eq. (4.2); returns its terms.

        The NLL's gradient with respect to θ comes first or second order; it reaches α through the sample
        θ(α) (``objectives.pullback``), the KL and the regularisers by autograd."""
        self.arch_optimizer.zero_grad(set_to_none=True)
        theta = self.posterior.sample()  # one reparameterised sample per edge, shared by the whole step
        active = self._active(theta)
        micro = list(zip(self._micro(train_batch), self._micro(val_batch), strict=True))
        grads, nlls = [], []
        # finite differences need full precision: no bf16 for the second-order step
        with self._autocast() if self.cfg.order == "first" else contextlib.nullcontext():
            for train_part, val_part in micro:  # with micro-batches (or processes), the mean of their gradients
                if self.cfg.order == "first":
                    g, n = objectives.first_order_gradient(self.supernet, theta, val_part, active)
                else:  # each micro-batch takes its own virtual step: the unrolled step on its share of the data
                    g, n = objectives.second_order_gradient(self.supernet, theta, train_part, val_part, xi,
                                                            active=active)
                grads.append(g)
                nlls.append(n)
        grad_theta, nll = (grads[0], nlls[0]) if len(micro) == 1 else (
            {c: torch.stack([g[c] for g in grads]).mean(0) for c in grads[0]}, torch.stack(nlls).mean())
        weight_kl = None
        if isinstance(self.weight_prior, bayes.CoupledPrior):  # E_q(θ)[KL(q(w) || p(w | θ))] depends on q(θ) too
            weight_kl = objectives.weight_kl(self.supernet, self.weight_prior, theta, detach_q=True)
        terms = objectives.architecture_terms(self.posterior, nll, num_data=len(self.val_idx), weight_kl=weight_kl,
                                              weight_kl_weight=self._weight_kl_weight)
        # the NLL's gradient reaches α through θ; the penalty (KL / N, L2 on α) carries its own
        (objectives.pullback(theta, grad_theta) + terms["penalty"]).backward()
        # by hand: the posterior is outside the supernet, and θ's NLL gradient came from autograd.grad
        self.group.mean_([p.grad for p in self.posterior.parameters()])
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
        with torch.no_grad():
            theta = {k: v.detach() for k, v in self.posterior.sample().items()}
        active = self._active(theta)
        self.optimizer.zero_grad(set_to_none=True)
        micro = self._micro(train_batch)
        logits, nlls = [], []
        for x, y in micro:  # with micro-batches, the mean of their NLLs (each BN sees its own micro-batch)
            with self._autocast():
                out = self.supernet(x, theta, active)
                nll = objectives.expected_nll(out, y)
            (nll if len(micro) == 1 else nll / len(micro)).backward()
            logits.append(out.detach())
            nlls.append(nll.detach())
        nll = nlls[0] if len(micro) == 1 else torch.stack(nlls).mean()
        # the weights of the network that θ selects: all of them for a dense θ, the sampled ops' for a one-hot one
        used = self._mean_weight_gradients()
        torch.nn.utils.clip_grad_norm_(used, self.cfg.grad_clip)  # the data term's gradient is clipped (DARTS) ...
        # Bayesian weights have their prior in the KL, which replaces the L2 term; point tensors keep it
        point = [p for p in used if id(p) not in self._variational]
        weight_kl = None if self.weight_prior is None else objectives.weight_kl(self.supernet, self.weight_prior, theta)
        terms = objectives.weight_terms(nll, len(self.train_idx), point, self.cfg.weight_decay, weight_kl=weight_kl,
                                        weight_kl_weight=self._weight_kl_weight)
        terms["penalty"].backward()  # ... and the L2 and KL terms' are added after, where SGD adds its weight decay
        self.optimizer.step()
        return terms, logits[0] if len(logits) == 1 else torch.cat(logits)

    def _mean_weight_gradients(self) -> list[torch.Tensor]:
        """The weights with a gradient, their gradients averaged over the processes (before clipping, as one
        process with the whole batch would clip). A weight that no process used keeps no gradient, so SGD leaves
        it (and its momentum) alone; with a one-hot θ the processes use different ops, so which were used is
        averaged too: one host read per step, for sparse distributions under torchrun only."""
        params = list(self.supernet.parameters())
        if self.group.world == 1:
            return [p for p in params if p.grad is not None]
        flags = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.group.mean_([p.grad for p in params] + [flags])
        if not self.posterior.sparse:
            return params
        used = flags.gt(0).tolist()
        for p, u in zip(params, used, strict=True):
            if not u:
                p.grad = None
        return [p for p, u in zip(params, used, strict=True) if u]

    # --- one epoch ---
    def train_epoch(self, on_step=None) -> dict:
        """One epoch of alternating architecture and weight steps; returns the history row."""
        cfg = self.cfg
        start = time.perf_counter()
        if self.schedule is not None and self.schedule.starts_stage(self.epoch):
            self.enter_stage(self.schedule.stage_of(self.epoch))
        self.supernet.train()
        self.posterior.set_progress(self.epoch, max(cfg.epochs, self.epoch + 1))
        self.train_batches.set_epoch(self.epoch)
        self.val_batches.set_epoch(self.epoch)
        lr = self.scheduler.get_last_lr()[0]
        due = self.schedule.updates_architecture(self.epoch) if self.schedule else self.epoch >= cfg.arch_start_epoch
        update_arch = self.posterior.trained and due
        means = runs.EpochMeans()
        self.watch.reset()
        steps = self.steps_per_epoch()
        for step, (train_batch, val_batch) in enumerate(zip(self.train_batches, self.val_batches, strict=False)):
            if step >= steps:
                break
            self._weight_kl_weight = self.weight_kl_weight(self.epoch + step / steps)
            watched = {}
            if update_arch:
                kl_edges = self.structure_kl_per_edge()  # before the step: the KL its objective holds, per edge
                arch = self.architecture_step(train_batch, val_batch, xi=lr)
                means.add("architecture", arch)
                if kl_edges is not None:
                    means.add("structure_kl_edge", kl_edges)
                watched["architecture"] = arch["objective"]
            weights, logits = self.weight_step(train_batch)
            if self.weight_prior is not None:
                weights["kl_weight"] = torch.tensor(self._weight_kl_weight)
                watched["weight_kl"] = weights["weight_kl"]
            means.add("weights", weights)
            means.add("train", {"acc": (logits.argmax(1) == self._local(train_batch)[1]).float().mean()})
            watched["weight"] = weights["objective"]
            self.check(self.watch.watch(step, watched, self.posterior.valid()))
            if on_step is not None:
                on_step()
        self.check(self.watch.bad())  # on CUDA the only read back of the epoch
        self.scheduler.step()
        self._sync_buffers()
        self.posterior.end_epoch(self.score_theta)
        self._sync_posterior()
        val = self.evaluate()
        self.epoch += 1
        terms = means.means(self.group)
        row = {"epoch": self.epoch, "lr": lr, "steps": steps,
               "train_loss": terms["weights"]["nll"], "train_acc": terms["train"]["acc"],
               "val_loss": val["nll"], "val_acc": val["acc"],
               "architecture": terms.get("architecture"), "structure_kl_edge": terms.get("structure_kl_edge"),
               "weights": terms["weights"], **self.posterior.scalars(), "edges": self.posterior.edge_stats()}
        if self.weight_prior is not None:
            row["weight_posterior"] = bayes.posterior_scales(self.supernet)
        row["op_weight_rms"] = {k: v.tolist() for k, v in bayes.op_weight_rms(self.supernet).items()}
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

    def _sync_buffers(self) -> None:
        """Every process's BN running statistics replaced by their mean (each rank saw only its shard), so that
        all ranks evaluate, and rank 0 saves, one network."""
        self.group.mean_([b for b in self.supernet.buffers() if b.is_floating_point()])

    def _sync_posterior(self) -> None:
        """Rank 0's distribution on every rank after the epoch hook (a random search draws its candidates per
        rank; the learned parameters are equal already, their gradients having been averaged)."""
        if self.group.world > 1:
            state = self.group.broadcast({k: v.cpu() if torch.is_tensor(v) else v
                                          for k, v in self.posterior.state_dict().items()}
                                         if self.group.main else None)
            if not self.group.main:
                self.posterior.load_state_dict(state)

    def diagnose(self) -> str:
        found = []
        try:
            self.posterior.check_finite()
        except FloatingPointError as err:
            found.append(f"{err}.")
        name = runs.first_non_finite(self.supernet)
        if name:
            found.append(f"The first non-finite supernet weight is {name}.")
        if self.weight_prior is not None:
            with torch.no_grad():
                theta = self.posterior.sample() if isinstance(self.weight_prior, bayes.CoupledPrior) else None
            layer = bayes.first_non_finite_kl(self.supernet, self.weight_prior, theta)
            if layer:
                found.append(f"The first layer whose weight KL is not finite is {layer} (prior {self.weight_prior}).")
        return " ".join(found)

    def weight_kl_weight(self, epochs_done: float) -> float:
        """The weight KL's temperature after ``epochs_done`` epochs: ``weight_kl_weight``, annealed linearly
        from 0 over the first ``weight_kl_warmup`` epochs (KL annealing).
        Introduced in chapters/05_bayesian_weights.py."""
        warmup = self.cfg.weight_kl_warmup
        return self.cfg.weight_kl_weight * (min(1.0, epochs_done / warmup) if warmup > 0 else 1.0)

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
        mean = fold_edge_weights(self.posterior.mean())  # γ·θ with edge normalisation (PC-DARTS), θ otherwise
        return self.space.derive({k: v.detach().float().cpu() for k, v in mean.items()})

    @torch.no_grad()
    def sample_genotypes(self, samples: int) -> list:
        """``samples`` cells drawn from q: the genotype derived from each sample θ ~ q (for a point estimate,
        the same cell every time).
    Introduced in chapters/04_bayesian_structure_posterior.py."""
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}.")
        return [self.space.derive({k: v.float().cpu() for k, v in fold_edge_weights(self.posterior.sample()).items()})
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
        if self.schedule is not None:
            state["stage"] = {"index": self.stage, **self.supernet.stage()}
        return state

    def load_model_state(self, state: dict) -> None:
        record = state.get("stage")
        if self.schedule is not None and record is not None and record["index"] != self.stage:
            self.enter_stage(record["index"], {c: torch.tensor(v) for c, v in record["keep"].items()})
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


def build_weight_prior(cfg, num_data: int):
    """The weight prior of a config with ``weights = "gaussian"`` (a SearchConfig or a TrainConfig): its
    ``weight_prior`` with scale ``weight_prior_sigma``, or, for "weight_decay", the σ0 whose KL puts on the means
    the L2 term that ``weight_decay`` puts on point weights over ``num_data`` points (Eq. (5.4)).
    Introduced in chapters/05_bayesian_weights.py, Eq. (5.4)."""
    sigma = cfg.weight_prior_sigma
    if sigma == "weight_decay":
        sigma = bayes.sigma_for_weight_decay(cfg.weight_decay, num_data, cfg.weight_kl_weight or 1.0)
    return bayes.build_prior(cfg.weight_prior, sigma, cfg.weight_prior_pi, cfg.weight_prior_sigma2,
                             cfg.weight_prior_eps)


# --- run folders ---
start = Search.start  # a new search backed by a run folder (refused if it already holds a run)
resume = Search.resume  # the search of a run folder, restored from its checkpoint

__all__ = ["WEIGHTS", "NonFiniteError", "Search", "SearchConfig", "build_weight_prior", "load_search_config", "resume",
           "start"]
