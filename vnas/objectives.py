"""The bilevel objective of DARTS and its architecture step, first and second order.

    min_alpha  L_val(w*(alpha), alpha)   s.t.  w*(alpha) = argmin_w L_train(w, alpha)        (DARTS Eq. 3-4)

The architecture enters the supernet only through the mixing weights m = m(alpha) (a softmax, or a
Gumbel / Dirichlet sample). So every gradient is first taken with respect to m and then pushed back to
alpha through m: the same code serves DARTS, SNAS, GDAS, DrNAS and the variational method.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def loss_on(supernet: nn.Module, mix: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
    """Cross-entropy of the supernet with mixing weights ``mix`` on one batch. Introduced in chapters/02_darts.py."""
    x, y = batch
    return F.cross_entropy(supernet(x, mix), y)


def _leaves(mix: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().requires_grad_() for k, v in mix.items()}


def _grad(loss: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """d loss / d inputs, with zeros for an input the loss does not use: a hard sample can switch a whole
    cell off (e.g. 'none' on every edge into its output node), and then its mixing weights get no gradient."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def first_order_gradient(supernet, mix, val_batch) -> tuple[dict[str, Tensor], Tensor]:
    """dL_val(w, m)/dm with the weights held fixed (DARTS first order, xi = 0).

    Introduced in chapters/02_darts.py, Eq. (2.5).
    """
    m = _leaves(mix)
    loss = loss_on(supernet, m, val_batch)
    return dict(zip(m, _grad(loss, list(m.values())), strict=True)), loss.detach()


def second_order_gradient(supernet, mix, train_batch, val_batch, xi: float,
                          fd_scale: float = 0.01) -> tuple[dict[str, Tensor], Tensor]:
    """dL_val(w', m)/dm - xi * d2L_train(w, m)/dm dw . dL_val(w', m)/dw'  with  w' = w - xi dL_train(w, m)/dw.

    The Hessian-vector product is a central difference (DARTS Eq. 7-8):
        [dL_train(w+, m)/dm - dL_train(w-, m)/dm] / (2 eps),  w+- = w +- eps v,  eps = fd_scale / ||v||
    with DARTS' fd_scale = 0.01. In a ReLU network dL/dm jumps wherever a unit crosses zero, so a step of
    that size measures an average slope across kinks rather than the derivative at w; a tiny fd_scale (in
    float64) recovers the derivative itself. The supernet's weights are restored before returning.
    Introduced in chapters/02_darts.py, Eq. (2.6)-(2.8).
    """
    params = [p for p in supernet.parameters() if p.requires_grad]
    w = [p.detach().clone() for p in params]
    m = _leaves(mix)

    def set_weights(values):
        with torch.no_grad():
            for p, v in zip(params, values, strict=True):
                p.copy_(v)

    try:
        g_train = _grad(loss_on(supernet, m, train_batch), params)
        set_weights([wi - xi * gi for wi, gi in zip(w, g_train, strict=True)])  # the virtual step w'
        loss = loss_on(supernet, m, val_batch)
        grads = _grad(loss, list(m.values()) + params)
        dm, v = grads[:len(m)], grads[len(m):]
        eps = fd_scale / torch.sqrt(sum((vi * vi).sum() for vi in v)).clamp_min(1e-12)
        hvp_parts = []
        for sign in (1.0, -1.0):
            set_weights([wi + sign * eps * vi for wi, vi in zip(w, v, strict=True)])
            hvp_parts.append(_grad(loss_on(supernet, m, train_batch), list(m.values())))
        hvp = [(gp - gn) / (2 * eps) for gp, gn in zip(*hvp_parts, strict=True)]
    finally:
        set_weights(w)
    return {k: d - xi * h for k, d, h in zip(m, dm, hvp, strict=True)}, loss.detach()


def exact_second_order_gradient(supernet, mix, train_batch, val_batch, xi: float) -> dict[str, Tensor]:
    """The same hypergradient by double backward (no finite differences): for tests and for chapter 02.

    Introduced in chapters/02_darts.py.
    """
    from torch.func import functional_call

    names = [n for n, p in supernet.named_parameters() if p.requires_grad]
    w = {n: p for n, p in supernet.named_parameters() if p.requires_grad}
    m = _leaves(mix)
    x_t, y_t = train_batch
    g = torch.autograd.grad(F.cross_entropy(functional_call(supernet, w, (x_t, m)), y_t), [w[n] for n in names],
                            create_graph=True)
    w_prime = {n: w[n] - xi * gi for n, gi in zip(names, g, strict=True)}
    x_v, y_v = val_batch
    loss = F.cross_entropy(functional_call(supernet, w_prime, (x_v, m)), y_v)
    return dict(zip(m, torch.autograd.grad(loss, list(m.values())), strict=True))


class Architect:
    """The architecture step: Adam on the distribution's parameters, with the DARTS defaults
    (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3: for DrNAS this weight decay is its L2 regulariser).

    The loss is L_val + regulariser(num_data): for the variational method the regulariser is
    KL(q(alpha) || p(alpha)) / N, so the step maximises the ELBO per data point.
    Introduced in chapters/02_darts.py.
    """

    def __init__(self, supernet: nn.Module, posterior: nn.Module, num_data: int, order: str = "first",
                 lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3):
        if order not in ("first", "second"):
            raise ValueError(f"order={order!r}: use 'first' or 'second'.")
        self.supernet, self.posterior, self.num_data, self.order = supernet, posterior, num_data, order
        self.optimizer = torch.optim.Adam(posterior.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    def step(self, train_batch, val_batch, xi: float) -> Tensor:
        """One architecture update; returns the validation loss it saw."""
        self.optimizer.zero_grad(set_to_none=True)
        mix = self.posterior.sample()  # one sample per edge, shared by the whole step
        if self.order == "first":
            grads, loss = first_order_gradient(self.supernet, mix, val_batch)
        else:
            grads, loss = second_order_gradient(self.supernet, mix, train_batch, val_batch, xi)
        total = sum((mix[k] * grads[k]).sum() for k in mix)  # pushes dL/dm back through m(alpha)
        total = total + self.posterior.regulariser(self.num_data)
        total.backward()
        self.supernet.zero_grad(set_to_none=True)
        self.optimizer.step()
        return loss
