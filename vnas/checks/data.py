"""Checkers for chapters/00_welcome.py."""

import numpy as np

from vnas.checks._common import call, checker, require

__all__ = ["check_stratified_split"]


@checker
def check_stratified_split(fn) -> str:
    """``fn(y, seed)`` must return two disjoint index arrays, each with half of every class, seeded."""
    y = np.repeat(np.arange(10), 40)[np.random.default_rng(0).permutation(400)]
    out = call(fn, y, 0)
    require(isinstance(out, tuple) and len(out) == 2, "Return a pair (first_indices, second_indices).")
    a, b = (np.asarray(o) for o in out)
    require(np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer),
            "Return integer index arrays, not masks or values.")
    require(len(np.intersect1d(a, b)) == 0, "The two halves share indices: an image must be in only one half.")
    require(len(np.union1d(a, b)) == len(y), "Together the halves must cover every image exactly once.")
    require(np.bincount(y[a], minlength=10).tolist() == [20] * 10,
            f"Each half needs half of every class; the first has {np.bincount(y[a], minlength=10).tolist()}.")
    again = call(fn, y, 0)
    require(np.array_equal(np.sort(again[0]), np.sort(a)), "The same seed must give the same split.")
    other = call(fn, y, 1)
    require(not np.array_equal(np.sort(other[0]), np.sort(a)), "A different seed should give a different split.")
    return "stratified split: disjoint, complete, balanced and seeded."
