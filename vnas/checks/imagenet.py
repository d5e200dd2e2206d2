"""Checkers for chapters/08_imagenet.py: the multiply-adds of a convolution, Spearman's rank correlation with
ties, and the percentile rank of a cell among all cells.

Each compares the reader's function with ``vnas.networks.count_macs`` or with the definition (numpy only: scipy
is not a dependency of vnas; tests/test_checks.py checks these references against scipy) on several cases, and
names the usual slip when the answer matches it.
"""

import math

import numpy as np
import torch
from torch import nn

from vnas import networks
from vnas.checks._common import call, checker, require

__all__ = ["check_conv_macs", "check_spearman", "check_percentile_rank"]


def _scalar(out, name: str, what: str) -> float:
    """The reader's answer as one float, or a wrong answer that says what came back instead."""
    if isinstance(out, tuple | list) or (hasattr(out, "statistic") and hasattr(out, "pvalue")):
        require(False, f"{name} returned {type(out).__name__} {out!r}; return only the {what}, one number.")
    if torch.is_tensor(out):
        require(out.numel() == 1, f"{name} returned a tensor of shape {tuple(out.shape)}; return one number.")
        out = out.item()
    try:
        value = float(out)
    except (TypeError, ValueError):
        require(False, f"{name} returned {type(out).__name__}; return the {what} as a number.")
    return value


# --- the multiply-adds of a convolution, Eqs. (8.1)-(8.2) --------------------------------------------------

def _conv_cases():
    """(C_in, C_out, k, H, W, stride, padding, dilation, groups): a stride-2 conv without padding on an odd,
    non-square map (where the usual slips all differ), the DARTS ImageNet stem's first convolution, a 1x1 conv,
    a depthwise 5x5, a dilated depthwise conv with stride 2 on an odd map, and a grouped (not depthwise) conv."""
    yield 8, 16, 3, 7, 9, 2, 0, 1, 1
    yield 3, 24, 3, 224, 224, 2, 1, 1, 1
    yield 48, 48, 1, 28, 28, 1, 0, 1, 1
    yield 48, 48, 5, 14, 14, 1, 2, 1, 48
    yield 16, 16, 3, 15, 15, 2, 2, 2, 16
    yield 8, 12, 3, 10, 6, 1, 1, 1, 4


def _out_size(n, k, s, p, d, rounding=math.floor):
    return rounding((n + 2 * p - d * (k - 1) - 1) / s) + 1


def _conv_truth(c_in, c_out, k, h, w, s, p, d, g) -> int:
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g, bias=False)
    return networks.count_macs(conv, (1, c_in, h, w))


@checker
def check_conv_macs(fn) -> str:
    """``fn(C_in, C_out, k, H, W, stride, padding, dilation, groups)`` must return the multiply-adds of one
    k x k convolution on a C_in x H x W input: k^2 (C_in / groups) C_out H_out W_out, with the output size of
    Eq. (8.1); ``vnas.networks.count_macs`` of the same ``nn.Conv2d`` is the reference.

    Introduced in chapters/08_imagenet.py, Eq. (8.2)."""
    name = getattr(fn, "__name__", "your function")
    for case in _conv_cases():
        c_in, c_out, k, h, w, s, p, d, g = case
        want = _conv_truth(*case)
        got = _scalar(call(fn, *case), name, "number of multiply-adds")
        require(math.isfinite(got) and got == round(got),
                f"{name}{case} returned {got}, not a whole number: Eq. (8.1) rounds the output size down (floor).")
        if got == want:
            continue
        per_pixel = k * k * (c_in // g) * c_out
        ho, wo = _out_size(h, k, s, p, d), _out_size(w, k, s, p, d)
        slips = [
            (2 * want, "that is twice the answer: a multiply-add counts one multiplication and its addition "
                       "together, once (FLOPs would count them separately)."),
            (want * g, "each output channel reads only C_in / groups input channels: divide C_in by groups."),
            (per_pixel * _out_size(h, k, 1, p, d) * _out_size(w, k, 1, p, d),
             "the stride is missing: a stride-s convolution computes only every s-th output position, Eq. (8.1)."),
            (per_pixel * h * w, "that counts the output at the input's size H × W; the output of Eq. (8.1) is "
                                f"{ho} × {wo} here."),
            (per_pixel * math.ceil(h / s) * math.ceil(w / s),
             "H / stride is the output size only with 'same' padding; use Eq. (8.1), where the kernel, the "
             "padding and the dilation count too."),
            (per_pixel * _out_size(h, k, s, p, d, math.ceil) * _out_size(w, k, s, p, d, math.ceil),
             "Eq. (8.1) rounds down (floor): a window that would stick out past the padding is not computed."),
            (per_pixel * _out_size(h, k, s, p, 1) * _out_size(w, k, s, p, 1),
             "the dilation is missing from the output size: a dilated k × k kernel spans d (k − 1) + 1 pixels."),
            (per_pixel * _out_size(h, k, s, 0, d) * _out_size(w, k, s, 0, d),
             "the padding is missing from the output size: the input is H + 2 padding pixels wide, Eq. (8.1)."),
            (k * (c_in // g) * c_out * ho * wo, "a k × k kernel has k² weights per input channel, not k."),
        ]
        hint = next((m for wrong, m in slips if wrong != want and got == wrong),
                    f"compare with Eqs. (8.1)-(8.2): H_out = {ho}, W_out = {wo}.")
        require(False, f"conv_macs(C_in={c_in}, C_out={c_out}, k={k}, H={h}, W={w}, stride={s}, padding={p}, "
                       f"dilation={d}, groups={g}) should be {want:,d}, got {got:,.0f}: {hint}")
    return "k² (C_in / groups) C_out H_out W_out with the floor of Eq. (8.1): count_macs's number on every case."


# --- Spearman's rank correlation with ties, Eq. (8.3) -------------------------------------------------------

def _spearman_cases():
    """(x, y, label): no ties and a curved relation (Pearson's r differs), a monotone curve with ties (rho = 1),
    a decreasing relation, many ties in both (small integers), and accuracies rounded to 0.1 as a table's are."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    yield x, np.exp(2 * x) + 0.3 * rng.normal(size=12), "no ties"
    x = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0])
    yield x, x ** 3, "a monotone curve with ties"
    x = rng.normal(size=9)
    yield x, -x ** 3, "a decreasing relation"
    x = rng.integers(0, 4, size=30).astype(float)
    yield x, x + rng.integers(0, 3, size=30), "many ties in both"
    acc = np.round(rng.beta(8, 2, size=200) * 100, 1)
    yield acc, np.round(acc * 0.5 + rng.normal(0, 2, size=200), 1), "accuracies rounded to 0.1"


def _ranks(v, kind: str = "average") -> np.ndarray:
    """1-based ranks of the values of ``v``: "average" (Eq. (8.3): #{below} + (1 + #{equal}) / 2, as
    scipy.stats.rankdata), "min" (#{below} + 1), "max" (#{below} + #{equal}) or "dense" (1, 2, ... over the
    distinct values)."""
    distinct, inverse, counts = np.unique(np.asarray(v), return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    rank = {"average": below + (1 + counts) / 2, "min": below + 1.0, "max": below + counts.astype(float),
            "dense": np.arange(1.0, len(distinct) + 1)}[kind]
    return rank[inverse.reshape(-1)]


def _ordinal_ranks(v):
    ranks = np.empty(len(v))
    ranks[np.argsort(v, kind="stable")] = np.arange(1, len(v) + 1)
    return ranks


def _no_ties_formula(rx, ry):
    n = len(rx)
    return 1 - 6 * np.sum((rx - ry) ** 2) / (n * (n ** 2 - 1))


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


@checker
def check_spearman(fn) -> str:
    """``fn(x, y)`` for two 1-D float arrays must return Spearman's rank correlation: Pearson's correlation of
    the average ranks of Eq. (8.3), so that tied values share the mean of the ranks they span;
    the same as ``scipy.stats.spearmanr``.

    Introduced in chapters/08_imagenet.py, Eq. (8.3)."""
    name = getattr(fn, "__name__", "your function")
    for x, y, label in _spearman_cases():
        want = _pearson(_ranks(x), _ranks(y))
        got = _scalar(call(fn, x.copy(), y.copy()), name, "correlation coefficient")

        def close(a, b):
            return bool(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7))  # float32 answers are fine

        if close(got, want):
            continue
        rank = {kind: (_ranks(x, kind), _ranks(y, kind)) for kind in ("average", "min", "max", "dense")}
        slips = [
            (_pearson(x, y), "that is Pearson's correlation of the values themselves; Spearman's is Pearson's "
                             "correlation of their ranks, Eq. (8.3)."),
            (-want, "the sign is flipped: rank both variables in the same (increasing) order."),
            (_pearson(_ordinal_ranks(x), _ordinal_ranks(y)),
             "tied values got different ranks (by their position, as argsort(argsort(x)) gives): give every "
             "value of a group of ties the average of the ranks the group spans, Eq. (8.3)."),
            (_pearson(np.argsort(x, kind="stable"), np.argsort(y, kind="stable")),
             "np.argsort(x) is the order (the index of the smallest value first), not the ranks: the rank of "
             "x_i counts the values below it, Eq. (8.3)."),
            (_pearson(*rank["min"]), "tied values all got the lowest rank of their group; Eq. (8.3) gives them "
                                     "the average of the ranks the group spans."),
            (_pearson(*rank["max"]), "tied values all got the highest rank of their group; Eq. (8.3) gives them "
                                     "the average of the ranks the group spans."),
            (_pearson(*rank["dense"]), "those are dense ranks (1, 2, 3, ... over the distinct values): the rank "
                                       "of x_i counts every value below it, duplicates included."),
            (_no_ties_formula(*rank["average"]), "the shortcut 1 − 6 Σ d² / (n (n² − 1)) holds only without ties; "
                                                 "with ties compute Pearson's correlation of the average ranks."),
        ]
        hint = next((m for wrong, m in slips if not close(wrong, want) and close(got, wrong)),
                    "compare with Eq. (8.3).")
        require(False, f"Case '{label}' (n = {len(x)}): Spearman's rho should be {want:.6f}, got {got:.6f}: {hint}")
    return "Pearson's correlation of average ranks, ties included (scipy.stats.spearmanr's value)."


# --- the percentile rank of a cell among all cells, Eq. (8.5) ----------------------------------------------

def _percentile_cases():
    """(all accuracies, accuracy, label): a small table with ties, asked about a tied value, a value not in it,
    its maximum, a value below all and one above all; then a larger table rounded as NB201's is."""
    table = np.array([30.0, 41.5, 41.5, 41.5, 55.2, 60.0, 60.0, 70.3, 70.3, 88.8, 12.0, 93.1])
    for acc, label in ((41.5, "a value three cells share"), (65.0, "a value no cell has"),
                       (93.1, "the best cell"), (5.0, "below every cell"), (99.0, "above every cell"),
                       (60.0, "a value two cells share")):
        yield table, acc, label
    rng = np.random.default_rng(1)
    big = np.round(rng.beta(8, 2, size=1000) * 100, 1)
    yield big, float(np.median(big)), "the median of 1,000 rounded accuracies"


@checker
def check_percentile_rank(fn) -> str:
    """``fn(all_acc, acc)`` must return the percentile rank of accuracy ``acc`` among the accuracies
    ``all_acc`` of every cell, in percent, counting a tie as half, Eq. (8.5):
    100 (#{a_j < acc} + #{a_j = acc} / 2) / N, as ``scipy.stats.percentileofscore(..., kind="mean")``.

    Introduced in chapters/08_imagenet.py, Eq. (8.5)."""
    name = getattr(fn, "__name__", "your function")
    for table, acc, label in _percentile_cases():
        original = table.copy()
        got = _scalar(call(fn, table, acc), name, "percentile")
        require(np.array_equal(table, original), f"{name} changed the array of all accuracies (sorted it in "
                                                 "place?): work on a copy, the caller still needs it.")
        n = len(table)
        below, ties = float(np.sum(table < acc)), float(np.sum(table == acc))
        want = 100 * (below + ties / 2) / n

        def close(a, b):
            return bool(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6))  # float32 answers are fine

        if close(got, want):
            continue
        distinct = np.unique(table)
        slips = [
            (want / 100, "that is a fraction in [0, 1]; Eq. (8.5) is in percent: multiply by 100."),
            (100 * below / n, "only the cells strictly below count there; a cell with the same accuracy counts "
                              "half, Eq. (8.5)."),
            (100 * (below + ties) / n, "the cells with the same accuracy count fully there; they count half, "
                                       "Eq. (8.5)."),
            (100 - want, "that counts the cells above; the percentile rank counts the cells below (a better "
                         "cell has a higher percentile)."),
            (100 * (below + ties / 2) / (n - 1), "divide by N, the number of cells, not N − 1."),
            (100 * (np.sum(distinct < acc) + np.sum(distinct == acc) / 2) / len(distinct),
             "that ranks among the distinct accuracies; every cell counts, duplicates included."),
            (100 * (below + (ties + 1) / 2) / n if ties else want,
             "tied cells there get the average of the ranks they span, up to and including the last: that is "
             "(#{below} + (#{ties} + 1) / 2) / N, half a cell more than Eq. (8.5) for a value in the table."),
        ]
        hint = next((m for wrong, m in slips if not close(wrong, want) and close(got, wrong)),
                    "compare with Eq. (8.5).")
        require(False, f"Case '{label}' (acc = {acc:g}, N = {n}): the percentile rank should be {want:.4f}, got "
                       f"{got:.4f}: {hint}")
    return "100 (#{below} + #{ties} / 2) / N on every case, ties counted half."
