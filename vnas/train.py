"""Training a final network from a genotype (the DARTS evaluation protocol), with a run folder that resumes.

    objective = NLL(logits, y) + auxiliary_weight * NLL(logits_aux, y) + weight_decay / 2 * ||w||^2
    drop-path ramps 0 -> drop_path; SGD + cosine schedule, cutout, gradient clipping of the data terms'
    gradient (DARTS); bf16 autocast on CUDA.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vnas import bayes, config, data, metrics, networks, objectives, runs, search, spaces


@dataclass
class TrainConfig:
    """The evaluation protocol; defaults are the DARTS paper's (configs/train_<space>.toml sets each mode)."""

    genotype: str = "DARTS_V2"  # a published name, a genotype string, or a genotype.json path
    layers: int = 20  # DARTS: cells; NB201: cells per stage (N)
    channels: int = 36
    auxiliary: bool = True  # DARTS networks only (configs/train_nb201.toml sets false)
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2  # DARTS networks only (configs/train_nb201.toml sets 0)
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4  # the weights' L2 term l2_w = weight_decay / 2 * ||w||^2
    grad_clip: float = 5.0
    cutout: int = 16
    images_per_class: int = 0  # 0: the whole training set
    test_images_per_class: int = 0  # 0: the whole test set
    steps_per_epoch: int = 0  # 0: one pass over the training images
    seed: int = 0
    channels_last: bool = True
    amp: bool = True
    # Bayesian weights (chapter 05; the same keys as vnas.search.SearchConfig): "point" or "gaussian"
    weights: str = "point"
    weight_prior: str = "gaussian"  # gaussian | mixture (a final network has no q(θ) to couple to)
    weight_prior_sigma: float | str = "weight_decay"  # σ0; "weight_decay": the σ0 whose L2 on μ is weight_decay's
    weight_prior_pi: float = 0.5
    weight_prior_sigma2: float = 2.5e-3
    weight_prior_eps: float = 0.05
    weight_kl_weight: float = 1.0  # the weight KL's temperature (1: the ELBO)
    weight_kl_warmup: float = 0.0  # epochs of linear KL annealing from 0
    weight_sigma_init: float = 1e-3
    eval_samples: int = 8  # weight samples averaged by the test evaluation of a Bayesian network (posterior predictive)

    def __post_init__(self):
        for name in ("layers", "channels", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path={self.drop_path} must lie in [0, 1).")
        search.check_weight_options(self)
        if self.weight_prior == "coupled":
            raise ValueError("weight_prior='coupled' couples the weights to a structure posterior q(θ), which exists "
                             "during a search (python -m vnas search --weights gaussian --weight-prior coupled); a "
                             "final network has one fixed genotype. Use 'gaussian' or 'mixture'.")


def load_train_config(genotype: str, file: Path | None = None, run_mode: str | None = None,
                      **overrides) -> TrainConfig:
    """configs/train_<space>.toml for the genotype's space and the mode, then ``file``, then ``overrides``."""
    space = spaces.space_of(spaces.load_genotype(genotype)).name
    return config.load_config(TrainConfig, f"train_{space}", file, run_mode, genotype=str(genotype), **overrides)


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
        self.model = build_network(cfg, self.genotype).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        d = dataset or data.load_cifar10()
        tr = data.per_class_subset(d.y_train, cfg.images_per_class, cfg.seed) if cfg.images_per_class \
            else np.arange(len(d.y_train))
        self.weight_prior = None  # point weights: their prior is the L2 term weight_decay
        if cfg.weights == "gaussian":
            bayes.make_bayesian(self.model, cfg.weight_sigma_init)
            self.weight_prior = search.build_weight_prior(cfg, len(tr))
        self._variational = {id(p) for _, m in bayes.variational_layers(self.model) for p in m.parameters()}
        te = data.per_class_subset(d.y_test, cfg.test_images_per_class, cfg.seed) if cfg.test_images_per_class \
            else np.arange(len(d.y_test))
        common = dict(device=self.device, channels_last=cfg.channels_last)
        self.train_batches = data.Batches(d.x_train[tr], d.y_train[tr], min(cfg.batch_size, len(tr)), cutout=cfg.cutout,
                                          seed=cfg.seed, **common)
        self.test_batches = data.Batches(d.x_test[te], d.y_test[te], 256, train=False, **common)
        self._test_images, self._test_labels, self._common = d.x_test[te], d.y_test[te], common
        # the L2 term is in the objective (objectives.weight_terms), not in the optimiser
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         **runs.optimizer_options(self.device))  # fused on CUDA
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(cfg.epochs, 1),
                                                                    eta_min=cfg.lr_min)
        self.watch = runs.FiniteWatch(self.device)
        self._weight_kl_weight = cfg.weight_kl_weight if cfg.weight_kl_warmup <= 0 else 0.0
        self.epoch = 0
        self.history: list[dict] = []

    def steps_per_epoch(self) -> int:
        n = len(self.train_batches)
        return min(n, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else n

    def step(self, x, y) -> tuple[dict, torch.Tensor]:
        """One SGD step on the objective; returns its terms and the logits."""
        cfg = self.cfg
        with self._autocast():
            out = self.model(x)
            logits, logits_aux = out if isinstance(out, tuple) else (out, None)
            nll = objectives.expected_nll(logits, y)
            auxiliary = None if logits_aux is None else cfg.auxiliary_weight * objectives.expected_nll(logits_aux, y)
        self.optimizer.zero_grad(set_to_none=True)
        (nll if auxiliary is None else nll + auxiliary).backward()
        params = list(self.model.parameters())
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)  # the data terms' gradient is clipped (DARTS) ...
        # Bayesian weights have their prior in the KL, which replaces the L2 term; point tensors (BN) keep it
        point = [p for p in params if id(p) not in self._variational]
        weight_kl = None if self.weight_prior is None else objectives.weight_kl(self.model, self.weight_prior)
        terms = objectives.weight_terms(nll, len(self.train_batches.y), point, cfg.weight_decay, weight_kl=weight_kl,
                                        auxiliary=auxiliary, weight_kl_weight=self._weight_kl_weight)
        terms["penalty"].backward()  # ... and the L2 and KL terms' are added after, where SGD adds its weight decay
        self.optimizer.step()
        return terms, logits.detach()

    def train_epoch(self, on_step=None) -> dict:
        cfg, start = self.cfg, time.perf_counter()
        self.model.train()
        self.model.drop_path_prob = self.model.drop_path * self.epoch / max(cfg.epochs, 1)  # the linear ramp
        self.train_batches.set_epoch(self.epoch)
        lr = self.scheduler.get_last_lr()[0]
        means = runs.EpochMeans()
        self.watch.reset()
        steps = self.steps_per_epoch()
        for step, (x, y) in enumerate(self.train_batches):
            if step >= steps:
                break
            warmup = cfg.weight_kl_warmup  # KL annealing: the temperature rises linearly from 0
            self._weight_kl_weight = cfg.weight_kl_weight * (min(1.0, (self.epoch + step / steps) / warmup)
                                                             if warmup > 0 else 1.0)
            terms, logits = self.step(x, y)
            if self.weight_prior is not None:
                terms["kl_weight"] = torch.tensor(self._weight_kl_weight)
            means.add("weights", terms)
            means.add("train", {"acc": (logits.argmax(1) == y).float().mean()})
            watched = {"training": terms["objective"]}
            if self.weight_prior is not None:
                watched["weight_kl"] = terms["weight_kl"]
            self.check(self.watch.watch(step, watched))
            if on_step is not None:
                on_step()
        self.check(self.watch.bad())
        self.scheduler.step()
        test = self.evaluate()
        self.epoch += 1
        terms = means.means()
        row = {"epoch": self.epoch, "lr": lr, "train_loss": terms["weights"]["nll"], "train_acc": terms["train"]["acc"],
               "test_loss": test["nll"], "test_acc": test["acc"], "test_ece": test["ece"], "weights": terms["weights"],
               "seconds": time.perf_counter() - start}
        if self.weight_prior is not None:
            row["weight_posterior"] = bayes.posterior_scales(self.model)
        self.history.append(row)
        return row

    def evaluate(self, shift: tuple[str, int] | None = None) -> dict:
        """Accuracy, NLL and calibration on the test images (``vnas.metrics.evaluate``), or on the test images
        under ``shift`` = (kind, severity) (``vnas.data.shift``); a Bayesian network's posterior predictive
        averages ``eval_samples`` weight samples (eval-mode BatchNorm).
        Introduced in chapters/02_darts.py; shifts in chapters/05_bayesian_weights.py."""
        samples = self.cfg.eval_samples if self.weight_prior is not None else 1
        batches = self.test_batches
        if shift is not None:
            kind, severity = shift
            images = data.shift(self._test_images, kind, severity, seed=self.cfg.seed)
            batches = data.Batches(images, self._test_labels, 256, train=False, **self._common)
        return metrics.evaluate(self.model, batches, samples=samples, amp=self.cfg.amp)

    def diagnose(self) -> str:
        found = []
        name = runs.first_non_finite(self.model)
        if name:
            found.append(f"The first non-finite weight is {name}.")
        layer = None if self.weight_prior is None else bayes.first_non_finite_kl(self.model, self.weight_prior)
        if layer:
            found.append(f"The first layer whose weight KL is not finite is {layer} (prior {self.weight_prior}).")
        return " ".join(found)

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

    def started(self) -> None:
        self.run.write_json("genotype.json", self.genotype.to_json())


def build_network(cfg: TrainConfig, genotype=None):
    """The final network that ``cfg`` trains (``vnas.networks.build_network``: its genotype's space builds it),
    on the CPU."""
    genotype = spaces.load_genotype(cfg.genotype) if genotype is None else genotype
    return networks.build_network(genotype, C=cfg.channels, layers=cfg.layers, num_classes=10,
                                  auxiliary=cfg.auxiliary, drop_path=cfg.drop_path)


start = Trainer.start  # a new training backed by a run folder (refused if it already holds a run)
resume = Trainer.resume  # the training of a run folder, restored from its checkpoint
