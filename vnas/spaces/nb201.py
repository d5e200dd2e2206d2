"""The NAS-Bench-201 search space and its table of trained accuracies for all 5^6 = 15,625 cells.

A cell has 4 nodes; node j = 1..3 sums one op applied to every earlier node, so there are 6 edges,
each carrying one of 5 ops ('none' included: a cell may drop an edge). The network stacks 3 stages
of N cells (C, 2C, 4C channels) joined by residual reduction blocks.

Every cell was trained (200 epochs) on CIFAR-10, CIFAR-100 and ImageNet16-120, so a searched cell
can be scored by a table look-up instead of a training run: ``vnas.spaces.nb201_table``.
Source: X. Dong, Y. Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture
Search", ICLR 2020.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from vnas.spaces.base import GenotypeText, check_theta, unknown_op

PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
CELL_TYPES = ("cell",)
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))  # (src, dst), the order of the NB201 string
NODES = (1, 2, 3)
SHAPE = (len(EDGES), len(PRIMITIVES))  # one row of mixing weights per edge
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


@dataclass(frozen=True, repr=False)
class Genotype(GenotypeText):
    """An NB201 cell: ``nodes[j - 1]`` holds node j's j pairs (op, src), src = 0..j-1 in order.

    Introduced in chapters/02_darts.py.
    """

    JSON_EXAMPLE = '{"space": "nb201", "nodes": [[["nor_conv_3x3", 0]], [["nor_conv_3x3", 0], ["none", 1]], ...]}'

    nodes: tuple[tuple[tuple[str, int], ...], ...]

    def __post_init__(self):
        nodes = tuple(self.nodes)
        if len(nodes) != len(NODES):
            raise ValueError(f"An NB201 genotype has {len(NODES)} nodes (1, 2, 3); got {len(nodes)}. "
                             f"Example: {_EXAMPLE}")
        checked = []
        for node, pairs in zip(NODES, nodes, strict=True):
            pairs = tuple(pairs)
            if len(pairs) != node:
                raise ValueError(f"NB201 node {node} has {len(pairs)} incoming edges; it must have {node}, "
                                 f"one from each of nodes 0..{node - 1}.")
            checked.append(tuple(_check_pair(node, src, pair) for src, pair in enumerate(pairs)))
        object.__setattr__(self, "nodes", tuple(checked))

    def ops(self) -> tuple[str, ...]:
        """The 6 ops in ``EDGES`` order.

        Introduced in chapters/02_darts.py.
        """
        return tuple(op for pairs in self.nodes for op, _ in pairs)

    @classmethod
    def from_ops(cls, ops) -> Genotype:
        """The genotype whose edges, in ``EDGES`` order, carry ``ops`` (names or ``PRIMITIVES`` indices).

        Introduced in chapters/02_darts.py.
        """
        ops = [PRIMITIVES[o] if isinstance(o, int) and 0 <= o < len(PRIMITIVES) else o for o in ops]
        if len(ops) != len(EDGES):
            raise ValueError(f"An NB201 cell has {len(EDGES)} edges {EDGES}; got {len(ops)} ops.")
        by_node = {node: [] for node in NODES}
        for op, (src, dst) in zip(ops, EDGES, strict=True):
            by_node[dst].append((op, src))
        return cls(nodes=tuple(tuple(by_node[n]) for n in NODES))

    def __str__(self):
        return "|" + "|+|".join("|".join(f"{op}~{src}" for op, src in pairs) for pairs in self.nodes) + "|"

    __repr__ = __str__

    def to_json(self) -> dict:
        """A JSON-ready dict, with ``"space": "nb201"`` so that ``load_genotype`` knows the type.

        Introduced in chapters/02_darts.py.
        """
        return {"space": "nb201", "nodes": [[list(p) for p in pairs] for pairs in self.nodes]}

    @classmethod
    def from_json(cls, d: dict) -> Genotype:
        """The genotype written by ``to_json`` (the ``space`` key is optional but must say ``nb201``).

        Introduced in chapters/02_darts.py.
        """
        if not isinstance(d, dict) or set(d) - {"space"} != {"nodes"}:
            raise ValueError(f"An NB201 genotype in JSON is an object with keys space, nodes; "
                             f"got {d!r:.100}. Example: {json.dumps(Genotype.parse(_EXAMPLE).to_json())}")
        if d.get("space", "nb201") != "nb201":
            raise ValueError(f"This JSON holds a {d['space']!r} genotype, not an NB201 one.")
        return cls(nodes=d["nodes"])

    @classmethod
    def from_text(cls, text: str) -> Genotype:
        """A genotype from the NB201 string (``str(g)``); ``Genotype.parse`` also reads JSON.

        Introduced in chapters/02_darts.py.
        """
        if not (text.startswith("|") and text.endswith("|") and text.count("+") == len(NODES) - 1):
            raise ValueError(f"Not an NB201 genotype string: {text[:60]!r}. A valid one has 3 nodes "
                             f"separated by '+', each edge written op~src between bars, e.g. {_EXAMPLE}")
        nodes = []
        for part in text[1:-1].split("|+|"):
            pairs = []
            for token in part.split("|"):
                op, sep, src = token.partition("~")
                if not sep or not src.isdigit():
                    raise ValueError(f"NB201 string: edge {token!r} is not op~src (e.g. nor_conv_3x3~0). "
                                     f"Example: {_EXAMPLE}")
                pairs.append((op, int(src)))
            nodes.append(pairs)
        return cls(nodes=nodes)


def _check_pair(node: int, src: int, pair) -> tuple[str, int]:
    """Pair ``src`` of ``node`` as a tuple, or a ValueError naming the node and edge."""
    if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise ValueError(f"NB201 node {node}, edge {src}: {pair!r} is not an (op, src) pair such as "
                         f"('nor_conv_3x3', {src}).")
    op, given = pair
    if op not in PRIMITIVES:
        raise unknown_op(op, PRIMITIVES, f"NB201 node {node}, edge ({src}, {node})", "NB201")
    if given != src or isinstance(given, bool):
        raise ValueError(f"NB201 node {node}: edge {src} comes from node {given!r}, but node {node} lists "
                         f"exactly one edge from each of nodes 0..{node - 1}, in that order.")
    return op, src


def parse(text: str) -> Genotype:
    """An NB201 genotype from its string form or JSON text (see ``Genotype.parse``).

    Introduced in chapters/02_darts.py.
    """
    return Genotype.parse(text)


def derive(theta: dict[str, torch.Tensor]) -> Genotype:
    """Per edge the op with the largest weight, 'none' included (NB201 cells may drop edges).

    ``theta["cell"]`` is a [6, 5] tensor, rows in ``EDGES`` order, columns in ``PRIMITIVES`` order.

    Introduced in chapters/02_darts.py.
    """
    t = check_theta(theta, CELL_TYPES, SHAPE, "NB201")["cell"]
    return Genotype.from_ops(t.argmax(dim=1).tolist())


def one_hot(genotype: Genotype) -> dict[str, torch.Tensor]:
    """Mixing weights θ = {"cell": [6, 5]} with a 1 at each edge's op.

    Introduced in chapters/02_darts.py.
    """
    if not isinstance(genotype, Genotype):
        raise ValueError(f"one_hot expects an NB201 Genotype, got {type(genotype).__name__}.")
    t = torch.zeros(SHAPE)
    for e, op in enumerate(genotype.ops()):
        t[e, PRIMITIVES.index(op)] = 1.0
    return {"cell": t}


def random_genotype(generator: torch.Generator) -> Genotype:
    """Uniform over the 15,625 cells: each edge's op drawn independently.

    Introduced in chapters/02_darts.py.
    """
    return Genotype.from_ops(torch.randint(len(PRIMITIVES), (len(EDGES),), generator=generator).tolist())


def cell_graph(genotype: Genotype, cell_type: str = "cell"):
    """The cell as a graph to draw: (edges [(src, dst, op)] without 'none', node labels, node positions).

    Introduced in chapters/02_darts.py.
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"An NB201 genotype has one cell type, 'cell', not {cell_type!r}.")
    edges = [(src, dst, op) for (src, dst), op in zip(EDGES, genotype.ops(), strict=True) if op != "none"]
    return edges, ["in", "1", "2", "out"], {i: (2.0 * i, 0.0) for i in range(4)}
