"""Search supernets: every edge carries every op, mixed by weights that come from outside.

DARTS Eq. (1): an edge (i, j) computes  o_bar(x_i) = sum_o w_o * o(x_i)  and node j is the sum of its
incoming edges. The mixing weights w (a softmax of alpha, a Gumbel or Dirichlet sample, a one-hot
genotype) are an *argument* of ``forward``, so the supernet holds only network weights:
``supernet.parameters()`` is exactly what the weight optimiser trains.

Search protocol (DARTS): BN without affine parameters, pooling followed by BN(affine=False). NB201 keeps
its own protocol: no BN after pooling. ``partial_channels=K`` (PC-DARTS, Xu et al., ICLR 2020) sends only
C/K channels through each mixed op; the rest bypass it, then the channels are shuffled.

Same maths as the sum above, computed with less work:
- an op whose weight is exactly 0.0 is not run (one-hot and straight-through weights cost one op per
  edge), and ``none`` is never run: it adds 0;
- relu(x_i) is computed once per node i for all the ops on all its outgoing edges that start with a ReLU;
- an op that ends in BN(affine=False) is scaled by its weight inside that BN (w * BN(z) is BN(z) with
  scale w): the product costs no extra pass over memory, forward or backward.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas.ops import OPS, FactorizedReduce, PreReLU, ReLUConvBN, ResNetBasicBlock
from vnas.spaces import darts as darts_space
from vnas.spaces import nb201 as nb201_space


def scaled_bn(bn: nn.BatchNorm2d, z: Tensor, scale: Tensor) -> Tensor:
    """``scale * bn(z)`` for a BN without affine parameters, computed as one BN whose scale is ``scale``.

    Same running statistics as ``bn(z)``. Introduced in chapters/02_darts.py, Eq. (1).
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


def _split_bn(op: nn.Module) -> tuple[nn.Module, nn.BatchNorm2d | None]:
    """(body, bn) if ``op`` ends in a BN without affine parameters, else (op, None)."""
    if isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d) and not op[-1].affine:
        layers = list(op)[:-1]
        return (PreReLU(*layers) if isinstance(op, PreReLU) else nn.Sequential(*layers)), op[-1]
    return op, None


class MixedOp(nn.Module):
    """One edge of the supernet: ``forward(x, w) = sum_o w_o * o(x)`` over the ops of ``primitives``.

    ``w`` is a vector on the simplex, one entry per op. Ops whose weight is exactly 0.0 and ``none`` are
    not run. With ``partial_channels=K`` only the first C/K channels go through the ops (PC-DARTS).
    Introduced in chapters/02_darts.py, Eq. (1).
    """

    def __init__(self, C: int, stride: int, primitives, pool_bn: bool = True, partial_channels: int = 1):
        super().__init__()
        if C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must divide the {C} channels of the edge.")
        self.primitives, self.stride, self.k = tuple(primitives), stride, partial_channels
        self.C_op = C // partial_channels
        ops = []
        for name in self.primitives:
            op = OPS[name](self.C_op, stride, False)
            if pool_bn and "pool" in name:  # DARTS: pooling has no scale of its own; BN gives it one
                op = nn.Sequential(op, nn.BatchNorm2d(self.C_op, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        self.runnable = tuple(name != "none" for name in self.primitives)
        self.pre_relu = tuple(hasattr(op, "from_relu") for op in ops)
        # (body, bn): an op ending in BN(affine=False) takes its weight as that BN's scale (a plain list:
        # the same modules as self.ops, not registered twice)
        self._parts = [_split_bn(op) for op in ops]
        if partial_channels > 1 and stride == 2:
            self.bypass = nn.MaxPool2d(2, 2)

    def active(self, w: Tensor) -> list[bool]:
        """Which ops run for weights ``w``: not ``none``, weight not exactly 0.

        Introduced in chapters/02_darts.py."""
        return [r and nz for r, nz in zip(self.runnable, (w != 0).tolist(), strict=True)]

    def needs_relu(self, active) -> bool:
        """Whether any running op starts with a ReLU. Introduced in chapters/02_darts.py."""
        return any(a and p for a, p in zip(active, self.pre_relu, strict=True))

    def terms(self, x: Tensor, w: Tensor, active, x_relu: Tensor | None = None) -> list[Tensor]:
        """``[w_o * o(x) for the running ops o]``; ``x_relu = relu(x)`` if it is already computed.

        Introduced in chapters/02_darts.py, Eq. (1).
        """
        if x_relu is None and self.needs_relu(active):
            x_relu = F.relu(x)
        out = []
        for o, run in enumerate(active):
            if not run:
                continue
            body, bn = self._parts[o]
            z = body.from_relu(x_relu) if self.pre_relu[o] else body(x)
            out.append(z * w[o] if bn is None else scaled_bn(bn, z, w[o]))
        return out

    def forward(self, x: Tensor, w: Tensor, active=None) -> Tensor:
        if w.shape != (len(self.ops),):
            raise ValueError(f"MixedOp weights have shape {tuple(w.shape)}; expected ({len(self.ops)},): "
                             f"one per op of {self.primitives}.")
        active = self.active(w) if active is None else active
        if self.k > 1:
            x, rest = x[:, :self.C_op], x[:, self.C_op:]
        terms = self.terms(x, w, active)
        out = add_all(terms) if terms else _zeros(x, self.C_op, self.stride)
        if self.k > 1:
            rest = self.bypass(rest) if self.stride == 2 else rest
            out = channel_shuffle(torch.cat([out, rest], dim=1), self.k)
        return out


def run_dag(states: list[Tensor], edges, mixed: nn.ModuleList, w: Tensor, active) -> list[Tensor]:
    """Append a cell's intermediate nodes to ``states``: node j = sum over its edges (i, j) of
    ``mixed[e](states[i], w[e])``, with ``active[e]`` saying which ops of edge e run.

    Introduced in chapters/02_darts.py.
    """
    relu = {}  # relu(states[i]), computed at most once per node i
    first = len(states)
    for node in range(first, first + len({dst for _, dst in edges})):
        terms = []
        for e, (src, dst) in enumerate(edges):
            if dst != node:
                continue
            op = mixed[e]
            if op.k > 1:  # partial channels: every edge adds its bypassed channels, so it mixes on its own
                terms.append(op(states[src], w[e], active[e]))
                continue
            if src not in relu and op.needs_relu(active[e]):
                relu[src] = F.relu(states[src])
            terms += op.terms(states[src], w[e], active[e], relu.get(src))
        if not terms:  # every incoming op is `none` or weighted 0
            op, src = next((mixed[e], i) for e, (i, j) in enumerate(edges) if j == node)
            terms = [_zeros(states[src], op.C_op * op.k, op.stride)]
        states.append(add_all(terms))
    return states


def check_weights(weights, shapes: dict[str, tuple[int, int]], primitives) -> dict[str, list[list[bool]]]:
    """Check that ``weights`` has one tensor of the right shape per cell type; return which ops run
    (not ``none``, weight not exactly 0). Introduced in chapters/02_darts.py.
    """
    expected = ", ".join(f"{k!r}: Tensor{list(s)}" for k, s in shapes.items())
    if not isinstance(weights, Mapping) or set(weights) != set(shapes):
        got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
        raise ValueError(f"The supernet needs mixing weights {{{expected}}} (one row per edge, one column "
                         f"per op); got {got}.")
    runnable = [name != "none" for name in primitives]
    active = {}
    for key, shape in shapes.items():
        w = weights[key]
        if not isinstance(w, Tensor) or tuple(w.shape) != shape:
            got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"weights[{key!r}] has shape {got}; expected {shape}: one row per edge, "
                             f"one column per op ({', '.join(primitives)}).")
        rows = (w != 0).tolist()  # one device-to-host copy per cell type and forward
        active[key] = [[r and nz for r, nz in zip(runnable, row, strict=True)] for row in rows]
    return active


class DartsSearchCell(nn.Module):
    """A DARTS search cell: preprocess the two inputs, 4 nodes over 14 mixed edges, concatenate the last
    ``multiplier`` nodes. Introduced in chapters/02_darts.py."""

    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, steps=4, multiplier=4, partial_channels=1,
                 primitives=darts_space.PRIMITIVES):
        super().__init__()
        self.reduction, self.multiplier = reduction, multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_pp, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = tuple((src, dst) for dst in range(2, 2 + steps) for src in range(dst))
        self.mixed = nn.ModuleList(MixedOp(C, 2 if reduction and src < 2 else 1, primitives,
                                           partial_channels=partial_channels) for src, _ in self.edges)

    def forward(self, s0, s1, w, active):
        states = run_dag([self.preprocess0(s0), self.preprocess1(s1)], self.edges, self.mixed, w, active)
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSupernet(nn.Module):
    """The DARTS search network: a 3C-channel stem, ``layers`` cells (reduction cells, which double the
    channels and halve the resolution, at layers//3 and 2*layers//3), global pooling, a linear classifier.

    ``forward(x, {"normal": Tensor[14, 8], "reduce": Tensor[14, 8]})``; all cells of a type share their
    weights. For speed on CPU: ``supernet.to(memory_format=torch.channels_last)``.
    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C=16, layers=8, num_classes=10, steps=4, multiplier=4, stem_multiplier=3,
                 partial_channels=1):
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers={layers}: a DARTS supernet needs 3 cells or more (2 reduce, 1 normal).")
        self.steps, self.primitives = steps, darts_space.PRIMITIVES
        num_edges = sum(2 + i for i in range(steps))
        self.shapes = {k: (num_edges, len(self.primitives)) for k in darts_space.CELL_TYPES}
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = 2 * C_curr if reduction else C_curr
            self.cells.append(DartsSearchCell(C_pp, C_p, C_curr, reduction, reduction_prev, steps, multiplier,
                                              partial_channels))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: Tensor, weights: dict[str, Tensor]) -> Tensor:
        active = check_weights(weights, self.shapes, self.primitives)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, weights[kind], active[kind])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


class NB201SearchCell(nn.Module):
    """An NB201 search cell: nodes 1, 2, 3 over the 6 mixed edges; its output is node 3.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C, partial_channels=1, primitives=nb201_space.PRIMITIVES):
        super().__init__()
        self.edges = tuple(nb201_space.EDGES)
        self.mixed = nn.ModuleList(MixedOp(C, 1, primitives, pool_bn=False, partial_channels=partial_channels)
                                   for _ in self.edges)

    def forward(self, x, w, active):
        return run_dag([x], self.edges, self.mixed, w, active)[-1]


class NB201Supernet(nn.Module):
    """The NAS-Bench-201 search network: stem conv, 3 stages of N cells (C, 2C, 4C channels) joined by
    residual reduction blocks, then BN-ReLU, global pooling and a linear classifier.

    ``forward(x, {"cell": Tensor[6, 5]})``. Introduced in chapters/02_darts.py.
    """

    def __init__(self, C=16, N=5, num_classes=10, partial_channels=1):
        super().__init__()
        self.primitives = nb201_space.PRIMITIVES
        self.shapes = {"cell": (len(nb201_space.EDGES), len(self.primitives))}
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers, C_prev = [], C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                layers.append(ResNetBasicBlock(C_prev, C_curr, 2))
            layers += [NB201SearchCell(C_curr, partial_channels) for _ in range(N)]
            C_prev = C_curr
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU())
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: Tensor, weights: dict[str, Tensor]) -> Tensor:
        active = check_weights(weights, self.shapes, self.primitives)["cell"]
        w = weights["cell"]
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, w, active) if isinstance(cell, NB201SearchCell) else cell(x)
        return self.classifier(F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1))


SUPERNETS = {"darts": DartsSupernet, "nb201": NB201Supernet}


def build_supernet(space: str, **kwargs) -> nn.Module:
    """The search supernet of ``space`` ('darts' or 'nb201'): ``build_supernet("darts", C=16, layers=8)``.

    Introduced in chapters/02_darts.py.
    """
    key = str(space).strip().lower()
    if key not in SUPERNETS:
        raise ValueError(f"Unknown search space {space!r}; valid spaces: {', '.join(SUPERNETS)}.")
    return SUPERNETS[key](**kwargs)


__all__ = ["DartsSearchCell", "DartsSupernet", "MixedOp", "NB201SearchCell", "NB201Supernet",
           "build_supernet",
           "add_all", "channel_shuffle", "check_weights", "run_dag", "scaled_bn"]
