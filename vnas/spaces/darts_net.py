"""The networks of the DARTS space: one skeleton, two kinds of cell.

The skeleton (DARTS, Liu et al., ICLR 2019): normalisation, a 3C-channel stem, ``layers`` cells with
reduction cells (stride 2, twice the channels) at 1/3 and 2/3 of the depth, optionally an auxiliary
classifier after the second reduction, global pooling and a linear classifier. The search supernet
fills it with cells of mixed edges (BN without affine parameters); the final network of a genotype with
the genotype's cells (affine BN, drop-path during training).

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vnas.ops import OPS, FactorizedReduce, Normalise, ReLUConvBN, drop_path
from vnas.spaces.darts import CELL_TYPES, PRIMITIVES, STEPS, Genotype
from vnas.supernet import MixedOp, Supernet, check_theta_shapes, edge_key, run_dag


class DartsNet(nn.Module):
    """The DARTS skeleton. ``make_cell(C_pp, C_p, C, reduction, reduction_prev)`` builds each cell; a cell
    has an attribute ``multiplier`` (how many nodes it concatenates) and is called as
    ``cell(s0, s1, **cell_kwargs)`` with the keywords given to ``run``.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, make_cell, C: int, layers: int, num_classes: int, stem_multiplier: int = 3,
                 auxiliary: bool = False):
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers={layers}: a DARTS network needs at least 3 cells (2 reduce, 1 normal).")
        self.normalise = Normalise()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        self.aux_position = 2 * layers // 3
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = 2 * C_curr if reduction else C_curr
            cell = make_cell(C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self.aux_position:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.classifier = nn.Linear(C_p, num_classes)

    def run(self, x, **cell_kwargs):
        """Logits for pixels ``x`` in [0, 1]; ``(logits, logits_aux)`` in training mode with an auxiliary head."""
        logits_aux = None
        s0 = s1 = self.stem(self.normalise(x))
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, **cell_kwargs)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
        return (logits, logits_aux) if logits_aux is not None else logits


# --- search ---------------------------------------------------------------------------------------

class DartsSearchCell(nn.Module):
    """A DARTS search cell: preprocess the two inputs, 4 nodes over 14 mixed edges, concatenate the last
    ``multiplier`` nodes. It reads the mixing weights of its own type, ``theta["normal"]`` or
    ``theta["reduce"]``. Introduced in chapters/02_darts.py."""

    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, steps=STEPS, multiplier=4, partial_channels=1):
        super().__init__()
        self.reduction, self.multiplier = reduction, multiplier
        self.kind = "reduce" if reduction else "normal"
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_pp, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = tuple((src, dst) for dst in range(2, 2 + steps) for src in range(dst))
        self.mixed = nn.ModuleList(MixedOp(C, 2 if reduction and src < 2 else 1, PRIMITIVES,
                                           partial_channels=partial_channels) for src, _ in self.edges)

    def forward(self, s0, s1, theta, active=None):
        kind_active = None if active is None else active[self.kind]
        states = run_dag([self.preprocess0(s0), self.preprocess1(s1)], self.edges, self.mixed, theta[self.kind],
                         kind_active, theta.get(edge_key(self.kind)))  # PC-DARTS' edge weights, if θ has them
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSupernet(Supernet, DartsNet):
    """The DARTS search network: ``forward(x, {"normal": θ[14, 8], "reduce": θ[14, 8]}, active=None)``;
    all cells of a type share their mixing weights. With PC-DARTS' edge normalisation θ also holds the edge
    weights ``"normal.edges"``, ``"reduce.edges"`` [14] (``vnas.supernet.edge_key``). For speed on CPU:
    ``supernet.to(memory_format=torch.channels_last)``. Introduced in chapters/02_darts.py.
    """

    def __init__(self, C=16, layers=8, num_classes=10, steps=STEPS, multiplier=4, stem_multiplier=3,
                 partial_channels=1):
        def make_cell(C_pp, C_p, C_cell, reduction, reduction_prev):
            return DartsSearchCell(C_pp, C_p, C_cell, reduction, reduction_prev, steps, multiplier, partial_channels)

        super().__init__(make_cell, C, layers, num_classes, stem_multiplier)
        self.primitives = PRIMITIVES
        num_edges = sum(2 + i for i in range(steps))
        self.shapes = {k: (num_edges, len(PRIMITIVES)) for k in CELL_TYPES}

    def forward(self, x, theta, active=None):
        check_theta_shapes(theta, self.shapes, self.primitives)
        return self.run(x, theta=theta, active=active)


def build_supernet(C: int = 16, layers: int = 8, num_classes: int = 10, partial_channels: int = 1) -> DartsSupernet:
    """The DARTS search supernet (the published search: C=16, 8 cells). Introduced in chapters/02_darts.py."""
    return DartsSupernet(C=C, layers=layers, num_classes=num_classes, partial_channels=partial_channels)


# --- the final network of a genotype ------------------------------------------------------------------

class DartsCell(nn.Module):
    """A DARTS cell from a genotype: each intermediate node is the sum of its two (op, input) pairs; the
    output concatenates the nodes in ``concat``. Drop-path acts on every op but the identity, in training.
    Introduced in chapters/02_darts.py."""

    def __init__(self, pairs, concat, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_pp, C)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.inputs = tuple(src for _, src in pairs)
        self.concat = tuple(concat)
        self.ops = nn.ModuleList(OPS[op](C, 2 if reduction and src < 2 else 1, True) for op, src in pairs)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob=0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(0, len(self.ops), 2):
            node = 0
            for op, src in ((self.ops[i], self.inputs[i]), (self.ops[i + 1], self.inputs[i + 1])):
                h = op(states[src])
                if self.training and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The auxiliary classifier on 8x8 feature maps (DARTS CIFAR): ReLU, 5x5 average pool (stride 3),
    1x1 conv to 128, BN, ReLU, 2x2 conv to 768, BN, ReLU, linear. Introduced in chapters/02_darts.py."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(DartsNet):
    """The DARTS evaluation network for a genotype (CIFAR: C=36, 20 cells, about 3.3M parameters).

    ``forward(x)`` returns logits; in training mode with ``auxiliary=True`` it returns
    ``(logits, logits_aux)``. ``drop_path_prob`` is read at every forward: the trainer ramps it linearly
    from 0 to ``drop_path`` over the epochs (it starts at ``drop_path``). Introduced in chapters/02_darts.py.
    """

    def __init__(self, genotype, C=36, layers=20, num_classes=10, auxiliary=True, drop_path=0.2, stem_multiplier=3):
        if not isinstance(genotype, Genotype):
            raise ValueError(f"A DARTS network needs a DARTS genotype, got {type(genotype).__name__}; see "
                             f"vnas.spaces.load_genotype.")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path={drop_path} must lie in [0, 1).")

        def make_cell(C_pp, C_p, C_cell, reduction, reduction_prev):
            kind = "reduce" if reduction else "normal"
            return DartsCell(getattr(genotype, kind), getattr(genotype, kind + "_concat"), C_pp, C_p, C_cell,
                             reduction, reduction_prev)

        super().__init__(make_cell, C, layers, num_classes, stem_multiplier, auxiliary)
        self.genotype, self.drop_path, self.drop_path_prob = genotype, drop_path, drop_path

    def forward(self, x):
        return self.run(x, drop_prob=self.drop_path_prob)


def build_network(genotype: Genotype, C: int = 36, layers: int = 20, num_classes: int = 10, auxiliary: bool = True,
                  drop_path: float = 0.2) -> DartsNetwork:
    """The final network of a DARTS genotype (defaults: the published CIFAR-10 evaluation network).

    Introduced in chapters/02_darts.py."""
    return DartsNetwork(genotype, C=C, layers=layers, num_classes=num_classes, auxiliary=auxiliary,
                        drop_path=drop_path)


__all__ = ["AuxiliaryHead", "DartsCell", "DartsNet", "DartsNetwork", "DartsSearchCell", "DartsSupernet",
           "build_network", "build_supernet"]
