"""The objective of every search and training step, written like the ELBO, term by term.

Chapter 01's bound (1.5), divided by the number N of data points and negated, is the per-datum
objective that every step here minimises (chapter 04, Eq. (4.2)):

    objective = nll + kl_weight · (structure_kl + weight_kl) / N + Σ_k regulariser_k

- ``nll``: the expected negative log-likelihood per datum, estimated with one sample of θ per step
  (``expected_nll``; the likelihood is a parameter: categorical for images, Gaussian for regression);
- ``structure_kl``: Σ_e KL(q(θ_e) || p(θ_e)), for methods whose objective has a prior on θ (0 otherwise);
- ``weight_kl``: KL(q(w) || p(w)), 0 for point weights;
- ``kl_weight``: 1 is the ELBO; any other value is a temperature, and is named as one;
- ``penalty``: everything but the data terms (the KLs over N and the regularisers);
- regularisers: every other penalty, each a named term and never an optimiser option: DARTS' L2 on α
  (``l2_alpha``), the weights' L2 (``l2_w``, λ/2 ||w||², what SGD's weight decay λ adds to the gradient),
  the auxiliary head's loss of the final DARTS network.
``per_datum_objective`` returns every term separately, with their sum under "objective", so that the
search and the trainer can log each one.

The bilevel part: the architecture's NLL is measured on the validation half at weights trained on the
other half. Its gradient with respect to θ is taken first or second order (DARTS Eqs. 6-8; chapter 02,
Eqs. (2.5)-(2.7)) and reaches the distribution's parameters through θ by the chain rule (``pullback``).
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas import bayes

# --- likelihoods ----------------------------------------------------------------------------------


class Categorical:
    """p(y | f) = softmax(f)_y for logits f: the negative log-likelihood is the cross-entropy.

    Introduced in chapters/02_darts.py."""

    def nll(self, f: Tensor, y: Tensor) -> Tensor:
        """-log p(y | f), averaged over the batch."""
        return F.cross_entropy(f, y)

    def __repr__(self):
        return "Categorical()"


class Gaussian:
    """p(y | f) = N(y; f, σ²) for each output: -log p = (y - f)² / (2σ²) + log σ + ½ log 2π, summed over the
    outputs of a datum. Introduced in chapters/01_bayesian_model_selection.py, Eq. (1.6)."""

    def __init__(self, sigma: float):
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not 0 < sigma < math.inf:
            raise ValueError(f"sigma (the noise standard deviation) must be a finite number > 0, got {sigma!r}.")
        self.sigma = float(sigma)

    def nll(self, f: Tensor, y: Tensor) -> Tensor:
        """-log p(y | f), summed over each datum's outputs and averaged over the batch."""
        per_output = 0.5 * ((y - f) / self.sigma) ** 2 + math.log(self.sigma) + 0.5 * math.log(2 * math.pi)
        return per_output.reshape(len(y), -1).sum(-1).mean()

    def __repr__(self):
        return f"Gaussian(sigma={self.sigma})"


CATEGORICAL = Categorical()


def expected_nll(f: Tensor, y: Tensor, likelihood=CATEGORICAL) -> Tensor:
    """The NLL term: -log p(y | f) per datum, averaged over the batch, where f is the model's output for one
    sample of θ (and of w): a one-sample Monte Carlo estimate of E_q[-log p(y | w, θ)].

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2)."""
    return likelihood.nll(f, y)


# --- the KL terms -----------------------------------------------------------------------------------

def structure_kl(posterior) -> Tensor:
    """Σ over cell types and edges of KL(q(θ_e) || p(θ_e)), in nats; 0 for a method without a prior term.

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2)."""
    per_edge = posterior.structure_kl()
    if per_edge is None:
        return torch.zeros((), device=posterior.device)
    return sum(kl.sum() for kl in per_edge.values())


def weight_kl(model: nn.Module, prior=None, theta: dict[str, Tensor] | None = None, detach_q: bool = False) -> Tensor:
    """KL(q(w) || p(w | θ)) in nats over the model's mean-field layers (``vnas.bayes.weight_kl``); 0 for a
    network of point weights or ``prior=None``. With the coupled prior, ``theta`` is the sample θ ~ q(θ) of the
    step; ``detach_q`` keeps the gradient off q(w) (the architecture step, which updates only q(θ)).

    Introduced in chapters/05_bayesian_weights.py, Eq. (5.5)."""
    if prior is None or not bayes.is_bayesian(model):
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return bayes.weight_kl(model, prior, theta, detach_q=detach_q)


# --- named regularisers -------------------------------------------------------------------------------

class _HalfSquaredNorm(torch.autograd.Function):
    """½ Σ_i ||p_i||² of many tensors, with fused multi-tensor kernels (a network has hundreds of weight
    tensors; one kernel per tensor would cost more than the term). Its gradient is p_i."""

    @staticmethod
    def forward(ctx, *params):
        ctx.save_for_backward(*params)
        return 0.5 * torch.stack(torch._foreach_norm(params)).square().sum()

    @staticmethod
    def backward(ctx, g):
        return tuple(torch._foreach_mul(ctx.saved_tensors, g))


def l2(params, coefficient: float) -> Tensor:
    """The L2 term coefficient/2 · Σ ||p||² (its gradient, coefficient · p, is what an optimiser's weight decay
    adds). Introduced in chapters/02_darts.py, Eq. (2.8)."""
    params = [p for p in params if p.requires_grad]
    if not params or coefficient == 0:
        return torch.zeros((), device=params[0].device if params else None)
    return coefficient * _HalfSquaredNorm.apply(*params)


# --- the objective ----------------------------------------------------------------------------------------

def per_datum_objective(nll: Tensor, num_data: int, structure_kl: Tensor | None = None,
                        weight_kl: Tensor | None = None, kl_weight: float = 1.0, auxiliary: Tensor | None = None,
                        weight_kl_weight: float | None = None, **regularisers: Tensor) -> dict[str, Tensor]:
    """The terms of -ELBO / N plus the named regularisers, and their sum:

        objective = nll [+ auxiliary] + penalty,
        penalty   = (kl_weight · structure_kl + weight_kl_weight · weight_kl) / num_data + Σ regularisers

    ``weight_kl_weight`` (the weights' KL temperature) is ``kl_weight`` unless given.

    ``auxiliary`` is a second data term (the auxiliary head's weighted NLL); the penalty is everything that
    needs no data, so a step can clip the data term's gradient alone, as DARTS does (its weight decay is
    added after clipping). Returns {"nll", ["auxiliary"], "structure_kl", "weight_kl", <each regulariser>,
    "penalty", "objective"} (0-d tensors; the KLs in nats, unscaled).
    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2).
    """
    if not isinstance(num_data, int) or isinstance(num_data, bool) or num_data < 1:
        raise ValueError(f"num_data must be an integer >= 1 (the data points the likelihood sums over), got "
                         f"{num_data!r}.")
    weight_kl_weight = kl_weight if weight_kl_weight is None else weight_kl_weight
    for name, value in (("kl_weight", kl_weight), ("weight_kl_weight", weight_kl_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    zero = torch.zeros((), device=nll.device, dtype=nll.dtype)
    terms = {"nll": nll}
    if auxiliary is not None:
        terms["auxiliary"] = auxiliary
    terms["structure_kl"] = zero if structure_kl is None else structure_kl
    terms["weight_kl"] = zero if weight_kl is None else weight_kl
    terms.update(regularisers)
    penalty = (kl_weight * terms["structure_kl"] + weight_kl_weight * terms["weight_kl"]) / num_data
    for value in regularisers.values():
        penalty = penalty + value
    terms["penalty"] = penalty
    terms["objective"] = (nll if auxiliary is None else nll + auxiliary) + penalty
    return terms


def architecture_terms(posterior, nll: Tensor, num_data: int, weight_kl: Tensor | None = None,
                       weight_kl_weight: float = 1.0) -> dict[str, Tensor]:
    """The architecture step's objective, Eq. (4.2): the NLL of the validation half, the structure KL over
    N = ``num_data`` validation points (weighted by the method's ``kl_weight``), and the method's
    regularisers (e.g. ``l2_alpha``). Under a structure-dependent weight prior the expected weight KL
    E_q(θ)[KL(q(w) || p(w | θ))] depends on q(θ) too: ``weight_kl`` (its one-sample estimate) joins the
    objective with its temperature ``weight_kl_weight`` (chapter 05, Eq. (5.7)).
    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2).
    """
    terms = per_datum_objective(nll, num_data, structure_kl=structure_kl(posterior), weight_kl=weight_kl,
                                kl_weight=posterior.kl_weight, weight_kl_weight=weight_kl_weight,
                                **posterior.regularisers())
    if weight_kl is None:
        del terms["weight_kl"]
    if posterior.structure_kl() is not None:  # a method with a prior: its per-datum ELBO (KL weights 1, no regulariser)
        kl = terms["structure_kl"] + (0 if weight_kl is None else weight_kl)
        terms["elbo"] = per_datum_elbo(nll, kl, num_data).detach()
    return terms


def per_datum_elbo(nll: Tensor, kl: Tensor, num_data: int) -> Tensor:
    """ELBO / N = -(nll + KL / N): the bound (1.5) per datum, whatever KL weight the objective uses.

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.3)."""
    return -(nll + kl / num_data)


def weight_terms(nll: Tensor, num_data: int, weights, weight_decay: float, weight_kl: Tensor | None = None,
                 auxiliary: Tensor | None = None, weight_kl_weight: float = 1.0,
                 **regularisers: Tensor) -> dict[str, Tensor]:
    """The weight step's objective, Eq. (2.8): the NLL of the training half (and an auxiliary head's), the
    weight KL over its ``num_data`` points (with its temperature ``weight_kl_weight``), and the L2 term
    ``l2_w`` = weight_decay/2 · Σ ||w||² of the point tensors ``weights`` (the point-weight stand-in for a
    Gaussian prior; Bayesian weights have their prior in the KL instead). With a weight KL, "elbo" is the
    weights' per-datum ELBO of the batch (KL weight 1). Introduced in chapters/02_darts.py, Eq. (2.8).
    """
    terms = per_datum_objective(nll, num_data, weight_kl=weight_kl, auxiliary=auxiliary,
                                weight_kl_weight=weight_kl_weight, l2_w=l2(weights, weight_decay), **regularisers)
    if weight_kl is not None:
        terms["elbo"] = per_datum_elbo(nll, weight_kl, num_data).detach()
    return terms


# --- the architecture gradient of the bilevel problem ---------------------------------------------------

def loss_on(supernet: nn.Module, theta: dict[str, Tensor], batch: tuple[Tensor, Tensor], active=None,
            likelihood=CATEGORICAL) -> Tensor:
    """The NLL of the supernet with mixing weights ``theta`` on one batch. Introduced in chapters/02_darts.py."""
    x, y = batch
    return expected_nll(supernet(x, theta, active), y, likelihood)


def _leaves(theta: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().requires_grad_() for k, v in theta.items()}


def _grad(loss: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """d loss / d inputs, with zeros for an input the loss does not use: a hard sample can switch a whole
    cell off (e.g. 'none' on every edge into its output node), and then its mixing weights get no gradient."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def first_order_gradient(supernet, theta, val_batch, active=None, likelihood=CATEGORICAL
                         ) -> tuple[dict[str, Tensor], Tensor]:
    """∂NLL_val(w, θ)/∂θ with the weights held fixed (DARTS first order, ξ = 0), and the NLL.

    Introduced in chapters/02_darts.py, Eq. (2.5).
    """
    t = _leaves(theta)
    nll = loss_on(supernet, t, val_batch, active, likelihood)
    return dict(zip(t, _grad(nll, list(t.values())), strict=True)), nll.detach()


def second_order_gradient(supernet, theta, train_batch, val_batch, xi: float, fd_scale: float = 0.01, active=None,
                          likelihood=CATEGORICAL) -> tuple[dict[str, Tensor], Tensor]:
    """∂L_val(w', θ)/∂θ - ξ ∂²L_train(w, θ)/∂θ∂w · ∂L_val(w', θ)/∂w'  with  w' = w - ξ ∂L_train(w, θ)/∂w.

    The Hessian-vector product is a central difference (DARTS Eq. 8):
        [∂L_train(w+, θ)/∂θ - ∂L_train(w-, θ)/∂θ] / (2 eps),  w+- = w +- eps v,  eps = fd_scale / ||v||
    with DARTS' fd_scale = 0.01. In a ReLU network ∂L/∂θ jumps wherever a unit crosses zero, so a step of
    that size measures an average slope across kinks rather than the derivative at w; a tiny fd_scale (in
    float64) recovers the derivative itself. The virtual step, like the rest of this function, leaves out the
    weights' L2 and momentum. The supernet's weights are restored before returning.
    Introduced in chapters/02_darts.py, Eqs. (2.6)-(2.7).
    """
    params = [p for p in supernet.parameters() if p.requires_grad]
    w = [p.detach().clone() for p in params]
    t = _leaves(theta)

    def set_weights(values):
        with torch.no_grad():
            for p, v in zip(params, values, strict=True):
                p.copy_(v)

    def loss(batch):
        return loss_on(supernet, t, batch, active, likelihood)

    try:
        g_train = _grad(loss(train_batch), params)
        set_weights([wi - xi * gi for wi, gi in zip(w, g_train, strict=True)])  # the virtual step w'
        nll = loss(val_batch)
        grads = _grad(nll, list(t.values()) + params)
        dtheta, v = grads[:len(t)], grads[len(t):]
        eps = fd_scale / torch.sqrt(sum((vi * vi).sum() for vi in v)).clamp_min(1e-12)
        hvp_parts = []
        for sign in (1.0, -1.0):
            set_weights([wi + sign * eps * vi for wi, vi in zip(w, v, strict=True)])
            hvp_parts.append(_grad(loss(train_batch), list(t.values())))
        hvp = [(gp - gn) / (2 * eps) for gp, gn in zip(*hvp_parts, strict=True)]
    finally:
        set_weights(w)
    return {k: d - xi * h for k, d, h in zip(t, dtheta, hvp, strict=True)}, nll.detach()


def exact_second_order_gradient(supernet, theta, train_batch, val_batch, xi: float, likelihood=CATEGORICAL
                                ) -> dict[str, Tensor]:
    """The same hypergradient by double backward (no finite differences): for tests and for chapter 02.

    Introduced in chapters/02_darts.py, Eq. (2.6).
    """
    from torch.func import functional_call

    names = [n for n, p in supernet.named_parameters() if p.requires_grad]
    w = {n: p for n, p in supernet.named_parameters() if p.requires_grad}
    t = _leaves(theta)
    x_t, y_t = train_batch
    g = torch.autograd.grad(expected_nll(functional_call(supernet, w, (x_t, t)), y_t, likelihood),
                            [w[n] for n in names], create_graph=True)
    w_prime = {n: w[n] - xi * gi for n, gi in zip(names, g, strict=True)}
    x_v, y_v = val_batch
    nll = expected_nll(functional_call(supernet, w_prime, (x_v, t)), y_v, likelihood)
    return dict(zip(t, torch.autograd.grad(nll, list(t.values())), strict=True))


def dominant_hessian_eigenvalue(loss_fn, params: list[Tensor], iterations: int = 20,
                                generator: torch.Generator | None = None) -> float:
    """The eigenvalue of largest magnitude of ∂²loss/∂params², by power iteration on Hessian-vector
    products (double backward; the Hessian is never formed). ``loss_fn()`` returns the scalar loss.

    On the validation loss with respect to the architecture parameters this is the collapse diagnostic of
    Zela et al. (ICLR 2020): it grows as DARTS heads for a sharp region whose cells degrade when discretised.
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}.")
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((vi * vi).sum() for vi in v))
        v = [vi / norm for vi in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eigenvalue = float(sum((hi * vi).sum() for hi, vi in zip(hv, v, strict=True)))  # Rayleigh quotient
        v = [h.detach() for h in hv]
        if not math.isfinite(eigenvalue):
            raise FloatingPointError("The Hessian-vector product is not finite; check the loss for NaN or inf.")
        if float(torch.sqrt(sum((vi * vi).sum() for vi in v))) == 0:
            return 0.0  # the Hessian maps the iterate to zero: a flat direction
    return eigenvalue


def pullback(theta: dict[str, Tensor], grad_theta: dict[str, Tensor]) -> Tensor:
    """Σ_k <θ_k, g_k> with g = ∂NLL/∂θ held fixed: a scalar whose gradient with respect to the
    distribution's parameters α is g · ∂θ/∂α, the chain rule through the sample θ(α).

    Introduced in chapters/04_bayesian_structure_posterior.py, Eq. (4.2)."""
    return sum((theta[k] * grad_theta[k].detach()).sum() for k in theta)


__all__ = ["CATEGORICAL", "Categorical", "Gaussian", "architecture_terms", "dominant_hessian_eigenvalue",
           "exact_second_order_gradient",
           "expected_nll", "first_order_gradient", "l2", "loss_on", "per_datum_elbo", "per_datum_objective", "pullback",
           "second_order_gradient", "structure_kl", "weight_kl", "weight_terms"]
