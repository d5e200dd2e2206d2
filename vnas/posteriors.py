"""Every method as a distribution q(θ) over each edge's mixing weights θ_e (a point of the simplex over
the edge's ops): DARTS, SNAS, GDAS, DrNAS, the course's variational method, and the baselines.

An architecture of a cell space is, per cell type ("normal"/"reduce" in DARTS, "cell" in NB201), a
matrix θ of E edges x O ops. An ``ArchDistribution`` turns its parameters into θ: ``sample()`` for a
forward pass during search, ``mean()`` for deriving the genotype. It also says what the search needs to
know about it, so that the search loop never asks which method it runs:
- ``trained``: whether it has parameters α that an architecture step learns by gradient;
- ``searched``: whether a search can change it at all (``random`` is one draw, nothing is searched);
- ``sparse``: whether its samples hold exact zeros, so that the supernet can skip those ops;
- ``structure_kl()``: the per-edge KL(q(θ_e) || p(θ_e)) when its objective has a prior term, else None;
  ``kl_weight`` multiplies it (1 is the ELBO; anything else is a temperature);
- ``regularisers()``: its named penalty terms, e.g. DARTS' L2 on α;
- ``end_epoch(score)``: a hook after every epoch, handed a function θ -> score (random search keeps its
  best cell that way, without ever seeing the supernet).

Two options of the learned distributions serve PC-DARTS and DrNAS' progressive search:
- ``edge_norm=True`` (PC-DARTS' edge normalisation, Xu et al., ICLR 2020): parameters β [E] per cell type,
  and θ gains the entries ``theta[edge_key(c)]`` = γ [E], γ_ij = softmax over node j's incoming edges of
  β_ij. The β are point estimates (no prior), trained by the same architecture step as α, with the same L2
  (``l2_beta``); a genotype is derived from γ_ij · θ_ij,o (``vnas.supernet.fold_edge_weights``). Off by
  default, and then nothing changes.
- ``prune(keep)`` (DrNAS): the ops with ``keep[c][e, o]`` False are gone for good: ``sample()`` and
  ``mean()`` give exactly 0 there and renormalise over the kept ops, and a Dirichlet's KL, entropy and
  log-density are those of Dir(β) over the kept ops.

``METHODS`` is the one registry of methods; ``build_posterior(method, space)`` builds one.
Place in the flow: spaces -> **posteriors** -> supernet -> objectives -> search.
Introduced in chapters/03_stochastic_relaxations.py.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas import spaces
from vnas.supernet import edge_key  # θ's layout is the supernet's input format, defined there

__all__ = ["ArchDistribution", "Learned", "Softmax", "Concrete", "HardGumbel", "Dirichlet", "UniformCells",
           "RandomCell", "METHODS", "Method", "build_posterior", "dirichlet_kl", "edge_normalise",
           "gumbel_softmax_sample", "keep_top_k"]


def _positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _non_negative(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
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


def dirichlet_kl(beta: Tensor, c0: float | Tensor, validate: bool = True, mask: Tensor | None = None) -> Tensor:
    """KL(Dir(beta) || Dir(c0)) per edge (last dim = ops), in closed form:

    KL = log G(b0) - sum_k log G(b_k) - log G(c_0) + sum_k log G(c_k) + sum_k (b_k - c_k)(psi(b_k) - psi(b0)),
    with b0 = sum_k b_k, c_0 = sum_k c_k; a float ``c0`` means the symmetric prior c_k = c0.
    ``validate=False`` skips the checks that read the tensors back to the host (the search's hot path,
    where a bad value shows up as a non-finite objective instead). With a boolean ``mask`` every sum runs
    over the ops where it is True: the KL between the Dirichlets of the kept ops (a pruned edge).
    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.9).
    """
    if not torch.is_tensor(beta) or beta.dim() == 0:
        raise ValueError("beta must be a tensor whose last dimension holds the ops' concentrations.")
    if validate and not bool((beta > 0).all()):
        raise ValueError("beta (the posterior concentration) must be > 0 everywhere.")
    if torch.is_tensor(c0):
        if validate and not bool((c0 > 0).all()):
            raise ValueError("c0 (the prior concentration) must be > 0 everywhere.")
        c = c0.to(beta).expand_as(beta)
    else:
        c = torch.full_like(beta, _positive("c0 (the prior concentration)", c0))
    if mask is not None:
        total = _kept_sum(mask)
        b0, c_sum = total(beta), total(c)
        return (torch.lgamma(b0) - total(torch.lgamma(beta)) - torch.lgamma(c_sum) + total(torch.lgamma(c))
                + total((beta - c) * (torch.digamma(beta) - torch.digamma(b0).unsqueeze(-1))))
    b0, c_sum = beta.sum(-1), c.sum(-1)
    return (torch.lgamma(b0) - torch.lgamma(beta).sum(-1) - torch.lgamma(c_sum) + torch.lgamma(c).sum(-1)
            + ((beta - c) * (torch.digamma(beta) - torch.digamma(b0).unsqueeze(-1))).sum(-1))


def _kept_sum(mask: Tensor) -> Callable[[Tensor], Tensor]:
    """t -> the sum of t over the last dim where ``mask`` is True (a ``where``, so the values of the other
    entries, and their gradients, never enter)."""
    def total(t: Tensor) -> Tensor:
        return torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device)).sum(-1)
    return total


def _dirichlet_entropy_kept(beta: Tensor, mask: Tensor) -> Tensor:
    """Differential entropy [E] of Dir(beta) over the kept ops:
    log B(b) + (b0 - K) psi(b0) - sum_k (b_k - 1) psi(b_k)."""
    total = _kept_sum(mask)
    b0, K = total(beta), mask.sum(-1).to(beta.dtype)
    return total(torch.lgamma(beta)) - torch.lgamma(b0) + (b0 - K) * torch.digamma(b0) \
        - total((beta - 1) * torch.digamma(beta))


def _dirichlet_log_prob_kept(beta: Tensor, theta: Tensor, mask: Tensor) -> Tensor:
    """log Dir(θ; beta) [E] over the kept ops (θ positive there): sum_k (b_k - 1) log θ_k - log B(b)."""
    total = _kept_sum(mask)
    log_theta = torch.log(torch.where(mask, theta, torch.ones((), dtype=theta.dtype, device=theta.device)))
    return total((beta - 1) * log_theta) - total(torch.lgamma(beta)) + torch.lgamma(total(beta))


def keep_top_k(weights: Tensor, k: int, keep: Tensor | None = None) -> Tensor:
    """Boolean [E, O]: per edge (row) the ``k`` ops of largest weight among those ``keep`` still has (all if
    None); ties go to the lower op index. DrNAS' pruning, by the distribution's mean weight.
    Introduced in chapters/06_full_search.py."""
    if not torch.is_tensor(weights) or weights.dim() != 2:
        raise ValueError("weights must be an [edges, ops] tensor (e.g. the distribution's mean).")
    keep = torch.ones_like(weights, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    kept = int(keep.sum(-1).min())
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= kept:
        raise ValueError(f"Cannot keep {k!r} ops per edge: keep between 1 and {kept} (the ops every edge still has).")
    scores = weights.detach().masked_fill(~keep, -math.inf)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(keep).scatter(-1, order, True)


def edge_normalise(beta: Tensor, edges) -> Tensor:
    """PC-DARTS' edge weights γ [E]: γ_ij = exp(β_ij) / Σ_i' exp(β_i'j), a softmax over the edges (i', j)
    that enter the same node j; ``edges`` lists (src, dst) per entry of ``beta``.
    Introduced in chapters/02_darts.py."""
    groups = {}
    for e, (_, dst) in enumerate(edges):
        groups.setdefault(dst, []).append(e)
    order = [e for dst in sorted(groups) for e in groups[dst]]
    gamma = torch.cat([F.softmax(beta[groups[dst]], dim=0) for dst in sorted(groups)])
    if order == list(range(len(order))):  # edges listed node by node, as both spaces list them
        return gamma
    return gamma[torch.tensor(order).argsort()]


class ArchDistribution(nn.Module):
    """q(θ): a distribution over the mixing weights θ[cell_type] ([E, O], rows on the simplex).

    Subclasses define ``sample()`` and ``mean()``; the rest has defaults (see the module docstring).
    Introduced in chapters/03_stochastic_relaxations.py.
    """

    trained = True  # an architecture step learns its parameters by gradient
    searched = True  # a search can change it (False: a fixed draw; nothing is searched)
    sparse = False  # samples hold exact zeros: pass supernet.active(theta) to skip those ops
    kl_weight = 1.0  # weight of the structure KL in the objective: 1 is the ELBO, anything else a temperature

    def __init__(self, cell_types: tuple[str, ...], num_edges: int, num_ops: int):
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
        self.progress = 0.0
        # an empty buffer that follows .to(device): distributions without parameters put their samples there
        self.register_buffer("_where", torch.empty(0), persistent=False)

    @classmethod
    def for_space(cls, space, generator: torch.Generator | None = None, **options) -> ArchDistribution:
        """The distribution for a search space (anything with ``cell_types``, ``num_edges``, ``num_ops``)."""
        return cls(space.cell_types, space.num_edges, space.num_ops, generator, **options)

    @property
    def device(self) -> torch.device:
        return self._where.device

    def sample(self) -> dict[str, Tensor]:
        """Mixing weights θ [E, O] per cell type for one forward pass (differentiable w.r.t. the parameters)."""
        raise NotImplementedError

    def mean(self) -> dict[str, Tensor]:
        """The point weights θ [E, O] per cell type from which the genotype is derived."""
        raise NotImplementedError

    def structure_kl(self) -> dict[str, Tensor] | None:
        """KL(q(θ_e) || p(θ_e)) [E] per cell type, or None when the method's objective has no prior term."""
        return None

    def regularisers(self) -> dict[str, Tensor]:
        """Named penalty terms (0-d tensors) added to the per-datum architecture objective."""
        return {}

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Tell the distribution where the search is (0 <= epoch <= epochs); progress runs 0 -> 1 and
        reaches 1 at the last epoch, epochs - 1."""
        ok = isinstance(epochs, int) and isinstance(epoch, int) and epochs >= 1 and 0 <= epoch <= epochs
        if not ok:
            raise ValueError(f"set_progress needs integers 0 <= epoch <= epochs, epochs >= 1; "
                             f"got epoch={epoch!r}, epochs={epochs!r}.")
        self.progress = min(1.0, epoch / max(epochs - 1, 1))

    def end_epoch(self, score: Callable[[dict[str, Tensor]], float]) -> None:
        """Called after every epoch with ``score(theta)`` (higher is better); nothing by default."""

    def scalars(self) -> dict[str, float]:
        """Scalars worth recording per epoch (e.g. a temperature)."""
        return {}

    def _entropy(self, cell_type: str) -> Tensor:
        """Entropy [E] in nats of the categorical mean (Dirichlet methods: of Dir(β))."""
        p = self.mean()[cell_type]
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

    def _concentration(self, cell_type: str) -> Tensor | None:
        return None

    def _keep(self, cell_type: str) -> Tensor | None:
        """The boolean [E, O] of the ops not pruned, or None when nothing is pruned."""
        return None

    def prune(self, keep: dict[str, Tensor]) -> None:
        """Remove ops for good (DrNAS' progressive search): only a learned distribution can (see ``Learned.prune``)."""
        raise ValueError(f"{type(self).__name__} has no architecture parameters to rank ops by or to mask; a "
                         f"progressive search (pruning ops) needs a learned distribution.")

    @torch.no_grad()
    def argmax_probabilities(self, samples: int = 1000) -> dict[str, Tensor]:
        """Per cell type [E, O]: the probability under q that op o is the argmax of θ_e, estimated from
        ``samples`` draws (exact for a point estimate: the one-hot of its argmax). This is the posterior
        probability of each op that a cell sampled from q keeps on the edge.
        Introduced in chapters/04_bayesian_structure_posterior.py."""
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}.")
        counts = {c: torch.zeros(self.num_edges, self.num_ops, device=self.device) for c in self.cell_types}
        for _ in range(samples):
            theta = self.sample()
            for c in self.cell_types:  # not the edge weights of edge normalisation
                counts[c] += F.one_hot(theta[c].argmax(-1), self.num_ops).to(counts[c])
        return {c: n / samples for c, n in counts.items()}

    @torch.no_grad()
    def edge_stats(self) -> dict[str, dict[str, list]]:
        """Per cell type: "mean" [E][O]; "concentration" [E] (sum of beta, or None for non-Dirichlet methods);
        "entropy" [E] in nats: of the categorical mean for point and Gumbel methods, the differential
        entropy of Dir(beta) for Dirichlet methods (it can be negative). After pruning, the sums and entropies
        run over the kept ops. With edge normalisation also "edge_weight" [E] (γ). Read once per epoch."""
        stats, mean = {}, self.mean()
        for c in self.cell_types:
            conc, keep = self._concentration(c), self._keep(c)
            if conc is not None and keep is not None:
                conc = torch.where(keep, conc, torch.zeros((), dtype=conc.dtype, device=conc.device))
            stats[c] = {"mean": mean[c].cpu().tolist(),
                        "concentration": None if conc is None else conc.sum(-1).cpu().tolist(),
                        "entropy": self._entropy(c).cpu().tolist()}
            if edge_key(c) in mean:
                stats[c]["edge_weight"] = mean[edge_key(c)].cpu().tolist()
        return stats

    def valid(self) -> Tensor:
        """A 0-d boolean tensor on the device, True when the parameters can be used (checked every step
        without reading back to the host; ``check_finite`` then says what is wrong)."""
        return torch.ones((), dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def check_finite(self) -> None:
        """Raise FloatingPointError naming the cell type and edge whose parameters are not finite (scans
        every edge: for error messages, not for every step)."""


class Learned(ArchDistribution):
    """A distribution with architecture parameters α[cell_type] of shape [E, O], initialised 1e-3 * randn
    (DARTS), and DARTS' L2 on them as a named term, l2/2 · Σ ||α||² (Adam's weight_decay=l2 in the DARTS
    code, 1e-3; the same value in SNAS, GDAS and DrNAS).

    ``edge_norm=True`` adds PC-DARTS' edge parameters β[cell_type] [E] (``edge_betas``: PC-DARTS' β, not
    DrNAS' concentration), also initialised 1e-3 * randn and under the same L2 (``l2_beta``), and θ gains the
    edge weights γ = ``edge_normalise(β, edges)`` under ``edge_key(cell_type)``; ``edges`` are the cell's
    (src, dst) pairs (``for_space`` passes the space's). ``prune(keep)`` masks ops for good.

    Subclasses define ``_sample(alpha)`` and ``_mean(alpha)`` for one cell type's [E, O] matrix, and, if
    masking the logits with -inf is not right for them, ``_sample_kept`` / ``_mean_kept``.
    Introduced in chapters/03_stochastic_relaxations.py.
    """

    def __init__(self, cell_types, num_edges, num_ops, generator: torch.Generator | None = None, l2: float = 1e-3,
                 edge_norm: bool = False, edges=None):
        super().__init__(cell_types, num_edges, num_ops)
        self.generator, self.l2 = generator, _non_negative("l2 (the L2 coefficient on alpha)", l2)
        self.alphas = nn.ParameterDict({
            c: nn.Parameter(1e-3 * torch.randn(num_edges, num_ops, generator=generator)) for c in cell_types})
        if not isinstance(edge_norm, bool):
            raise ValueError(f"edge_norm must be true or false, got {edge_norm!r}.")
        self.edge_norm, self.edges = edge_norm, None
        if edge_norm:  # made after α, so that α's initial values do not depend on the option
            if edges is None or len(edges) != num_edges or not all(len(pair) == 2 for pair in edges):
                raise ValueError(f"edge_norm needs the cell's {num_edges} edges as (src, dst) pairs, to normalise "
                                 f"over each node's incoming edges; got {edges!r}. Build the distribution with "
                                 f"build_posterior(..., edge_norm=True) or for_space, which pass the space's edges.")
            self.edges = tuple((int(i), int(j)) for i, j in edges)
            self.edge_betas = nn.ParameterDict({
                c: nn.Parameter(1e-3 * torch.randn(num_edges, generator=generator)) for c in cell_types})

    @classmethod
    def for_space(cls, space, generator: torch.Generator | None = None, **options) -> ArchDistribution:
        if options.get("edge_norm"):
            options = {**options, "edges": space.edges}
        return super().for_space(space, generator, **options)

    def _sample(self, alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def _mean(self, alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample_kept(self, alpha: Tensor, keep: Tensor) -> Tensor:
        """A sample over the kept ops only: the logits of pruned ops are -inf, so a softmax or a Gumbel
        argmax gives them exactly 0 (and the renormalised softmax over the rest; α there gets no gradient)."""
        return self._sample(alpha.masked_fill(~keep, -math.inf))

    def _mean_kept(self, alpha: Tensor, keep: Tensor) -> Tensor:
        return self._mean(alpha.masked_fill(~keep, -math.inf))

    def _keep(self, cell_type: str) -> Tensor | None:
        keep = getattr(self, "op_keep", None)
        return None if keep is None else keep[self.cell_types.index(cell_type)]

    def edge_weights(self) -> dict[str, Tensor]:
        """PC-DARTS' γ [E] per cell type, keyed ``edge_key(cell_type)``; empty without edge normalisation."""
        if not self.edge_norm:
            return {}
        return {edge_key(c): edge_normalise(b, self.edges) for c, b in self.edge_betas.items()}

    def sample(self) -> dict[str, Tensor]:
        theta = {c: self._sample(a) if (keep := self._keep(c)) is None else self._sample_kept(a, keep)
                 for c, a in self.alphas.items()}
        return {**theta, **self.edge_weights()} if self.edge_norm else theta

    def mean(self) -> dict[str, Tensor]:
        theta = {c: self._mean(a) if (keep := self._keep(c)) is None else self._mean_kept(a, keep)
                 for c, a in self.alphas.items()}
        return {**theta, **self.edge_weights()} if self.edge_norm else theta

    @torch.no_grad()
    def top_k_keep(self, k: int) -> dict[str, Tensor]:
        """Per cell type the boolean [E, O] that keeps, on every edge, the ``k`` ops of largest mean weight
        among those not pruned yet (DrNAS; edge weights scale a whole row, so they do not change the ranking).
        Introduced in chapters/06_full_search.py."""
        mean = self.mean()
        return {c: keep_top_k(mean[c], k, self._keep(c)) for c in self.cell_types}

    def prune(self, keep: Mapping[str, Tensor]) -> None:
        """Keep, for good, only the ops with ``keep[c][e, o]`` True: from now on ``sample()`` and ``mean()``
        are exactly 0 elsewhere and renormalised over the kept ops (a Dirichlet's KL, entropy and log-density
        are those over the kept ops). The mask is a buffer ``op_keep`` [cell types, E, O] in the state dict,
        so a state saved after pruning loads into a distribution pruned the same way (and into no other).
        Introduced in chapters/06_full_search.py."""
        if not isinstance(keep, Mapping) or set(keep) != set(self.cell_types):
            got = sorted(keep) if isinstance(keep, Mapping) else type(keep).__name__
            raise ValueError(f"keep needs one boolean [{self.num_edges}, {self.num_ops}] mask per cell type "
                             f"{', '.join(self.cell_types)}; got {got}.")
        masks = []
        for c in self.cell_types:
            m = torch.as_tensor(keep[c], device=self.device).detach()
            if m.dtype != torch.bool or tuple(m.shape) != (self.num_edges, self.num_ops):
                raise ValueError(f"keep[{c!r}] must be a boolean tensor of shape ({self.num_edges}, {self.num_ops}); "
                                 f"got {m.dtype} {tuple(m.shape)}.")
            empty = (~m.any(-1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"keep[{c!r}] keeps no op on edge {empty[0]}: every edge keeps at least one.")
            old = self._keep(c)
            if old is not None and bool((m & ~old).any()):
                e, o = (m & ~old).nonzero()[0].tolist()
                raise ValueError(f"keep[{c!r}] keeps op {o} of edge {e}, pruned before: a pruned op cannot come back.")
            masks.append(m)
        stacked = torch.stack(masks)
        if getattr(self, "op_keep", None) is None:
            self.register_buffer("op_keep", stacked)
        else:
            self.op_keep.copy_(stacked)

    def regularisers(self) -> dict[str, Tensor]:
        """{"l2_alpha": l2/2 · Σ_cell types ||α||²}, or nothing when l2 = 0 (then the objective has no such term);
        with edge normalisation also {"l2_beta": l2/2 · Σ ||β||²} (PC-DARTS decays β with α)."""
        if self.l2 == 0:
            return {}
        terms = {"l2_alpha": 0.5 * self.l2 * sum(a.pow(2).sum() for a in self.alphas.values())}
        if self.edge_norm:
            terms["l2_beta"] = 0.5 * self.l2 * sum(b.pow(2).sum() for b in self.edge_betas.values())
        return terms

    @torch.no_grad()
    def valid(self) -> Tensor:
        flags = [torch.isfinite(a).all() for a in self.alphas.values()]
        flags += [(conc > 0).all() for c in self.cell_types if (conc := self._concentration(c)) is not None]
        if self.edge_norm:
            flags += [torch.isfinite(b).all() for b in self.edge_betas.values()]
        return torch.stack(flags).all()

    @torch.no_grad()
    def check_finite(self) -> None:
        for c, a in self.alphas.items():
            conc = self._concentration(c)
            for e in range(self.num_edges):
                if not bool(torch.isfinite(a[e]).all()):
                    raise FloatingPointError(f"Architecture parameters of cell type {c!r}, edge {e} are not "
                                             f"finite: {a[e].tolist()}")
                if conc is not None and not bool((torch.isfinite(conc[e]) & (conc[e] > 0)).all()):
                    raise FloatingPointError(f"Dirichlet concentration of cell type {c!r}, edge {e} is not "
                                             f"finite and > 0: {conc[e].tolist()}")
                if self.edge_norm and not bool(torch.isfinite(self.edge_betas[c][e])):
                    raise FloatingPointError(f"Edge parameter beta of cell type {c!r}, edge {e} is not finite: "
                                             f"{self.edge_betas[c][e].item()}")

    def _repr_options(self) -> str:
        return ", edge_norm=True" if self.edge_norm else ""

    def extra_repr(self):
        return f"l2={self.l2}{self._repr_options()}"


class Softmax(Learned):
    """DARTS' point estimate: sample() = mean() = softmax(alpha).

    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.1).
    """

    def _sample(self, alpha):
        return F.softmax(alpha, dim=-1)

    _mean = _sample


class Concrete(Learned):
    """SNAS: relaxed Concrete samples softmax((alpha + g) / tau); tau is annealed by ``set_progress``:
    "exp" (default): tau = tau0 * (tau_min / tau0) ** progress;
    "linear": tau = tau0 + (tau_min - tau0) * progress.
    Introduced in chapters/03_stochastic_relaxations.py, Eq. (3.4).
    """

    hard = False

    def __init__(self, cell_types, num_edges, num_ops, generator=None, tau0: float = 1.0,
                 tau_min: float = 0.2, schedule: str = "exp", l2: float = 1e-3, edge_norm: bool = False, edges=None):
        super().__init__(cell_types, num_edges, num_ops, generator, l2, edge_norm, edges)
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

    def scalars(self):
        return {"tau": float(self.tau)}

    def _sample(self, alpha):
        return gumbel_softmax_sample(alpha, self.tau, self.generator, hard=self.hard)

    def _mean(self, alpha):
        return F.softmax(alpha, dim=-1)

    def extra_repr(self):
        return (f"tau={self.tau:.4g}, tau0={self.tau0}, tau_min={self.tau_min}, schedule={self.schedule!r}, "
                f"l2={self.l2}{self._repr_options()}")


class HardGumbel(Concrete):
    """GDAS: one-hot forward (exact 0.0 for unselected ops), straight-through gradient of the soft sample;
    default temperature 10 -> 0.1, linear, as in GDAS. Introduced in chapters/03_stochastic_relaxations.py,
    Eq. (3.5).
    """

    hard = True
    sparse = True

    def __init__(self, cell_types, num_edges, num_ops, generator=None, tau0: float = 10.0,
                 tau_min: float = 0.1, schedule: str = "linear", l2: float = 1e-3, edge_norm: bool = False, edges=None):
        super().__init__(cell_types, num_edges, num_ops, generator, tau0, tau_min, schedule, l2, edge_norm, edges)


class Dirichlet(Learned):
    """q(θ_e) = Dir(beta_e) per edge, beta = elu(alpha) + 1 (DrNAS) or softplus(alpha).

    ``sample()`` uses ``torch.distributions.Dirichlet.rsample`` (implicit reparameterisation gradients,
    Figurnov et al. 2018; arguments not validated, so that sampling never reads back to the host); it
    cannot take a generator, so sampling uses torch's global RNG (seed it with ``vnas.setup``);
    ``generator`` only seeds alpha's initial values. ``regularise="kl"`` puts the prior p(θ_e) = Dir(c0)
    into the objective: ``structure_kl()`` is then KL(Dir(beta_e) || Dir(c0)) per edge, weighted by
    ``kl_scale`` (the KL weight; 1 is the ELBO). "none" (DrNAS' default) has no prior term; both keep the
    L2 on alpha (``l2``). With alpha ~ 0 at the start, elu gives the flat Dir(1); softplus gives
    beta = log 2 ~ 0.69, mass towards the corners.
    Introduced in chapters/03_stochastic_relaxations.py, Eqs. (3.6)-(3.9).
    """

    def __init__(self, cell_types, num_edges, num_ops, generator=None, param: str = "elu",
                 regularise: str = "none", c0: float = 1.0, kl_scale: float = 1.0, l2: float = 1e-3,
                 edge_norm: bool = False, edges=None):
        super().__init__(cell_types, num_edges, num_ops, generator, l2, edge_norm, edges)
        self.param = _choice("param", param, ("elu", "softplus"))
        self.regularise = _choice("regularise", regularise, ("none", "kl"))
        self.c0 = _positive("c0 (the prior concentration)", c0)
        self.kl_weight = _non_negative("kl_scale (the KL weight)", kl_scale)

    def concentration(self, cell_type: str) -> Tensor:
        """beta [E, O] of one cell type: elu(alpha) + 1 or softplus(alpha)."""
        return self._beta(self.alphas[cell_type])

    def _concentration(self, cell_type):
        return self.concentration(cell_type)

    def _beta(self, alpha):
        return F.elu(alpha) + 1 if self.param == "elu" else F.softplus(alpha)

    def _dist(self, alpha) -> torch.distributions.Dirichlet:
        return torch.distributions.Dirichlet(self._beta(alpha), validate_args=False)

    def _sample(self, alpha):
        return self._dist(alpha).rsample()

    def _mean(self, alpha):
        beta = self._beta(alpha)
        return beta / beta.sum(-1, keepdim=True)

    def _sample_kept(self, alpha, keep):
        """θ ~ Dir(β over the kept ops), exactly 0 elsewhere: independent Gamma(β_o, 1) draws g_o (pathwise
        gradients), θ_o = g_o / Σ_kept g (DrNAS also zeroes and renormalises). A pruned op's β never enters."""
        g = torch.distributions.Gamma(self._beta(alpha), 1.0, validate_args=False).rsample()
        g = torch.where(keep, g.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros((), dtype=g.dtype, device=g.device))
        return g / g.sum(-1, keepdim=True)

    def _mean_kept(self, alpha, keep):
        beta = torch.where(keep, self._beta(alpha), torch.zeros((), dtype=alpha.dtype, device=alpha.device))
        return beta / beta.sum(-1, keepdim=True)

    def _entropy(self, cell_type):
        keep = self._keep(cell_type)
        if keep is not None:
            return _dirichlet_entropy_kept(self.concentration(cell_type), keep)
        return self._dist(self.alphas[cell_type]).entropy()

    def entropy(self) -> dict[str, Tensor]:
        """Differential entropy [E] of each edge's Dir(beta_e), per cell type (over the kept ops after pruning)."""
        return {c: self._entropy(c) for c in self.cell_types}

    def log_prob(self, theta: dict[str, Tensor]) -> dict[str, Tensor]:
        """log Dir(θ_e; beta_e) [E] per cell type, for weights θ [E, O] on the simplex (over the kept ops
        after pruning)."""
        out = {}
        for c in self.cell_types:
            keep = self._keep(c)
            out[c] = (self._dist(self.alphas[c]).log_prob(theta[c]) if keep is None
                      else _dirichlet_log_prob_kept(self.concentration(c), theta[c], keep))
        return out

    def kl(self) -> dict[str, Tensor]:
        """KL(Dir(beta_e) || Dir(c0)) [E] per cell type, Eq. (3.9), whether or not the objective uses it
        (over the kept ops after pruning)."""
        return {c: dirichlet_kl(self._beta(a), self.c0, validate=False, mask=self._keep(c))
                for c, a in self.alphas.items()}

    def structure_kl(self) -> dict[str, Tensor] | None:
        return self.kl() if self.regularise == "kl" else None

    def extra_repr(self):
        return (f"param={self.param!r}, regularise={self.regularise!r}, c0={self.c0}, kl_scale={self.kl_weight}, "
                f"l2={self.l2}{self._repr_options()}")


# --- baselines -----------------------------------------------------------------------------------------

def _seeded(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a CPU generator seeded from torch's global RNG (seeded by ``vnas.setup``)."""
    return generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, ())))


class UniformCells(ArchDistribution):
    """Random sampling with shared weights (``random_ws``; Li & Talwalkar, 2019): every sample is the
    one-hot θ of a uniformly drawn cell, so every weight step trains one random cell of the supernet. The
    mean is the best of ``candidates`` fresh random cells, scored after every epoch by ``end_epoch``.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """

    trained, sparse = False, True

    def __init__(self, space, generator: torch.Generator | None = None, candidates: int = 10):
        super().__init__(space.cell_types, space.num_edges, space.num_ops)
        if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}.")
        self.space, self.candidates = space, candidates
        self.generator = _seeded(generator)
        self.best = space.random_genotype(self.generator)  # until the first epoch has scored some

    @classmethod
    def for_space(cls, space, generator=None, **options):
        return cls(space, generator, **options)

    def _theta(self, genotype) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in self.space.one_hot(genotype).items()}

    def sample(self):
        return self._theta(self.space.random_genotype(self.generator))

    def mean(self):
        return self._theta(self.best)

    def end_epoch(self, score):
        """Keep the best of ``candidates`` random cells by ``score`` (ties: the first drawn)."""
        cells = [self.space.random_genotype(self.generator) for _ in range(self.candidates)]
        scores = [score(self._theta(g)) for g in cells]
        self.best = cells[max(range(len(cells)), key=scores.__getitem__)]

    def get_extra_state(self):
        return {"generator": self.generator.get_state(), "best": json.dumps(self.best.to_json())}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
        self.best = self.space.Genotype.from_json(json.loads(state["best"]))

    def extra_repr(self):
        return f"space={self.space.name!r}, candidates={self.candidates}"


class RandomCell(ArchDistribution):
    """The ``random`` baseline: one cell drawn uniformly when the distribution is made; nothing is searched.
    Introduced in chapters/04_bayesian_structure_posterior.py.
    """

    trained, searched, sparse = False, False, True

    def __init__(self, space, generator: torch.Generator | None = None):
        super().__init__(space.cell_types, space.num_edges, space.num_ops)
        self.space = space
        self.cell = space.random_genotype(_seeded(generator))

    @classmethod
    def for_space(cls, space, generator=None, **options):
        return cls(space, generator, **options)

    def sample(self):
        return {k: v.to(self.device) for k, v in self.space.one_hot(self.cell).items()}

    mean = sample

    def get_extra_state(self):
        return {"cell": json.dumps(self.cell.to_json())}

    def set_extra_state(self, state):
        self.cell = self.space.Genotype.from_json(json.loads(state["cell"]))

    def extra_repr(self):
        return f"cell={self.cell}"


# --- the registry ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One method: its distribution, the options a user may set (with their defaults), options fixed by
    the method, and the spaces it is defined for."""

    cls: type
    defaults: dict
    fixed: dict = field(default_factory=dict)
    spaces: tuple[str, ...] = ("darts", "nb201")

    @property
    def trained(self) -> bool:
        return self.cls.trained


METHODS: dict[str, Method] = {
    "darts": Method(Softmax, {"l2": 1e-3, "edge_norm": False}),
    "snas": Method(Concrete, {"tau0": 1.0, "tau_min": 0.2, "schedule": "exp", "l2": 1e-3, "edge_norm": False}),
    "gdas": Method(HardGumbel, {"tau0": 10.0, "tau_min": 0.1, "schedule": "linear", "l2": 1e-3, "edge_norm": False}),
    "drnas": Method(Dirichlet, {"param": "elu", "regularise": "none", "c0": 1.0, "kl_scale": 1.0, "l2": 1e-3,
                                "edge_norm": False}),
    # the course's method optimises Eq. (4.2) as chapter 04 writes it: the prior is its only regulariser
    "variational": Method(Dirichlet, {"param": "elu", "c0": 1.0, "kl_scale": 1.0, "l2": 0.0, "edge_norm": False},
                          {"regularise": "kl"}),
    "random_ws": Method(UniformCells, {"candidates": 10}),
    "random": Method(RandomCell, {}),
}
"""Every method of the course, the baselines included. Introduced in chapters/03_stochastic_relaxations.py."""


def get_method(method: str) -> Method:
    """The registry entry of ``method``, or a ValueError listing the valid names."""
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(METHODS)}.{hint}")
    return METHODS[method]


def build_posterior(method: str, space, generator: torch.Generator | None = None, **options) -> ArchDistribution:
    """The distribution of ``method`` (a key of METHODS) on ``space`` (a ``vnas.spaces.Space`` or its name),
    its defaults updated by ``options``: ``build_posterior("variational", "nb201", c0=0.5)``.

    Introduced in chapters/03_stochastic_relaxations.py.
    """
    entry = get_method(method)
    if isinstance(space, str):  # a name is looked up; a Space (or anything shaped like one) is used as is
        space = spaces.get_space(space)
    if "edge_norm" in options and "edge_norm" not in entry.defaults:
        raise ValueError(f"edge_norm (PC-DARTS' edge normalisation) needs a distribution with architecture "
                         f"parameters, trained by the architecture step; method {method!r} has none. Use one of "
                         f"{', '.join(m for m, e in METHODS.items() if 'edge_norm' in e.defaults)}.")
    unknown = [k for k in options if k not in entry.defaults]
    if unknown:
        valid = ", ".join(entry.defaults) if entry.defaults else "none"
        raise ValueError(f"Unknown option(s) {unknown} for method {method!r}; valid options: {valid}.")
    return entry.cls.for_space(space, generator, **{**entry.defaults, **options, **entry.fixed})
