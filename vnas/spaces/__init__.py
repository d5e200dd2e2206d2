"""Search spaces: the op set, the cell's edges, genotypes, how a genotype is derived, the networks.

Two spaces: ``darts`` (8 ops, 14 edges, normal and reduce cells; Liu et al., ICLR 2019) and
``nb201`` (5 ops, 6 edges, one cell type; Dong & Yang, ICLR 2020, with a table of trained accuracies).
Each space builds its own search supernet and final network and scores a genotype (the NB201 table, or
nothing). Code that works on either takes a ``Space`` and never needs to know which one it has: no
``if space == ...`` outside this package.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vnas.spaces import darts, darts_net, nb201, nb201_net, nb201_table


@dataclass(frozen=True)
class Space:
    """One search space: its ops, edges (src, dst) and cell types, its genotype functions, its networks.

    - ``derive(theta)``, ``one_hot(genotype)``, ``random_genotype(generator)``, ``parse(text)``;
    - ``build_supernet(C, layers, num_classes, partial_channels)``: the search supernet, ``layers`` cells
      (DARTS) or cells per stage (NB201);
    - ``build_network(genotype, dataset="cifar10", C=..., layers=..., num_classes=..., auxiliary=...,
      drop_path=...)``: the final network for a dataset (``networks``: the builder of each dataset it has;
      the DARTS space also has the ImageNet network, ``vnas.spaces.darts_imagenet``);
    - ``score(genotype)``: the benchmark's test accuracy % per dataset (the NB201 table), or None;
    - ``cell_graph(genotype, cell_type)``: (edges [(src, dst, op)], node labels, node positions) to draw;
    - ``depth``: what ``layers`` counts, in words.

    Introduced in chapters/02_darts.py.
    """

    name: str
    ops: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    cell_types: tuple[str, ...]
    Genotype: type
    derive: Callable
    one_hot: Callable
    random_genotype: Callable
    parse: Callable
    build_supernet: Callable
    networks: dict  # dataset -> the final network's builder (genotype, C, layers, num_classes, auxiliary, drop_path)
    score: Callable
    cell_graph: Callable
    depth: str

    def build_network(self, genotype, dataset: str = "cifar10", **kwargs):
        """The final network of ``genotype`` for ``dataset`` ("cifar10"; "imagenet" for the DARTS space, the
        stacked 14-cell C=48 network of the mobile setting), with the builder's keyword arguments.
        Introduced in chapters/08_imagenet.py."""
        builder = self.networks.get(dataset)
        if builder is None:
            having = [name for name, space in SPACES.items() if dataset in space.networks]
            which = (f"only the {' and '.join(having)} space{'s' if len(having) > 1 else ''} "
                     f"{'have' if len(having) > 1 else 'has'} one" if having else "no space has one")
            raise ValueError(f"The {self.name} space has no {dataset!r} network: of the search spaces "
                             f"({', '.join(SPACES)}), {which}. Networks of the {self.name} space: "
                             f"{', '.join(self.networks)}.")
        return builder(genotype, **kwargs)

    def parameter_free_share(self, genotype) -> dict[str, float]:
        """Per cell type, the share of the genotype's chosen ops that have no weights ('none', pooling,
        skip): the collapse diagnostic of DARTS (Zela et al., ICLR 2020: a collapsing search fills the cell
        with them).
    Introduced in chapters/04_bayesian_structure_posterior.py."""
        free = [op in PARAMETER_FREE for op in self.ops]
        out = {}
        for cell_type, theta in self.one_hot(genotype).items():
            chosen = theta.sum(0)  # how often each op was chosen over the cell's edges
            out[cell_type] = float(chosen[free].sum() / chosen.sum())
        return out

    @property
    def num_edges(self) -> int:
        """Rows of a mixing-weight tensor (14 for DARTS, 6 for NB201)."""
        return len(self.edges)

    @property
    def num_ops(self) -> int:
        """Columns of a mixing-weight tensor (8 for DARTS, 5 for NB201)."""
        return len(self.ops)


PARAMETER_FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})
"""The ops of either space that carry no weights."""


def _space(name: str, module, networks, score: Callable, depth: str, **more_networks) -> Space:
    return Space(name, module.PRIMITIVES, module.EDGES, module.CELL_TYPES, module.Genotype,
                 module.derive, module.one_hot, module.random_genotype, module.parse,
                 networks.build_supernet, {"cifar10": networks.build_network, **more_networks}, score,
                 module.cell_graph, depth)


def _imagenet_network(genotype, **kwargs):
    from vnas.spaces import darts_imagenet  # it imports this package: built on first use

    return darts_imagenet.build_imagenet_network(genotype, **kwargs)


def _no_table(genotype) -> None:
    """The DARTS space has no table of trained accuracies: a cell must be trained to be scored."""
    return None


SPACES = {"darts": _space("darts", darts, darts_net, _no_table, "cells", imagenet=_imagenet_network),
          "nb201": _space("nb201", nb201, nb201_net, nb201_table.table_accuracy, "cells per stage")}


def get_space(name: str) -> Space:
    """The space called ``name`` ('darts' or 'nb201').

    Introduced in chapters/02_darts.py.
    """
    key = str(name).strip().lower()
    if key not in SPACES:
        close = difflib.get_close_matches(key, SPACES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown search space {name!r}.{hint} Valid spaces: {', '.join(SPACES)}.")
    return SPACES[key]


def space_of(genotype) -> Space:
    """The space a genotype belongs to.

    Introduced in chapters/02_darts.py.
    """
    for space in SPACES.values():
        if isinstance(genotype, space.Genotype):
            return space
    raise ValueError(f"{type(genotype).__name__} is not a genotype of any space ({', '.join(SPACES)}).")


_FORMS = (
    "a published name (" + ", ".join(darts.NAMED) + "), a .json file written from genotype.to_json(), "
    "a DARTS string 'Genotype(normal=[...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[...])', "
    "or an NB201 string '|nor_conv_3x3~0|+|...~0|...~1|+|...~0|...~1|...~2|'"
)


def _from_json(d, where: str):
    """A genotype from a dict written by ``to_json``, dispatched on its "space" key."""
    if not isinstance(d, dict) or "space" not in d:
        raise ValueError(f"{where} has no \"space\" key; a genotype JSON is written by genotype.to_json() "
                         f"and starts with {{\"space\": \"darts\"}} or {{\"space\": \"nb201\"}}.")
    return get_space(d["space"]).Genotype.from_json(d)


def load_genotype(spec: str | os.PathLike):
    """A genotype of either space from ``spec``: a published name (case-insensitive), a path to a
    ``.json`` file written from ``genotype.to_json()``, or a genotype string (DARTS form, NB201 form, JSON).

    Introduced in chapters/02_darts.py.
    """
    if not isinstance(spec, str | os.PathLike):
        raise ValueError(f"load_genotype expects a string or path, got {type(spec).__name__}. Give {_FORMS}.")
    text = str(spec).strip()
    named = {k.lower(): g for k, g in darts.NAMED.items()}
    if text.lower() in named:
        return named[text.lower()]
    if text.startswith("{"):
        try:
            return _from_json(json.loads(text), "The JSON text")
        except json.JSONDecodeError as err:
            raise ValueError(f"The genotype text is not valid JSON ({err}). Give {_FORMS}.") from None
    if text.startswith("|"):
        return nb201.Genotype.from_text(text)
    if "Genotype" in text and "(" in text:
        return darts.Genotype.from_text(text)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"Genotype file {path} is not valid JSON ({err}); write it with "
                             f"json.dump(genotype.to_json(), f).") from None
        return _from_json(d, f"Genotype file {path}")
    if path.suffix == ".json" or os.sep in text:
        raise ValueError(f"Genotype file {path} does not exist. Give {_FORMS}.")
    close = difflib.get_close_matches(text.upper(), darts.NAMED, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Cannot read a genotype from {text[:60]!r}.{hint} Give {_FORMS}.")


__all__ = ["PARAMETER_FREE",
           "SPACES", "Space", "darts", "darts_net", "get_space", "load_genotype", "nb201", "nb201_net", "nb201_table",
           "space_of"]
