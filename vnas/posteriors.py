"""Distributions over each edge's simplex of operation weights: one interface for DARTS, SNAS, GDAS,
DrNAS and the course's variational method.

An architecture of a cell space is, per cell type ("normal"/"reduce" in DARTS, "cell" in NB201), a
matrix of E edges x O ops. An ``ArchDistribution`` holds the architecture parameters alpha (one
[E, O] ``nn.Parameter`` per cell type) and turns them into the supernet's mixing weights:
``sample()`` for a forward pass during search, ``mean()`` for deriving the genotype, and
``regulariser(num_data)`` for the architecture loss.

Place in the flow: spaces -> **posteriors** -> supernet -> objectives -> search.
Introduced in chapters/03_stochastic_relaxations.py.
"""

from __future__ import annotations

import difflib
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ArchDistribution", "Softmax", "Concrete", "HardGumbel", "Dirichlet", "METHODS",
           "build_posterior", "dirichlet_kl", "gumbel_softmax_sample"]


def _positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _choice(name: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; use one of {', '.join(map(repr, valid))}.")
    return value


def gumbel_softmax_sample(logits: Tensor, tau: float, generator: torch.Generator | None = None,
                          hard: bool = False) -> Tensor:
    """A Concrete (Gumbel-softmax) sample y = softmax((logits + g) / tau), g_k = -log(-log u_k), u ~ U(0, 1).

    With ``hard=True`` the forward value is the one-hot argmax (exact 0.0 elsewhere) and the gradient is
    that of the soft sample (straight-through). The noise comes from ``generator`` (on its device) or
    from torch's global RNG. Introduced in chapters/03_stochastic_relaxations.py, Eqs. (3.3)-(3.5).
    """
    tau = _positive("tau (the temperature)", tau)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device, dtype=logits.dtype).to(logits.device)
    g = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))  # u = 0 would give g = -inf
    y_soft = F.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y_soft
    y_hard = F.one_hot(y_soft.argmax(-1), logits.shape[-1]).to(y_soft.dtype)
    # y_soft - y_soft.detach() is exactly 0 forward: the zeros stay exactly 0.0 (the supernet may skip them)
    return y_hard + (y_soft - y_soft.detach())


def dirichlet_kl(beta: Tensor, c0: float | Tensor) -> Tensor:
    """KL(Dir(beta) || Dir(c0)) per edge (last dim = ops), in closed form:

    KL = log G(b0) - sum_k log G(b_k) - log G(c_0) + sum_k log G(c_k) + sum_k (b_k - c_k)(psi(b_k) - psi(b0)),
    with b0 = sum_k b_k, c_0 = sum_k c_k; a float ``c0`` means the symmetric prior c_k = c0.
    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.9).
    """
    if not torch.is_tensor(beta) or beta.dim() == 0:
        raise ValueError("beta must be a tensor whose last dimension holds the ops' concentrations.")
    if not bool((beta > 0).all()):
        raise ValueError("beta (the posterior concentration) must be > 0 everywhere.")
    if torch.is_tensor(c0):
        if not bool((c0 > 0).all()):
            raise ValueError("c0 (the prior concentration) must be > 0 everywhere.")
        c = c0.to(beta).expand_as(beta)
    else:
        c = torch.full_like(beta, _positive("c0 (the prior concentration)", c0))
    b0, c_sum = beta.sum(-1), c.sum(-1)
    return (torch.lgamma(b0) - torch.lgamma(beta).sum(-1) - torch.lgamma(c_sum) + torch.lgamma(c).sum(-1)
            + ((beta - c) * (torch.digamma(beta) - torch.digamma(b0).unsqueeze(-1))).sum(-1))


class ArchDistribution(nn.Module):
    """Base class: architecture parameters alpha[cell_type] of shape [E, O], initialised 1e-3 * randn.

    Subclasses define ``_sample(alpha)`` and ``_mean(alpha)`` for one cell type's [E, O] matrix.
    Introduced in chapters/03_stochastic_relaxations.py.
    """

    def __init__(self, cell_types: tuple[str, ...], num_edges: int, num_ops: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(cell_types, str) or not cell_types or not all(isinstance(c, str) for c in cell_types):
            raise ValueError(f"cell_types must be a non-empty tuple of names such as ('normal', 'reduce'), "
                             f"got {cell_types!r}.")
        if len(set(cell_types)) != len(cell_types):
            raise ValueError(f"cell_types must be distinct, got {cell_types!r}.")
        for name, value, low in (("num_edges", num_edges, 1), ("num_ops", num_ops, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        self.cell_types, self.num_edges, self.num_ops = tuple(cell_types), num_edges, num_ops
        self.generator, self.progress = generator, 0.0
        self.alphas = nn.ParameterDict({
            c: nn.Parameter(1e-3 * torch.randn(num_edges, num_ops, generator=generator)) for c in cell_types})

    def _sample(self, alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def _mean(self, alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self) -> dict[str, Tensor]:
        """Mixing weights [E, O] per cell type for one forward pass, differentiable w.r.t. alpha."""
        return {c: self._sample(a) for c, a in self.alphas.items()}

    def mean(self) -> dict[str, Tensor]:
        """The point weights [E, O] per cell type used to derive a genotype."""
        return {c: self._mean(a) for c, a in self.alphas.items()}

    def regulariser(self, num_data: int) -> Tensor:
        """Term added to the architecture loss; 0 for methods without one."""
        _positive("num_data", num_data)
        return self.alphas[self.cell_types[0]].new_zeros(())

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Tell the distribution where the search is (0 <= epoch <= epochs); progress runs 0 -> 1 and
        reaches 1 at the last epoch, epochs - 1."""
        ok = isinstance(epochs, int) and isinstance(epoch, int) and epochs >= 1 and 0 <= epoch <= epochs
        if not ok:
            raise ValueError(f"set_progress needs integers 0 <= epoch <= epochs, epochs >= 1; "
                             f"got epoch={epoch!r}, epochs={epochs!r}.")
        self.progress = min(1.0, epoch / max(epochs - 1, 1))

    def _entropy(self, alpha: Tensor) -> Tensor:
        p = self._mean(alpha)
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

    def _concentration(self, alpha: Tensor) -> Tensor | None:
        return None

    @torch.no_grad()
    def edge_stats(self) -> dict[str, dict[str, list]]:
        """Per cell type: "mean" [E][O]; "concentration" [E] (sum of beta, or None for non-Dirichlet methods);
        "entropy" [E] in nats: of the categorical mean(alpha) for point and Gumbel methods, the differential
        entropy of Dir(beta) for Dirichlet methods (it can be negative)."""
        stats = {}
        for c, a in self.alphas.items():
            conc = self._concentration(a)
            stats[c] = {"mean": self._mean(a).cpu().tolist(),
                        "concentration": None if conc is None else conc.sum(-1).cpu().tolist(),
                        "entropy": self._entropy(a).cpu().tolist()}
        return stats

    @torch.no_grad()
    def check_finite(self) -> None:
        """Raise FloatingPointError naming the cell type and edge whose alpha (or concentration) is bad."""
        for c, a in self.alphas.items():
            conc = self._concentration(a)
            for e in range(self.num_edges):
                if not bool(torch.isfinite(a[e]).all()):
                    raise FloatingPointError(f"Architecture parameters of cell type {c!r}, edge {e} are not "
                                             f"finite: {a[e].tolist()}")
                if conc is not None and not bool((torch.isfinite(conc[e]) & (conc[e] > 0)).all()):
                    raise FloatingPointError(f"Dirichlet concentration of cell type {c!r}, edge {e} is not "
                                             f"finite and > 0: {conc[e].tolist()}")


class Softmax(ArchDistribution):
    """DARTS' point estimate: sample() = mean() = softmax(alpha).

    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.1).
    """

    def _sample(self, alpha):
        return F.softmax(alpha, dim=-1)

    _mean = _sample


class Concrete(ArchDistribution):
    """SNAS: relaxed Concrete samples softmax((alpha + g) / tau); tau is annealed by ``set_progress``:
    "exp" (default): tau = tau0 * (tau_min / tau0) ** progress;
    "linear": tau = tau0 + (tau_min - tau0) * progress.
    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.4).
    """

    hard = False

    def __init__(self, cell_types, num_edges, num_ops, generator=None, tau0: float = 1.0,
                 tau_min: float = 0.2, schedule: str = "exp"):
        super().__init__(cell_types, num_edges, num_ops, generator)
        self.tau0, self.tau_min = _positive("tau0 (the temperature)", tau0), _positive("tau_min", tau_min)
        self.schedule = _choice("schedule", schedule, ("exp", "linear"))
        self.tau = self.tau0

    def set_progress(self, epoch, epochs):
        """Anneal the temperature tau from tau0 (first epoch) to tau_min (last epoch)."""
        super().set_progress(epoch, epochs)
        if self.schedule == "exp":
            self.tau = self.tau0 * (self.tau_min / self.tau0) ** self.progress
        else:
            self.tau = self.tau0 + (self.tau_min - self.tau0) * self.progress

    def _sample(self, alpha):
        return gumbel_softmax_sample(alpha, self.tau, self.generator, hard=self.hard)

    def _mean(self, alpha):
        return F.softmax(alpha, dim=-1)

    def extra_repr(self):
        return f"tau={self.tau:.4g}, tau0={self.tau0}, tau_min={self.tau_min}, schedule={self.schedule!r}"


class HardGumbel(Concrete):
    """GDAS: one-hot forward (exact 0.0 for unselected ops), straight-through gradient of the soft sample;
    default temperature 10 -> 0.1, linear, as in GDAS. Introduced in chapters/03_stochastic_relaxations.py,
    Eq. (3.5).
    """

    hard = True

    def __init__(self, cell_types, num_edges, num_ops, generator=None, tau0: float = 10.0,
                 tau_min: float = 0.1, schedule: str = "linear"):
        super().__init__(cell_types, num_edges, num_ops, generator, tau0, tau_min, schedule)


class Dirichlet(ArchDistribution):
    """q(w_e) = Dir(beta_e) per edge, beta = elu(alpha) + 1 (DrNAS) or softplus(alpha).

    ``sample()`` uses ``torch.distributions.Dirichlet.rsample`` (implicit reparameterisation gradients,
    Figurnov et al. 2018); it cannot take a generator, so sampling uses torch's global RNG (seed it with
    ``vnas.setup``); ``generator`` only seeds alpha's initial values. ``regularise="kl"`` adds
    kl_scale * sum_{cell types, edges} KL(Dir(beta_e) || Dir(c0)) / num_data; "none" adds nothing (DrNAS's
    default L2 on alpha is the optimiser's weight decay). With alpha ~ 0 at the start, elu gives the flat
    Dir(1); softplus gives beta = log 2 ~ 0.69, mass towards the corners.
    Introduced in chapters/03_stochastic_relaxations.py, Eqs. (3.6)-(3.9).
    """

    def __init__(self, cell_types, num_edges, num_ops, generator=None, param: str = "elu",
                 regularise: str = "none", c0: float = 1.0, kl_scale: float = 1.0):
        super().__init__(cell_types, num_edges, num_ops, generator)
        self.param = _choice("param", param, ("elu", "softplus"))
        self.regularise = _choice("regularise", regularise, ("none", "kl"))
        self.c0 = _positive("c0 (the prior concentration)", c0)
        if not isinstance(kl_scale, (int, float)) or not 0 <= kl_scale < math.inf:
            raise ValueError(f"kl_scale must be a finite number >= 0, got {kl_scale!r}.")
        self.kl_scale = float(kl_scale)

    def concentration(self, cell_type: str) -> Tensor:
        """beta [E, O] of one cell type: elu(alpha) + 1 or softplus(alpha)."""
        return self._concentration(self.alphas[cell_type])

    def _concentration(self, alpha):
        return F.elu(alpha) + 1 if self.param == "elu" else F.softplus(alpha)

    def _dist(self, alpha) -> torch.distributions.Dirichlet:
        return torch.distributions.Dirichlet(self._concentration(alpha))

    def _sample(self, alpha):
        return self._dist(alpha).rsample()

    def sample(self) -> dict[str, Tensor]:
        """One rsample() per edge; a bad concentration raises FloatingPointError naming the edge."""
        try:
            return super().sample()
        except ValueError:  # torch's argument check: say which edge went wrong
            self.check_finite()
            raise

    def _mean(self, alpha):
        beta = self._concentration(alpha)
        return beta / beta.sum(-1, keepdim=True)

    def _entropy(self, alpha):
        return self._dist(alpha).entropy()

    def entropy(self) -> dict[str, Tensor]:
        """Differential entropy [E] of each edge's Dir(beta_e), per cell type."""
        return {c: self._entropy(a) for c, a in self.alphas.items()}

    def log_prob(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """log Dir(w_e; beta_e) [E] per cell type, for weights [E, O] on the simplex."""
        return {c: self._dist(self.alphas[c]).log_prob(weights[c]) for c in self.cell_types}

    def kl(self) -> dict[str, Tensor]:
        """KL(Dir(beta_e) || Dir(c0)) [E] per cell type, Eq. (3.9)."""
        return {c: dirichlet_kl(self._concentration(a), self.c0) for c, a in self.alphas.items()}

    def regulariser(self, num_data: int) -> Tensor:
        """kl_scale * (sum of per-edge KLs over cell types) / num_data, or 0 when regularise="none"."""
        zero = super().regulariser(num_data)
        if self.regularise == "none":
            return zero
        return self.kl_scale * sum(k.sum() for k in self.kl().values()) / num_data

    def extra_repr(self):
        return f"param={self.param!r}, regularise={self.regularise!r}, c0={self.c0}, kl_scale={self.kl_scale}"


# name -> (constructor, the options a user may set, with their defaults)
METHODS: dict[str, tuple] = {
    "darts": (Softmax, {}),
    "snas": (Concrete, {"tau0": 1.0, "tau_min": 0.2, "schedule": "exp"}),
    "gdas": (HardGumbel, {"tau0": 10.0, "tau_min": 0.1, "schedule": "linear"}),
    "drnas": (Dirichlet, {"param": "elu", "regularise": "none", "c0": 1.0, "kl_scale": 1.0}),
    "variational": (partial(Dirichlet, regularise="kl"), {"param": "elu", "c0": 1.0, "kl_scale": 1.0}),
}


def build_posterior(method: str, cell_types, num_edges: int, num_ops: int,
                    generator: torch.Generator | None = None, **options) -> ArchDistribution:
    """The architecture distribution of ``method`` (a key of METHODS), its defaults updated by ``options``.

    Introduced in chapters/03_stochastic_relaxations.py.
    """
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(METHODS)}.{hint}")
    constructor, defaults = METHODS[method]
    unknown = [k for k in options if k not in defaults]
    if unknown:
        valid = ", ".join(defaults) if defaults else "none"
        raise ValueError(f"Unknown option(s) {unknown} for method {method!r}; valid options: {valid}.")
    return constructor(cell_types, num_edges, num_ops, generator, **{**defaults, **options})
