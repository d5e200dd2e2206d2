"""Search spaces as data: the op set, the cell's edges, genotypes, and how a genotype is derived.

Two spaces: ``darts`` (8 ops, 14 edges, normal and reduce cells; Liu et al., ICLR 2019) and
``nb201`` (5 ops, 6 edges, one cell type; Dong & Yang, ICLR 2020, with a table of trained accuracies).
Code that works on either takes a ``Space`` and never needs to know which one it has.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vnas.spaces import darts, nb201


@dataclass(frozen=True)
class Space:
    """One search space: its ops, edges (src, dst) and cell types, and its genotype functions.

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

    @property
    def num_edges(self) -> int:
        """Rows of a mixing-weight tensor (14 for DARTS, 6 for NB201)."""
        return len(self.edges)

    @property
    def num_ops(self) -> int:
        """Columns of a mixing-weight tensor (8 for DARTS, 5 for NB201)."""
        return len(self.ops)


def _space(name: str, module) -> Space:
    return Space(name, module.PRIMITIVES, module.EDGES, module.CELL_TYPES, module.Genotype,
                 module.derive, module.one_hot, module.random_genotype, module.parse)


SPACES = {"darts": _space("darts", darts), "nb201": _space("nb201", nb201)}


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
        return nb201.parse(text)
    if "Genotype" in text and "(" in text:
        return darts.parse(text)
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


__all__ = ["SPACES", "Space", "darts", "get_space", "load_genotype", "nb201", "space_of"]
