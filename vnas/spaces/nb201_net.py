"""The networks of the NAS-Bench-201 space: one skeleton, two kinds of cell.

The skeleton (Dong & Yang, ICLR 2020): normalisation, a stem convolution, 3 stages of N cells (C, 2C, 4C
channels) joined by residual reduction blocks, BN-ReLU, global pooling and a linear classifier. The
search supernet fills it with cells of mixed edges (BN without affine parameters, no BN after pooling:
NB201's own protocol); the final network with copies of a genotype's cell.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from vnas.ops import OPS, Normalise, ResNetBasicBlock
from vnas.spaces.nb201 import EDGES, PRIMITIVES, Genotype
from vnas.supernet import MixedOp, Supernet, check_theta_shapes, edge_key, run_dag


class NB201Net(nn.Module):
    """The NB201 skeleton. ``make_cell(C)`` builds each cell, called as ``cell(x, **cell_kwargs)`` with the
    keywords given to ``run``; the reduction blocks between stages are plain residual blocks.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, make_cell, C: int, N: int, num_classes: int):
        super().__init__()
        if N < 1:
            raise ValueError(f"N={N}: an NB201 network needs at least one cell per stage.")
        self.normalise = Normalise()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers, C_prev = [], C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                layers.append(ResNetBasicBlock(C_prev, C_curr, 2))
            layers += [make_cell(C_curr) for _ in range(N)]
            C_prev = C_curr
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU())
        self.classifier = nn.Linear(C_prev, num_classes)

    def run(self, x, **cell_kwargs):
        """Logits for pixels ``x`` in [0, 1]."""
        x = self.stem(self.normalise(x))
        for block in self.cells:
            x = block(x) if isinstance(block, ResNetBasicBlock) else block(x, **cell_kwargs)
        return self.classifier(F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1))


# --- search ---------------------------------------------------------------------------------------

class NB201SearchCell(nn.Module):
    """An NB201 search cell: nodes 1, 2, 3 over the 6 mixed edges; its output is node 3.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C, partial_channels=1):
        super().__init__()
        self.kind = "cell"  # the key of the mixing weights it reads, theta["cell"]
        self.edges = tuple(EDGES)
        self.mixed = nn.ModuleList(MixedOp(C, 1, PRIMITIVES, pool_bn=False, partial_channels=partial_channels)
                                   for _ in self.edges)

    def forward(self, x, theta, active=None):
        return run_dag([x], self.edges, self.mixed, theta[self.kind], None if active is None else active[self.kind],
                       theta.get(edge_key(self.kind)))[-1]  # PC-DARTS' edge weights, if θ has them


class NB201Supernet(Supernet, NB201Net):
    """The NAS-Bench-201 search network: ``forward(x, {"cell": θ[6, 5]}, active=None)``; every cell shares
    the mixing weights. Introduced in chapters/02_darts.py.
    """

    def __init__(self, C=16, N=5, num_classes=10, partial_channels=1):
        super().__init__(lambda C_cell: NB201SearchCell(C_cell, partial_channels), C, N, num_classes)
        self.primitives = PRIMITIVES
        self.shapes = {"cell": (len(EDGES), len(PRIMITIVES))}

    def forward(self, x, theta, active=None):
        check_theta_shapes(theta, self.shapes, self.primitives)
        return self.run(x, theta=theta, active=active)


def build_supernet(C: int = 16, layers: int = 5, num_classes: int = 10, partial_channels: int = 1) -> NB201Supernet:
    """The NB201 search supernet with ``layers`` = N cells per stage (the published search: C=16, N=5).

    Introduced in chapters/02_darts.py."""
    return NB201Supernet(C=C, N=layers, num_classes=num_classes, partial_channels=partial_channels)


# --- the final network of a genotype ------------------------------------------------------------------

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


class NB201Network(NB201Net):
    """The NAS-Bench-201 network for a genotype (C=16, N=5 as in the benchmark's training).

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, genotype, C=16, N=5, num_classes=10):
        if not isinstance(genotype, Genotype):
            raise ValueError(f"An NB201 network needs an NB201 genotype, got {type(genotype).__name__}; see "
                             f"vnas.spaces.load_genotype.")
        super().__init__(lambda C_cell: NB201Cell(genotype, C_cell), C, N, num_classes)
        self.genotype = genotype
        self.drop_path = self.drop_path_prob = 0.0  # NB201 trains without drop-path

    def forward(self, x):
        return self.run(x)


def build_network(genotype: Genotype, C: int = 16, layers: int = 5, num_classes: int = 10, auxiliary: bool = False,
                  drop_path: float = 0.0) -> NB201Network:
    """The final network of an NB201 genotype, ``layers`` = N cells per stage. NB201 networks have no
    auxiliary head and no drop-path: asking for either is an error rather than silently ignored.

    Introduced in chapters/02_darts.py."""
    if auxiliary or drop_path:
        raise ValueError(f"NB201 networks have no auxiliary head and no drop-path (got auxiliary={auxiliary}, "
                         f"drop_path={drop_path}); set auxiliary = false and drop_path = 0.0 in the config.")
    return NB201Network(genotype, C=C, N=layers, num_classes=num_classes)


__all__ = ["NB201Cell", "NB201Net", "NB201Network", "NB201SearchCell", "NB201Supernet", "build_network",
           "build_supernet"]
