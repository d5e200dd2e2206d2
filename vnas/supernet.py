"""Search supernets: every edge carries every op, mixed by weights θ that come from outside.

An edge (i, j) computes the mixed op  ō(x_i) = Σ_o θ_o · o(x_i)  (DARTS Eq. 2; chapter 02, Eq. (2.2)),
and node j is the sum of its incoming edges, Eq. (2.1). The mixing weights θ (a softmax of α, a Gumbel or
Dirichlet sample, a one-hot genotype) are an *argument* of ``forward``, so the supernet holds only
network weights: ``supernet.parameters()`` is exactly what the weight optimiser trains.

Search protocol (DARTS): BN without affine parameters, pooling followed by BN(affine=False). NB201 keeps
its own protocol: no BN after pooling. ``partial_channels=K`` (PC-DARTS, Xu et al., ICLR 2020) sends only
C/K channels through each mixed op; the rest bypass it, then the channels are shuffled.

Two paths compute the same function, selected as nanoGPT selects its attention: ``fused`` (the
default) and, under it, the plain equation (``supernet.fused = False``), which the chapters teach from
and the tests compare against. The fused path does less work:
- ``none`` is never run (it adds 0), nor an op whose weight is exactly 0.0 when the caller passes
  ``active`` (``supernet.active(θ)``: one-hot and straight-through weights then cost one op per edge);
  a skipped op also gets no gradient with respect to its (zero) weight;
- relu(x_i) is computed once per node i for all the ops on all its outgoing edges that start with a ReLU;
- an op that ends in BN(affine=False) is scaled by its weight inside that BN (θ · BN(z) is BN(z) with
  scale θ): the product costs no extra pass over memory, forward or backward.
Neither path reads a tensor back to the host during a forward pass.

The cells and the network skeletons of each space live with the space (``vnas.spaces.darts_net``,
``vnas.spaces.nb201_net``); build a supernet with ``vnas.spaces.get_space(name).build_supernet(...)``.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas.ops import OPS


def scaled_bn(bn: nn.BatchNorm2d, z: Tensor, scale: Tensor) -> Tensor:
    """``scale * bn(z)`` for a BN without affine parameters, computed as one BN whose scale is ``scale``.

    Same running statistics as ``bn(z)``. Introduced in chapters/02_darts.py, Eq. (2.2).
    """
    batch_stats = bn.training or bn.running_mean is None
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    dtype = bn.running_mean.dtype if bn.running_mean is not None else z.dtype
    # a real vector, not expand(): torch 2.14's CPU BN backward misreads a stride-0 weight in channels_last
    weight = scale.to(dtype).expand(z.shape[1]).contiguous()
    return F.batch_norm(z, bn.running_mean, bn.running_var, weight, None, batch_stats,
                        momentum if bn.training else 0.0, bn.eps)


def add_all(terms: list[Tensor]) -> Tensor:
    """``terms[0] + terms[1] + ...``, accumulated in place into ``terms[0]`` (a fresh tensor that no backward
    needs): no new tensor per addition. Introduced in chapters/02_darts.py."""
    out = terms[0]
    for t in terms[1:]:
        out += t
    return out


def _zeros(x: Tensor, C: int, stride: int) -> Tensor:
    n, _, h, w = x.shape
    return x.new_zeros(n, C, (h + stride - 1) // stride, (w + stride - 1) // stride)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal blocks (ShuffleNet), so that PC-DARTS sends other
    channels through the next edge. Introduced in chapters/02_darts.py."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)  # keeps x's memory layout (channels_last stays channels_last)
    out.view(n, c // groups, groups, h, w).copy_(x.view(n, groups, c // groups, h, w).transpose(1, 2))
    return out


def _ends_in_bn(op: nn.Module) -> bool:
    """Whether ``op`` is a Sequential that ends in a BN without affine parameters."""
    return isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d) and not op[-1].affine


class MixedOp(nn.Module):
    """One edge of the supernet: ``forward(x, theta) = Σ_o θ_o · o(x)`` over the ops of ``primitives``.

    ``theta`` is a vector on the simplex, one entry per op. With ``partial_channels=K`` only the first
    C/K channels go through the ops (PC-DARTS). ``fused`` selects the fast path (see the module
    docstring); with ``fused = False`` forward is DARTS' one-line mixed op.
    Introduced in chapters/02_darts.py, Eq. (2.2).
    """

    def __init__(self, C: int, stride: int, primitives, pool_bn: bool = True, partial_channels: int = 1):
        super().__init__()
        if C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must divide the {C} channels of the edge.")
        self.primitives, self.stride, self.k = tuple(primitives), stride, partial_channels
        self.C_op = C // partial_channels
        self.fused = True
        ops = []
        for name in self.primitives:
            op = OPS[name](self.C_op, stride, False)
            if pool_bn and "pool" in name:  # DARTS: pooling has no scale of its own; BN gives it one
                op = nn.Sequential(op, nn.BatchNorm2d(self.C_op, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        self.runnable = tuple(name != "none" for name in self.primitives)
        self.pre_relu = tuple(hasattr(op, "from_relu") for op in ops)
        # an op ending in BN(affine=False) takes its weight as that BN's scale; its layers are read from
        # self.ops at every call, so a layer swapped in later (vnas.bayes.make_bayesian) is the one that runs
        self.ends_in_bn = tuple(_ends_in_bn(op) for op in ops)
        if partial_channels > 1 and stride == 2:
            self.bypass = nn.MaxPool2d(2, 2)

    def needs_relu(self, active) -> bool:
        """Whether any running op starts with a ReLU. Introduced in chapters/02_darts.py."""
        return any(a and p for a, p in zip(active, self.pre_relu, strict=True))

    def terms(self, x: Tensor, theta: Tensor, active, x_relu: Tensor | None = None) -> list[Tensor]:
        """``[θ_o · o(x) for the running ops o]`` (the fused path); ``x_relu = relu(x)`` if it is already
        computed. Introduced in chapters/02_darts.py, Eq. (2.2).
        """
        if x_relu is None and self.needs_relu(active):
            x_relu = F.relu(x)
        out = []
        for o, run in enumerate(active):
            if not run:
                continue
            op = self.ops[o]
            if not self.ends_in_bn[o]:
                out.append((op.from_relu(x_relu) if self.pre_relu[o] else op(x)) * theta[o])
                continue
            *body, bn = op
            z = x_relu if self.pre_relu[o] else x
            for layer in body:
                z = layer(z)
            out.append(scaled_bn(bn, z, theta[o]))
        return out

    def forward(self, x: Tensor, theta: Tensor, active=None) -> Tensor:
        if theta.shape != (len(self.ops),):
            raise ValueError(f"MixedOp weights have shape {tuple(theta.shape)}; expected ({len(self.ops)},): "
                             f"one per op of {self.primitives}.")
        if self.k > 1:
            x, rest = x[:, :self.C_op], x[:, self.C_op:]
        if self.fused:
            terms = self.terms(x, theta, self.runnable if active is None else active)
            out = add_all(terms) if terms else _zeros(x, self.C_op, self.stride)
        else:  # the equation itself (DARTS' MixedOp.forward)
            out = sum(t * op(x) for t, op in zip(theta, self.ops, strict=True))
        if self.k > 1:
            rest = self.bypass(rest) if self.stride == 2 else rest
            out = channel_shuffle(torch.cat([out, rest], dim=1), self.k)
        return out


def run_dag(states: list[Tensor], edges, mixed: nn.ModuleList, theta: Tensor, active=None) -> list[Tensor]:
    """Append a cell's intermediate nodes to ``states``: node j = Σ over its edges e = (i, j) of
    ``mixed[e](states[i], theta[e])`` (Eq. (2.1)); ``active[e]`` says which ops of edge e run (None:
    every op but ``none``).

    Introduced in chapters/02_darts.py, Eq. (2.1).
    """
    relu = {}  # relu(states[i]), computed at most once per node i
    first = len(states)
    for node in range(first, first + len({dst for _, dst in edges})):
        incoming = [(e, src) for e, (src, dst) in enumerate(edges) if dst == node]
        if not mixed[0].fused:  # the equation itself: x_j = Σ_i ō_(i,j)(x_i)
            states.append(sum(mixed[e](states[src], theta[e]) for e, src in incoming))
            continue
        terms = []
        for e, src in incoming:
            op = mixed[e]
            run = op.runnable if active is None else active[e]
            if op.k > 1:  # partial channels: every edge adds its bypassed channels, so it mixes on its own
                terms.append(op(states[src], theta[e], run))
                continue
            if src not in relu and op.needs_relu(run):
                relu[src] = F.relu(states[src])
            terms += op.terms(states[src], theta[e], run, relu.get(src))
        if not terms:  # every incoming op is `none` or weighted 0
            op, src = mixed[incoming[0][0]], incoming[0][1]
            terms = [_zeros(states[src], op.C_op * op.k, op.stride)]
        states.append(add_all(terms))
    return states


def check_theta_shapes(theta, shapes: dict[str, tuple[int, int]], primitives) -> None:
    """Check that ``theta`` has one tensor of the right shape per cell type (no host read).

    Introduced in chapters/02_darts.py."""
    expected = ", ".join(f"{k!r}: Tensor{list(s)}" for k, s in shapes.items())
    if not isinstance(theta, Mapping) or set(theta) != set(shapes):
        got = sorted(theta) if isinstance(theta, Mapping) else type(theta).__name__
        raise ValueError(f"The supernet needs mixing weights {{{expected}}} (one row per edge, one column "
                         f"per op); got {got}.")
    for key, shape in shapes.items():
        t = theta[key]
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"theta[{key!r}] has shape {got}; expected {shape}: one row per edge, "
                             f"one column per op ({', '.join(primitives)}).")


def active_ops(theta: Mapping[str, Tensor], primitives) -> dict[str, list[list[bool]]]:
    """Which ops run for mixing weights θ, per cell type and edge: not ``none``, weight not exactly 0.

    One read back to the host per cell type: call it once per sample, not per forward pass.
    Introduced in chapters/02_darts.py."""
    runnable = [name != "none" for name in primitives]
    return {key: [[r and nz for r, nz in zip(runnable, row, strict=True)] for row in (t != 0).tolist()]
            for key, t in theta.items()}


class Supernet:
    """What every search supernet shares (a mixin for the spaces' supernets, which set ``primitives``
    and ``shapes``): which ops a sample runs, the fused/plain switch, and the network at a fixed θ.

    Introduced in chapters/02_darts.py.
    """

    primitives: tuple[str, ...]
    shapes: dict[str, tuple[int, int]]

    def active(self, theta: Mapping[str, Tensor]) -> dict[str, list[list[bool]]]:
        """``active_ops(theta)``: pass it to ``forward`` to skip the ops whose weight is exactly 0."""
        check_theta_shapes(theta, self.shapes, self.primitives)
        return active_ops(theta, self.primitives)

    @property
    def fused(self) -> bool:
        """True: the fast path; False: the plain equation Σ_o θ_o · o(x) on every edge."""
        return all(m.fused for m in self.modules() if isinstance(m, MixedOp))

    @fused.setter
    def fused(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.fused = bool(value)

    def edge_ops(self):
        """Every op of every search cell, as (cell type, edge e, op index o, module): which mixing weight
        θ[cell type][e, o] scales each op's output (a structure-dependent weight prior reads it)."""
        for cell in self.modules():
            if isinstance(getattr(cell, "mixed", None), nn.ModuleList):
                for e, mixed in enumerate(cell.mixed):
                    for o, op in enumerate(mixed.ops):
                        yield cell.kind, e, o, op

    def at(self, theta: Mapping[str, Tensor], active=None) -> FixedArchitecture:
        """This supernet with its mixing weights fixed to ``theta``: a model ``x -> logits``."""
        return FixedArchitecture(self, theta, active)


class FixedArchitecture(nn.Module):
    """A supernet at fixed mixing weights θ, as a plain model ``x -> logits`` (for the evaluator, and for
    anything else that takes a model). It shares the supernet's weights and train/eval mode.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, supernet: nn.Module, theta: Mapping[str, Tensor], active=None):
        super().__init__()
        check_theta_shapes(theta, supernet.shapes, supernet.primitives)
        self.supernet = supernet
        self.theta = {k: v.detach() for k, v in theta.items()}
        self.active = active

    def forward(self, x: Tensor) -> Tensor:
        return self.supernet(x, self.theta, self.active)


__all__ = ["FixedArchitecture", "MixedOp", "Supernet", "active_ops", "add_all", "channel_shuffle",
           "check_theta_shapes", "run_dag", "scaled_bn"]
