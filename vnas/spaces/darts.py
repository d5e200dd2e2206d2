"""The DARTS search space: 8 operations on the 14 edges of a cell with 2 inputs and 4 intermediate nodes.

A cell has input nodes 0 and 1 (the outputs of the two previous cells) and intermediate nodes 2..5;
node k may read any node before it, so the supernet has 2 + 3 + 4 + 5 = 14 edges. A *genotype* keeps
two incoming edges per intermediate node, each with one operation, and concatenates nodes 2..5.
The network stacks `normal` cells and, at 1/3 and 2/3 of its depth, `reduce` cells.

Source: H. Liu, K. Simonyan, Y. Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import torch

from vnas.spaces.base import GenotypeText, check_theta, unknown_op

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
CELL_TYPES = ("normal", "reduce")
STEPS = 4  # intermediate nodes 2..5
INPUTS = 2  # input nodes 0, 1
NODES = tuple(range(INPUTS, INPUTS + STEPS))
EDGES = tuple((src, dst) for dst in NODES for src in range(dst))  # supernet order
NONE = PRIMITIVES.index("none")
SHAPE = (len(EDGES), len(PRIMITIVES))  # one row of mixing weights per edge
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_EXAMPLE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...8 pairs], normal_concat=[2, 3, 4, 5], "
    "reduce=[...8 pairs], reduce_concat=[2, 3, 4, 5])"
)


def _check_cell(cell_type: str, pairs) -> tuple[tuple[str, int], ...]:
    """The (op, input) pairs of one cell, as tuples, or a ValueError that says which pair is wrong."""
    pairs = tuple(pairs)
    if len(pairs) != 2 * STEPS:
        raise ValueError(
            f"{cell_type} cell has {len(pairs)} (op, input) pairs; a DARTS cell has {2 * STEPS}: "
            f"two per intermediate node {NODES[0]}..{NODES[-1]}, in node order."
        )
    checked = []
    for i, pair in enumerate(pairs):
        node = NODES[i // 2]
        where = f"{cell_type} cell, node {node} (pair {i})"
        if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise ValueError(f"{where}: {pair!r} is not an (op, input) pair such as ('sep_conv_3x3', 0).")
        op, src = pair
        if op == "none":
            raise ValueError(
                f"{where}: 'none' is not allowed in a genotype: it means 'no edge', and derivation never "
                f"keeps it. Use one of {', '.join(PRIMITIVES[1:])}."
            )
        if op not in PRIMITIVES:
            raise unknown_op(op, PRIMITIVES, where, "DARTS")
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < node:
            raise ValueError(
                f"{where}: input {src!r} is not a node before {node}; node {node} may read nodes "
                f"0..{node - 1} (0 and 1 are the cell inputs)."
            )
        checked.append((op, src))
    for node, (first, second) in zip(NODES, zip(checked[::2], checked[1::2], strict=True), strict=True):
        if first[1] == second[1]:
            raise ValueError(
                f"{cell_type} cell, node {node}: both inputs are node {first[1]}. The two inputs of a node "
                f"must differ: the supernet has one edge ({first[1]}, {node}), and derivation keeps one op "
                f"per edge."
            )
    return tuple(checked)


def _check_concat(cell_type: str, concat) -> tuple[int, ...]:
    """The concatenated nodes as a sorted tuple; accepts lists and range(2, 6)."""
    concat = tuple(concat)
    bad = [n for n in concat if isinstance(n, bool) or not isinstance(n, int) or n not in NODES]
    if bad or not concat or len(set(concat)) != len(concat):
        problem = f"has {bad[0]!r}, not an intermediate node" if bad else "is empty or repeats a node"
        raise ValueError(
            f"{cell_type}_concat {list(concat)} {problem}; it must be a non-empty set of distinct nodes "
            f"from {list(NODES)} (usually all of them)."
        )
    return tuple(sorted(concat))  # concat order does not change the cell


@dataclass(frozen=True, eq=False, repr=False)
class Genotype(GenotypeText):
    """A DARTS cell pair: per cell 8 (op, input) pairs, two per node 2..5, and the nodes to concatenate.

    Equality ignores the order of the two pairs of a node (they are summed), so that
    ``derive(one_hot(g)) == g``; ``str(g)`` keeps the order given, in the DARTS repository's format.

    Introduced in chapters/02_darts.py.
    """

    JSON_EXAMPLE = ('{"space": "darts", "normal": [["sep_conv_3x3", 0], ...8 pairs], "normal_concat": [2, 3, 4, 5], '
                    '"reduce": [...], "reduce_concat": [2, 3, 4, 5]}')

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        for cell_type in CELL_TYPES:
            object.__setattr__(self, cell_type, _check_cell(cell_type, getattr(self, cell_type)))
            concat = f"{cell_type}_concat"
            object.__setattr__(self, concat, _check_concat(cell_type, getattr(self, concat)))

    def _key(self):
        nodes = [tuple(sorted(getattr(self, c)[i : i + 2], key=lambda p: (p[1], p[0])))
                 for c in CELL_TYPES for i in range(0, 2 * STEPS, 2)]
        return tuple(nodes), self.normal_concat, self.reduce_concat

    def __eq__(self, other):
        return isinstance(other, Genotype) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        return (
            f"Genotype(normal={list(self.normal)!r}, normal_concat={list(self.normal_concat)!r}, "
            f"reduce={list(self.reduce)!r}, reduce_concat={list(self.reduce_concat)!r})"
        )

    __repr__ = __str__

    def to_json(self) -> dict:
        """A JSON-ready dict, with ``"space": "darts"`` so that ``load_genotype`` knows the type.

        Introduced in chapters/02_darts.py.
        """
        out = {"space": "darts"}
        for ct in CELL_TYPES:
            out[ct] = [list(p) for p in getattr(self, ct)]
            out[f"{ct}_concat"] = list(getattr(self, f"{ct}_concat"))
        return out

    @classmethod
    def from_json(cls, d: dict) -> Genotype:
        """The genotype written by ``to_json`` (the ``space`` key is optional but must say ``darts``).

        Introduced in chapters/02_darts.py.
        """
        if not isinstance(d, dict):
            raise ValueError(f"A DARTS genotype in JSON is an object with keys {', '.join(_FIELDS)}; "
                             f"got {d!r:.100}.")
        if d.get("space", "darts") != "darts":
            raise ValueError(f"This JSON holds a {d['space']!r} genotype, not a DARTS one.")
        fields = {k: v for k, v in d.items() if k != "space"}
        missing = [k for k in _FIELDS if k not in fields]
        unknown = [k for k in fields if k not in _FIELDS]
        if missing or unknown:
            raise ValueError(
                f"DARTS genotype JSON has missing keys {missing} and unknown keys {unknown}; "
                f"the keys are space, {', '.join(_FIELDS)}."
            )
        return cls(**fields)

    @classmethod
    def from_text(cls, text: str) -> Genotype:
        """A genotype from its DARTS string form (``str(g)``, also with ``range(2, 6)`` concats).

        Only literals are read (``ast.literal_eval``), never executed. ``Genotype.parse`` also reads JSON.
        Introduced in chapters/02_darts.py.
        """
        return cls(**_parse_call(text))


def _literal(node, name: str):
    """A literal argument, or ``range(a, b)`` as in the DARTS repository's genotypes.py."""
    is_range = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
    try:
        if is_range and not node.keywords:
            return list(range(*[ast.literal_eval(a) for a in node.args]))
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        example = "[2, 3, 4, 5]" if name.endswith("concat") else "[('sep_conv_3x3', 0), ...8 pairs]"
        message = f"The value of {name!r} is not a literal list; write e.g. {name}={example}."
        raise ValueError(message) from None


def _parse_call(text: str) -> dict:
    """The four fields of ``Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)``."""
    bad = ValueError(f"Not a DARTS genotype string: {text[:60]!r}. A valid one looks like {_EXAMPLE}.")
    try:
        call = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise bad from None
    func = getattr(call, "func", None)
    name = getattr(func, "id", None) or getattr(func, "attr", None)  # Genotype(...), genotypes.Genotype(...)
    if not isinstance(call, ast.Call) or name != "Genotype" or len(call.args) > len(_FIELDS):
        raise bad
    fields = {f: _literal(a, f) for f, a in zip(_FIELDS, call.args, strict=False)}
    for kw in call.keywords:
        if kw.arg not in _FIELDS or kw.arg in fields:
            raise ValueError(f"Genotype string: {kw.arg!r} is unknown or given twice; the fields are "
                             f"{', '.join(_FIELDS)}.")
        fields[kw.arg] = _literal(kw.value, kw.arg)
    missing = [f for f in _FIELDS if f not in fields]
    if missing:
        raise ValueError(f"Genotype string lacks {', '.join(missing)}. A valid one looks like {_EXAMPLE}.")
    return fields


def parse(text: str) -> Genotype:
    """A DARTS genotype from its string form or JSON text (see ``Genotype.parse``).

    Introduced in chapters/02_darts.py.
    """
    return Genotype.parse(text)


# The cells published with DARTS (Liu et al., 2019; genotypes.py of the DARTS repository):
# V1 from the first-order search, V2 from the second-order search (2.76% test error on CIFAR-10).
DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)
NAMED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2}


def derive(theta: dict[str, torch.Tensor]) -> Genotype:
    """The DARTS rule: per node the 2 incoming edges whose strongest non-'none' op weighs most,
    each with that op; concatenate all intermediate nodes. Ties go to the lower edge index.

    ``theta[cell_type]`` is a [14, 8] tensor of mixing weights (rows on the simplex, or any
    non-negative scores), rows in ``EDGES`` order, columns in ``PRIMITIVES`` order.

    Introduced in chapters/02_darts.py.
    """
    theta = check_theta(theta, CELL_TYPES, SHAPE, "DARTS")
    cells = {}
    for ct in CELL_TYPES:
        t = theta[ct].clone()
        t[:, NONE] = -1.0  # 'none' never wins: it only says how weak an edge is
        strength, best_op = t.max(dim=1)
        strength, best_op = strength.tolist(), best_op.tolist()
        pairs = []
        for node in NODES:
            incoming = [e for e, (_, dst) in enumerate(EDGES) if dst == node]
            top = sorted(incoming, key=lambda e: -strength[e])[:2]  # stable: ties keep edge order
            pairs += [(PRIMITIVES[best_op[e]], EDGES[e][0]) for e in top]
        cells[ct] = pairs
    return Genotype(normal=cells["normal"], normal_concat=NODES, reduce=cells["reduce"], reduce_concat=NODES)


def one_hot(genotype: Genotype) -> dict[str, torch.Tensor]:
    """Mixing weights θ [14, 8] per cell type with a 1 at (edge, op) for each kept edge; the rows of
    unused edges are 0. Introduced in chapters/02_darts.py.
    """
    if not isinstance(genotype, Genotype):
        raise ValueError(f"one_hot expects a DARTS Genotype, got {type(genotype).__name__}.")
    out = {}
    for ct in CELL_TYPES:
        t = torch.zeros(SHAPE)
        for i, (op, src) in enumerate(getattr(genotype, ct)):
            t[EDGES.index((src, NODES[i // 2])), PRIMITIVES.index(op)] = 1.0
        out[ct] = t
    return out


def random_genotype(generator: torch.Generator) -> Genotype:
    """Uniform over genotypes: per node 2 distinct inputs and, for each, one of the 7 non-'none' ops.

    Introduced in chapters/02_darts.py.
    """
    cells = {}
    for ct in CELL_TYPES:
        pairs = []
        for node in NODES:
            inputs = sorted(torch.randperm(node, generator=generator)[:2].tolist())
            ops = torch.randint(1, len(PRIMITIVES), (2,), generator=generator).tolist()  # index 0 is 'none'
            pairs += [(PRIMITIVES[o], s) for o, s in zip(ops, inputs, strict=True)]
        cells[ct] = pairs
    return Genotype(normal=cells["normal"], normal_concat=NODES, reduce=cells["reduce"], reduce_concat=NODES)


def cell_graph(genotype: Genotype, cell_type: str = "normal"):
    """One cell of a genotype as a graph to draw: (edges [(src, dst, op)], node labels, node positions).

    Inputs c_{k-2}, c_{k-1} on the left, nodes 0..3 in a zig-zag row, the concatenated output on the right.
    Introduced in chapters/02_darts.py.
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"A DARTS genotype has cell types {', '.join(CELL_TYPES)}, not {cell_type!r}.")
    pairs = getattr(genotype, cell_type)
    edges = [(src, 2 + i // 2, op) for i, (op, src) in enumerate(pairs)]
    edges += [(node, 6, "concat") for node in getattr(genotype, f"{cell_type}_concat")]
    labels = ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"]
    positions = {0: (0.0, 2.2), 1: (0.0, -2.2), 6: (13.0, 0.0)}
    positions.update({k: (2.6 * (k - 1), 1.0 if k % 2 == 0 else -1.0) for k in NODES})
    return edges, labels, positions
