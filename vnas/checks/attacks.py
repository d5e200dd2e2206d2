"""Checkers for the exercises of chapter 07: FGSM in one line, the projection onto an L2 ball, and the EOT
gradient of a stochastic model.

Each checker compares the reader's function with ``vnas.attacks`` (or the formula) on small float64 cases
built so that the usual slips change the answer (images at the edge of [0, 1], perturbations both shorter
and longer than ε, draws whose gradients differ), and names the slip it finds.
Introduced in chapters/07_robustness.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vnas.checks._common import NotAttempted, call, checker, require

__all__ = ["check_fgsm", "check_l2_projection", "check_eot_gradient"]

DTYPE = torch.float64


def _linear_model(seed: int, d: int = 12, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, k)).to(DTYPE)
    return model.eval()


def _pixels(n: int, seed: int, shape=(3, 2, 2)) -> torch.Tensor:
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    x[0] = 0.0  # an image at the edges of [0, 1]: the clip must act
    x[1] = 1.0
    return x


def _tensor(out, name: str, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        raise NotAttempted(f"{name} returned None: return the tensor the exercise asks for.")
    require(isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__}; return a torch tensor.")
    require(tuple(out.shape) == tuple(like.shape), f"{name} returned shape {tuple(out.shape)}; expected "
                                                   f"{tuple(like.shape)} (the shape of x).")
    return out.detach().to(DTYPE)


def _close(a, b) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-9, atol=1e-12))


def _input_gradient(model, x, y, reduction="sum"):
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
    return x.grad


# --- exercise (i): FGSM in one line ------------------------------------------------------------------

@checker
def check_fgsm(fn) -> str:
    """Check ``fn(model, x, y, eps) -> x_adv``: x' = clip(x + ε sign ∇_x L(x, y), 0, 1) with L the
    cross-entropy, Eq. (7.2).

    Introduced in chapters/07_robustness.py, Eq. (7.2)."""
    name = getattr(fn, "__name__", "your function")
    for seed, eps in ((0, 0.1), (1, 0.03), (2, 0.25)):
        model, x = _linear_model(seed), _pixels(6, seed)
        y = torch.arange(6) % 4
        out = _tensor(call(fn, model, x.clone(), y.clone(), eps), name, x)
        grad = _input_gradient(model, x, y)
        want = (x + eps * grad.sign()).clamp(0, 1)
        if _close(out, want):
            continue
        require(not _close(out, x + eps * grad.sign()),
                f"{name} leaves [0, 1]: clip x + ε sign ∇L to the pixel range (x.clamp(0, 1)).")
        require(not _close(out, (x - eps * grad.sign()).clamp(0, 1)),
                f"{name} steps down the loss (x − ε sign ∇L): an attack ascends it, x + ε sign ∇L.")
        require(not _close(out, (x + eps * grad).clamp(0, 1)),
                f"{name} steps along ∇L itself; FGSM takes its sign, so every pixel moves by exactly ε.")
        require(not _close(out, (x + eps * grad.sign().clamp(min=0)).clamp(0, 1)),
                f"{name} only moves pixels up; sign ∇L is −1, 0 or +1.")
        require(False, f"{name} differs from clip(x + ε sign ∇_x L, 0, 1) (ε = {eps}, largest difference "
                       f"{(out - want).abs().max().item():.3g}). Take the gradient of the cross-entropy of "
                       "model(x) with respect to x.")
    return f"{name} is FGSM: one signed gradient step of size ε, clipped to [0, 1]."


# --- exercise (ii): the projection onto an L2 ball ----------------------------------------------------

@checker
def check_l2_projection(fn) -> str:
    """Check ``fn(x_adv, x, eps) -> projected``: Π onto {x' : ||x' − x||₂ <= ε} ∩ [0, 1]^d, per example: a
    δ = x_adv − x longer than ε is rescaled to length ε (a shorter one is kept), then the result is clipped to
    [0, 1], Eq. (7.3).

    Introduced in chapters/07_robustness.py, Eq. (7.3)."""
    name = getattr(fn, "__name__", "your function")
    gen = torch.Generator().manual_seed(7)
    for eps in (0.5, 1.0):
        x = _pixels(5, 3, (3, 4, 4))
        x[2] = 0.5
        delta = torch.randn(x.shape, generator=gen, dtype=DTYPE)
        scale = torch.tensor([2.0, 0.3, 0.1, 1.5, 0.05], dtype=DTYPE).view(-1, 1, 1, 1)  # long and short δ
        delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * scale * eps
        delta[3] = 0.0  # a δ longer than ε with one pixel beyond ε, where the clip to [0, 1] does not hide it:
        x[3, 0, 1, 1] = 0.9  # the L2 and L∞ projections, and no projection, differ there (for ε = 0.5)
        delta[3, 0, 1, 1], delta[3, 1, 2, 2], delta[3, 2, 0, 3] = -1.2 * eps, -0.6 * eps, 0.5 * eps
        x_adv = x + delta
        out = _tensor(call(fn, x_adv.clone(), x.clone(), eps), name, x)
        norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        want = (x + delta * (eps / norms).clamp(max=1)).clamp(0, 1)
        if _close(out, want):
            continue
        require(not _close(out, x + delta * (eps / norms).clamp(max=1)),
                f"{name} leaves [0, 1]: clip the projected point to the pixel range.")
        require(not _close(out, x_adv.clamp(0, 1)),
                f"{name} keeps δ = x_adv − x as it is: a δ longer than ε must be rescaled to length ε, "
                "x + δ min(1, ε / ||δ||₂), before clipping to [0, 1].")
        require(not _close(out, (x + delta.clamp(-eps, eps)).clamp(0, 1)),
                f"{name} clips every pixel to [−ε, ε]: that is the L∞ projection. For L2, rescale δ as a whole.")
        require(not _close(out, (x + delta * eps / norms).clamp(0, 1)),
                f"{name} rescales every δ to length ε, also the shorter ones: a point inside the ball stays "
                "where it is (scale by min(1, ε / ||δ||)).")
        whole = delta.norm()
        require(not _close(out, (x + delta * min(1.0, eps / whole.item())).clamp(0, 1)),
                f"{name} takes one norm over the whole batch; each example has its own ball (norm per example, "
                "e.g. delta.flatten(1).norm(dim=1)).")
        require(False, f"{name} differs from the projection (ε = {eps}, largest difference "
                       f"{(out - want).abs().max().item():.3g}).")
    return f"{name} projects onto the L2 ball per example and keeps pixels in [0, 1]."


# --- exercise (iii): the EOT gradient ------------------------------------------------------------------

class _Cycling(nn.Module):
    """A stochastic model with K equally likely weight draws, visited in turn by successive forward calls, so
    that ``samples = K`` calls average over the whole posterior whatever the order."""

    stochastic = True

    def __init__(self, seed: int, k: int):
        super().__init__()
        self.members = nn.ModuleList(_linear_model(seed + i) for i in range(k))
        self.calls = 0

    def forward(self, x):
        member = self.members[self.calls % len(self.members)]
        self.calls += 1
        return member(x)


@checker
def check_eot_gradient(fn) -> str:
    """Check ``fn(model, x, y, samples) -> grad``: the EOT gradient (1/S) Σ_s ∇_x Σ_n L(f_{w_s}(x_n), y_n), one
    forward pass of the stochastic ``model`` per draw w_s, Eq. (7.4). The model here cycles through S draws.

    Introduced in chapters/07_robustness.py, Eq. (7.4)."""
    name = getattr(fn, "__name__", "your function")
    for seed, k in ((0, 3), (10, 5)):
        model, x = _Cycling(seed, k), _pixels(6, seed)
        y = torch.arange(6) % 4
        out = _tensor(call(fn, model, x.clone(), y.clone(), k), name, x)
        grads = torch.stack([_input_gradient(m, x, y) for m in model.members])
        want = grads.mean(0)
        if _close(out, want):
            continue
        require(not _close(out, grads.sum(0)),
                f"{name} sums the draws' gradients; EOT averages them (divide by the number of samples).")
        require(not any(_close(out, g) for g in grads),
                f"{name} uses one draw's gradient: call the model once per sample and average the gradients.")
        require(not _close(out, want / len(y)),
                f"{name} averages the loss over the batch; Eq. (7.4) sums it over images (reduction='sum'), so "
                "that each image's gradient does not shrink with the batch size.")
        require(not _close(out, want.sign()),
                f"{name} returns the sign of the gradient; return the gradient itself (PGD takes the sign).")
        xg = x.clone().requires_grad_(True)
        log_mean = torch.logsumexp(torch.stack([torch.log_softmax(m(xg), -1) for m in model.members]), 0)
        nn.functional.nll_loss(log_mean - torch.log(torch.tensor(float(k), dtype=DTYPE)), y,
                               reduction="sum").backward()
        require(not _close(out, xg.grad),
                f"{name} differentiates the loss of the averaged prediction, −log (1/S) Σ_s p_s(y | x); EOT "
                "averages the gradients of the per-draw losses, (1/S) Σ_s ∇ −log p_s(y | x).")
        require(False, f"{name} differs from (1/S) Σ_s ∇_x Σ_n L (largest difference "
                       f"{(out - want).abs().max().item():.3g}).")
    return f"{name} averages the input gradient over the posterior draws: the EOT gradient."
