"""What the genotypes of every space share: reading one from text, and checking mixing weights.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import difflib
import json

import torch


def unknown_op(op, primitives, where: str, space: str) -> ValueError:
    """A ValueError for an op that is not in ``primitives``, with the closest valid name."""
    close = difflib.get_close_matches(str(op), primitives, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    valid = [p for p in primitives if p != "none"] if space == "DARTS" else list(primitives)
    return ValueError(f"{where}: op {op!r} is not a{'n' if space[0] in 'AEINO' else ''} {space} op.{hint} "
                      f"Valid ops: {', '.join(valid)}.")


class GenotypeText:
    """``parse`` for a genotype class: JSON text (``to_json``) or the space's own string form.

    A subclass defines ``from_json(dict)``, ``from_text(str)`` and ``JSON_EXAMPLE``.
    Introduced in chapters/02_darts.py.
    """

    JSON_EXAMPLE = ""

    @classmethod
    def parse(cls, text: str):
        """A genotype from its string form (``str(g)``) or from JSON text.

        Introduced in chapters/02_darts.py.
        """
        if not isinstance(text, str):
            raise ValueError(f"parse expects a string, got {type(text).__name__}.")
        text = text.strip()
        if text.startswith("{"):
            try:
                return cls.from_json(json.loads(text))
            except json.JSONDecodeError as err:
                raise ValueError(f"Not valid JSON ({err}); a genotype in JSON looks like "
                                 f"{cls.JSON_EXAMPLE}") from None
        return cls.from_text(text)


def check_theta(theta, cell_types: tuple[str, ...], shape: tuple[int, int], space: str) -> dict[str, torch.Tensor]:
    """Mixing weights θ as float64 CPU tensors, or a ValueError naming the cell type and what is wrong.

    ``theta[cell_type]`` is an [edges, ops] tensor of non-negative weights (rows on the simplex, e.g.
    softmax(α), or any non-negative scores). Introduced in chapters/02_darts.py.
    """
    if not isinstance(theta, dict):
        raise ValueError(f"{space} mixing weights must be a dict {{cell_type: Tensor{list(shape)}}} with cell "
                         f"types {', '.join(cell_types)}; got {type(theta).__name__}.")
    if set(theta) != set(cell_types):
        raise ValueError(f"{space} mixing weights have cell types {sorted(theta)}; expected exactly "
                         f"{', '.join(cell_types)}.")
    out = {}
    for ct in cell_types:
        t = torch.as_tensor(theta[ct]).detach().to("cpu", torch.float64)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{space} theta[{ct!r}] has shape {list(t.shape)}; expected {list(shape)} "
                             f"(one row per edge, one column per op).")
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{space} theta[{ct!r}] must be finite and non-negative (mixing weights on "
                             f"the simplex, e.g. softmax(alpha)); raw logits rank edges wrongly.")
        out[ct] = t
    return out
