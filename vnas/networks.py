"""Final (evaluation) networks built from a genotype, and how to measure their size.

DARTS (Liu et al., ICLR 2019): a 3C-channel stem, ``layers`` cells built from the genotype (reduction
cells at 1/3 and 2/3 of the depth), an auxiliary classifier after the second reduction, and drop-path on
the cells' non-identity ops during training. NAS-Bench-201 (Dong & Yang, ICLR 2020): a stem, 3 stages of
N copies of the cell joined by residual reduction blocks, BN-ReLU, pooling, a linear classifier.
Here BN has learned scale and shift (``affine=True``): the search is over.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vnas.ops import OPS, FactorizedReduce, ReLUConvBN, ResNetBasicBlock


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the whole output of an op for a random fraction ``p`` of the examples and scale the rest by
    1 / (1 - p), so the expectation is unchanged (DARTS' regulariser for retraining).

    Introduced in chapters/02_darts.py.
    """
    if p <= 0.0:
        return x
    keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class DartsCell(nn.Module):
    """A DARTS cell from a genotype: each intermediate node is the sum of its two (op, input) pairs; the
    output concatenates the nodes in ``concat``. Introduced in chapters/02_darts.py."""

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


class DartsNetwork(nn.Module):
    """The DARTS evaluation network for a genotype (CIFAR: C=36, 20 cells, about 3.3M parameters).

    ``forward(x)`` returns logits; in training mode with ``auxiliary=True`` it returns
    ``(logits, logits_aux)``. ``drop_path_prob`` is read at every forward: the trainer ramps it linearly
    from 0 to ``drop_path`` over the epochs (it starts at ``drop_path``). Introduced in chapters/02_darts.py.
    """

    def __init__(self, genotype, C=36, layers=20, num_classes=10, auxiliary=True, drop_path=0.2,
                 stem_multiplier=3):
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers={layers}: a DARTS network needs at least 3 cells (2 reduce, 1 normal).")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path={drop_path} must lie in [0, 1).")
        self.genotype, self.drop_path, self.drop_path_prob = genotype, drop_path, drop_path
        self.aux_position = 2 * layers // 3
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = 2 * C_curr if reduction else C_curr
            kind = "reduce" if reduction else "normal"
            cell = DartsCell(getattr(genotype, kind), getattr(genotype, kind + "_concat"), C_pp, C_p, C_curr,
                             reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self.aux_position:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
        return (logits, logits_aux) if logits_aux is not None else logits


class NB201Cell(nn.Module):
    """An NB201 cell from a genotype: node j is the sum of ops on nodes 0..j-1; its output is node 3.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, genotype, C):
        super().__init__()
        self.pairs = tuple(tuple(pairs) for pairs in genotype.nodes)
        self.ops = nn.ModuleList(OPS[op](C, 1, True) for pairs in self.pairs for op, _ in pairs)

    def forward(self, x):
        states, k = [x], 0
        for pairs in self.pairs:
            node = 0
            for _, src in pairs:
                node = node + self.ops[k](states[src])
                k += 1
            states.append(node)
        return states[-1]


class NB201Network(nn.Module):
    """The NAS-Bench-201 network for a genotype: stem conv, 3 stages of N cells (C, 2C, 4C channels)
    joined by residual reduction blocks, BN-ReLU, global pooling, linear.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, genotype, C=16, N=5, num_classes=10):
        super().__init__()
        self.genotype = genotype
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers, C_prev = [], C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                layers.append(ResNetBasicBlock(C_prev, C_curr, 2))
            layers += [NB201Cell(genotype, C_curr) for _ in range(N)]
            C_prev = C_curr
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU())
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        x = self.lastact(self.cells(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_network(genotype, **kwargs) -> nn.Module:
    """The evaluation network of a genotype: ``DartsNetwork`` for a DARTS genotype (normal/reduce cells),
    ``NB201Network`` for an NB201 one (``nodes``). Introduced in chapters/02_darts.py."""
    if hasattr(genotype, "normal") and hasattr(genotype, "reduce"):
        return DartsNetwork(genotype, **kwargs)
    if hasattr(genotype, "nodes"):
        return NB201Network(genotype, **kwargs)
    raise ValueError(f"build_network needs a DARTS or NB201 genotype, got {type(genotype).__name__}; "
                     f"see vnas.spaces.load_genotype.")


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    """Number of trainable parameters; the auxiliary head is left out unless asked for, as papers report.

    Introduced in chapters/02_darts.py.
    """
    return sum(p.numel() for name, p in model.named_parameters()
               if p.requires_grad and (include_auxiliary or not name.startswith("auxiliary_head.")))


def count_macs(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """Multiply-adds of the conv and linear layers for one forward pass of a zero input of ``input_size``
    in eval mode (BN, pooling, additions not counted). Introduced in chapters/02_darts.py."""
    total = 0

    def conv_hook(m, inputs, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


__all__ = ["AuxiliaryHead", "DartsCell", "DartsNetwork", "NB201Cell", "NB201Network", "build_network",
           "count_macs", "count_parameters", "drop_path"]
