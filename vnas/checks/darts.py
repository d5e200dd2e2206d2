"""Checkers for the exercises of chapters/02_darts.py."""

import torch

from vnas import spaces
from vnas.checks._common import call, passed, require

__all__ = ["check_mixed_op", "check_darts_genotype", "check_finite_difference_hvp"]


def check_mixed_op(fn) -> None:
    """``fn(x, ops, w)`` must return sum_o w[o] * ops[o](x) (DARTS Eq. 1)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    ops = [torch.zeros_like, lambda t: t, lambda t: 2 * t + 1, torch.tanh]
    w = torch.softmax(torch.randn(4), 0)
    expected = sum(wi * op(x) for wi, op in zip(w, ops, strict=True))
    out = call(fn, x, ops, w)
    require(isinstance(out, torch.Tensor), f"Return a tensor, not {type(out).__name__}.")
    require(out.shape == x.shape, f"The output must keep the input's shape {tuple(x.shape)}; got {tuple(out.shape)}.")
    if torch.allclose(out, sum(op(x) for op in ops) / len(ops), atol=1e-5):
        require(False, "You averaged the ops: each op's output must be weighted by its own w[o].")
    require(torch.allclose(out, expected, atol=1e-5), "The output is not sum_o w[o] * ops[o](x); check the weighting.")
    w_leaf = w.clone().requires_grad_()
    call(fn, x, ops, w_leaf).sum().backward()
    require(w_leaf.grad is not None, "The output must be differentiable with respect to w (no .detach() or .item()).")
    passed("mixed op: a weighted sum of the candidate operations, differentiable in the weights.")


def check_darts_genotype(fn) -> None:
    """``fn(weights)`` for one DARTS cell (a [14, 8] tensor) must return its 8 (op, input) pairs (DARTS rule)."""
    gen = torch.Generator().manual_seed(1)
    cases = [torch.softmax(torch.randn(14, 8, generator=gen) * 3, -1) for _ in range(5)]
    trap = torch.full((14, 8), 0.01)
    trap[:, 0] = 0.9  # 'none' dominates every edge: it must still be ignored
    trap[:, 4] = torch.linspace(0.02, 0.08, 14)
    cases.append(trap)
    for k, weights in enumerate(cases):
        out = call(fn, weights.clone())
        require(len(out) == 8, f"Return 8 (op, input) pairs, two per intermediate node; got {len(out)}.")
        want = spaces.darts.derive({"normal": weights, "reduce": weights}).normal
        for node in range(4):
            got_pairs = sorted(tuple(p) for p in out[2 * node:2 * node + 2])
            want_pairs = sorted(want[2 * node:2 * node + 2])
            if any(op == "none" for op, _ in got_pairs):
                require(False, f"Case {k}: node {node + 2} uses 'none'. Exclude 'none' both when ranking edges and "
                               "when choosing the op.")
            require([i for _, i in got_pairs] == [i for _, i in want_pairs],
                    f"Case {k}: node {node + 2} keeps inputs {[i for _, i in got_pairs]}, expected "
                    f"{[i for _, i in want_pairs]}. Rank its incoming edges by their strongest non-'none' weight.")
            require(got_pairs == want_pairs, f"Case {k}: node {node + 2} has ops {got_pairs}, expected {want_pairs}: "
                                             "take the argmax over the non-'none' ops of each kept edge.")
    passed("DARTS genotype: top-2 incoming edges per node by strongest non-'none' weight, argmax op on each.")


def check_finite_difference_hvp(fn) -> None:
    """``fn(grad_alpha, w, v)`` must return [grad_alpha(w + eps v) - grad_alpha(w - eps v)] / (2 eps),
    eps = 0.01 / ||v|| (DARTS Eq. 8)."""
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(3, generator=gen, dtype=torch.float64)
    # L(w, alpha) = alpha^T A w + (alpha . c) ||w||^2 / 2  ->  grad_alpha L = A w + c ||w||^2 / 2
    def grad_alpha(w):
        return A @ w + 0.5 * c * (w * w).sum()

    w = torch.randn(5, generator=gen, dtype=torch.float64)
    for scale in (1.0, 300.0):
        v = scale * torch.randn(5, generator=gen, dtype=torch.float64)
        exact = A @ v + c * (w @ v)  # (d/dw grad_alpha L) v
        out = call(fn, grad_alpha, w, v)
        require(isinstance(out, torch.Tensor) and out.shape == exact.shape,
                f"Return a tensor of shape {tuple(exact.shape)}.")
        if torch.allclose(out, -exact, rtol=1e-6):
            require(False, "The sign is flipped: it is g(w + eps v) - g(w - eps v), over 2 eps.")
        if torch.allclose(out, 2 * exact, rtol=1e-6) or torch.allclose(out, exact / 2, rtol=1e-6):
            require(False, "Off by a factor of 2: a central difference divides by 2 eps.")
        require(torch.allclose(out, exact, rtol=1e-8, atol=1e-8),
                f"Not the central difference (error {float((out - exact).norm() / exact.norm()):.1e}). A forward "
                "difference, or an eps that does not shrink with ||v||, gives this (v here has norm "
                f"{float(v.norm()):.0f}).")
    passed("finite-difference Hessian-vector product: central, with eps = 0.01 / ||v||.")
