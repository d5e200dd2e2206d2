"""Checkers for the exercises of chapters/02_darts.py."""

import torch

from vnas import spaces
from vnas.checks._common import call, checker, require

__all__ = ["check_mixed_op", "check_darts_genotype", "check_finite_difference_hvp"]


@checker
def check_mixed_op(fn) -> str:
    """``fn(x, ops, theta)`` must return sum_o theta[o] * ops[o](x) (chapter 02, Eq. (2.2))."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    ops = [torch.zeros_like, lambda t: t, lambda t: 2 * t + 1, torch.tanh]
    theta = torch.softmax(torch.randn(4, generator=gen), 0)
    expected = sum(t * op(x) for t, op in zip(theta, ops, strict=True))
    out = call(fn, x, ops, theta)
    require(isinstance(out, torch.Tensor), f"Return a tensor, not {type(out).__name__}.")
    require(out.shape == x.shape, f"The output must keep the input's shape {tuple(x.shape)}; got {tuple(out.shape)}.")
    if torch.allclose(out, sum(op(x) for op in ops) / len(ops), atol=1e-5):
        require(False, "You averaged the ops: each op's output must be weighted by its own theta[o].")
    best = int(theta.argmax())
    if torch.allclose(out, ops[best](x), atol=1e-5) or torch.allclose(out, theta[best] * ops[best](x), atol=1e-5):
        require(False, "You kept only the strongest op: the relaxation mixes every op, each weighted by theta[o].")
    if torch.allclose(out, sum(t * op(x) for t, op in zip(torch.softmax(theta, 0), ops, strict=True)), atol=1e-5):
        require(False, "theta already holds the mixing weights softmax(alpha): do not apply a softmax again.")
    if torch.allclose(out, sum(op(t * x) for t, op in zip(theta, ops, strict=True)), atol=1e-5):
        require(False, "You weighted the input of each op; Eq. (2.2) weights its output, theta[o] * ops[o](x).")
    require(torch.allclose(out, expected, atol=1e-5),
            "The output is not sum_o theta[o] * ops[o](x); check the weighting.")
    leaf = theta.clone().requires_grad_()
    out = call(fn, x, ops, leaf)
    require(out.requires_grad, "The output must be differentiable with respect to theta (no .detach() or .item()).")
    out.sum().backward()
    require(leaf.grad is not None, "The output must be differentiable with respect to theta (no .detach() or .item()).")
    return "mixed op: a weighted sum of the candidate operations, differentiable in the mixing weights."


@checker
def check_darts_genotype(fn) -> str:
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
        require(all(len(p) == 2 and p[0] in spaces.darts.PRIMITIVES and not isinstance(p[1], str) for p in out),
                f"Each pair is (op name, input node), e.g. ('sep_conv_3x3', 0); got {list(out[:2])} ...")
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
    return "DARTS genotype: top-2 incoming edges per node by strongest non-'none' weight, argmax op on each."


@checker
def check_finite_difference_hvp(fn) -> str:
    """``fn(grad_alpha, w, v)`` must return [grad_alpha(w + eps v) - grad_alpha(w - eps v)] / (2 eps),
    eps = 0.01 / ||v|| (chapter 02, Eq. (2.7); DARTS Eq. 8).

    The test function is not quadratic in w (its gradient in alpha has a third derivative in w), so the
    central difference depends on the step: a forward difference, or a step that does not shrink with
    ||v||, gives a measurably different number."""
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 5, generator=gen, dtype=torch.float64)

    def grad_alpha(w):  # grad_alpha of L(w, alpha) = sum_k alpha_k (A_k . tanh(w) + sin(b_k . w))
        return A @ torch.tanh(w) + torch.sin(b @ w)

    def central(w, v, eps):
        return (grad_alpha(w + eps * v) - grad_alpha(w - eps * v)) / (2 * eps)

    w = 0.5 * torch.randn(5, generator=gen, dtype=torch.float64)
    for scale in (30.0, 0.02):
        v = torch.randn(5, generator=gen, dtype=torch.float64)
        v = scale * v / v.norm()
        eps = 0.01 / v.norm()
        want = central(w, v, eps)
        out = call(fn, grad_alpha, w.clone(), v.clone())
        require(isinstance(out, torch.Tensor) and out.shape == want.shape,
                f"Return a tensor of shape {tuple(want.shape)}.")
        close = lambda a, ref: bool(torch.allclose(a, ref, rtol=1e-9, atol=1e-12))  # noqa: E731
        if close(out, want):
            continue
        slips = [(-want, "The sign is flipped: it is g(w + eps v) - g(w - eps v), over 2 eps."),
                 (2 * want, "Off by a factor of 2: a central difference divides by 2 eps."),
                 (want / 2, "Off by a factor of 1/2: a central difference divides by 2 eps, not 4 eps."),
                 ((grad_alpha(w + eps * v) - grad_alpha(w)) / eps,
                  "That is a forward difference, [g(w + eps v) - g(w)] / eps: use the central one, whose error "
                  "is of order eps^2 instead of eps."),
                 (central(w, v, 0.01), "The step must shrink with ||v||: eps = 0.01 / ||v||, not 0.01."),
                 (central(w, v, 0.01 * v.norm()), "The step is eps = 0.01 / ||v||, not 0.01 * ||v||.")]
        for wrong, message in slips:
            if close(out, wrong):
                require(False, message)
        err = float((out - want).norm() / want.norm())
        require(False, f"Not the central difference with eps = 0.01 / ||v|| (relative error {err:.1e} for a v of "
                       f"norm {float(v.norm()):.2g}; this function is not quadratic, so the step size matters).")
    return "finite-difference Hessian-vector product: central, with eps = 0.01 / ||v||."
