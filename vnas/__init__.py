"""vnas: Bayesian (variational) neural architecture search, as an executable textbook.

Data flows one way: data -> spaces + posteriors -> supernet -> objectives -> search -> genotype
-> networks/train -> metrics -> plots.
"""

import importlib

from vnas.config import banner, device, mode, setup  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name):
    """``vnas.checks``, ``vnas.plots``, ... import on first use, so ``import vnas`` stays fast."""
    try:
        return importlib.import_module(f"vnas.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"vnas.{name}":
            raise AttributeError(f"module 'vnas' has no attribute {name!r}") from None
        raise
