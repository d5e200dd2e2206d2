"""Checkers for chapters/00_welcome.py: a stratified split, the per-channel pixel statistics, and the random
crop with zero padding."""

import numpy as np
import torch

from vnas import data
from vnas.checks._common import call, checker, require

__all__ = ["check_stratified_split", "check_channel_stats", "check_pad_and_crop"]


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


# --- the per-channel statistics, Eq. (0.1) ----------------------------------------------------------------

def _stats_cases():
    """uint8 NHWC batches: channels with different spreads (one constant), images of different brightness,
    H != W, and a batch so small that dividing by NHW - 1 instead of NHW shows."""
    rng = np.random.default_rng(0)
    x = np.empty((6, 5, 7, 3), np.uint8)
    x[..., 0] = rng.integers(0, 256, (6, 5, 7))
    x[..., 1] = 128  # a constant channel: its standard deviation is exactly 0
    x[..., 2] = rng.integers(0, 50, (6, 5, 7)) + 40 * np.arange(6)[:, None, None]  # each image brighter
    yield x
    yield rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    yield rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)


def _as_array(v) -> np.ndarray:
    if torch.is_tensor(v):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


@checker
def check_channel_stats(fn) -> str:
    """``fn(x) -> (mean, std)`` for uint8 NHWC images: per channel c, the mean and the standard deviation of all
    the pixels x / 255 of that channel, over every image, row and column (dividing by N H W), Eq. (0.1).

    Introduced in chapters/00_welcome.py, Eq. (0.1)."""
    name = getattr(fn, "__name__", "your function")
    for k, x in enumerate(_stats_cases()):
        out = call(fn, x.copy())
        require(isinstance(out, tuple | list) and len(out) == 2, f"{name} must return a pair (mean, std).")
        mean, std = (_as_array(v) for v in out)
        pixels = x.reshape(-1, 3).astype(np.float64) / 255
        want_mean, want_std = pixels.mean(0), pixels.std(0)
        for label, got in (("mean", mean), ("std", std)):
            require(got.shape != (), f"{name} returns one {label} for all the pixels; Eq. (0.1) has one per channel: "
                                     "reduce over images, rows and columns (axis=(0, 1, 2)) and keep the channels.")
            require(got.shape == (3,), f"the {label} has shape {got.shape}; expected (3,), one per channel. The "
                                       "images are NHWC (images, rows, columns, channels): reduce over axes (0, 1, 2).")

        def close(a, b):
            return bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))

        where = f"Case {k} (x of shape {x.shape})"
        if not close(mean, want_mean):
            require(not close(mean, want_std), f"{where}: your mean is the standard deviation: return (mean, std).")
            require(not close(mean, 255 * want_mean), f"{where}: your means are in grey levels 0..255; divide the "
                                                      "pixels by 255 first.")
            require(not close(mean, np.full(3, pixels.mean())), f"{where}: the three channels got the same mean, "
                                                                "that of all pixels: keep the channel axis.")
            require(False, f"{where}: the means should be {want_mean.round(4).tolist()}, got "
                           f"{mean.round(4).tolist()}.")
        if close(std, want_std):
            continue
        n = len(pixels)
        slips = [(255 * want_std, "your standard deviations are in grey levels 0..255; divide the pixels by 255."),
                 (want_std**2, "that is the variance; the normalisation divides by its square root."),
                 (want_std * np.sqrt(n / (n - 1)), f"that divides by NHW − 1 = {n - 1} (torch.std's default, "
                                                   "unbiased=True, or ddof=1); Eq. (0.1) divides by NHW = "
                                                   f"{n}, as np.std does."),
                 ((x / 255).std(axis=(1, 2)).mean(0), "that averages each image's own standard deviation; Eq. (0.1) "
                                                      "pools the pixels of all images, so that the spread between "
                                                      "images counts too."),
                 (np.full(3, pixels.std()), "the three channels got the same std, that of all pixels: keep the "
                                            "channel axis.")]
        hint = next((m for wrong, m in slips if close(std, wrong)), "compare with Eq. (0.1).")
        require(False, f"{where}: the standard deviations should be {want_std.round(4).tolist()}, got "
                       f"{std.round(4).tolist()}: {hint}")
    return "per-channel mean and standard deviation of x / 255 over all images, rows and columns."


# --- the random crop with zero padding, Eq. (0.2) ---------------------------------------------------------

def _shift(x: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """out[k, i, j] = x[k, i + sy[k], j + sx[k]], and 0 where that falls outside the image."""
    n, h, w, _ = x.shape
    p = int(max(sy.abs().max(), sx.abs().max()))
    padded = torch.nn.functional.pad(x, (0, 0, p, p, p, p))
    return torch.stack([padded[k, p + sy[k]:p + sy[k] + h, p + sx[k]:p + sx[k] + w] for k in range(n)])


def _crop_cases():
    """(x, pad, dy, dx, want): offsets drawn as the library draws them (want = ``vnas.data.crop_flip`` without
    the flip), the extreme offsets 0 and 2 pad, and pad = 0. Pixels are 1..255, so that a zero is padding."""
    gen = torch.Generator().manual_seed(0)
    small = torch.randint(1, 256, (5, 6, 8, 3), generator=gen, dtype=torch.uint8)  # H != W
    cifar_like = torch.randint(1, 256, (3, 32, 32, 3), generator=gen, dtype=torch.uint8)
    for x, pad, seed in ((small, 2, 1), (cifar_like, 4, 2)):
        draws = torch.Generator().manual_seed(seed)
        dy = torch.randint(0, 2 * pad + 1, (len(x), 1, 1), generator=draws).view(-1)
        dx = torch.randint(0, 2 * pad + 1, (len(x), 1, 1), generator=draws).view(-1)
        want = data.crop_flip(x, torch.Generator().manual_seed(seed), pad=pad, flip=False)
        yield x, pad, dy, dx, want
    dy, dx = torch.tensor([0, 4, 2, 0, 4]), torch.tensor([4, 0, 2, 0, 4])  # the corners of the range; image 2 stays
    yield small, 2, dy, dx, _shift(small, dy - 2, dx - 2)
    zero = torch.zeros(5, dtype=torch.long)
    yield small, 0, zero, zero, small


@checker
def check_pad_and_crop(fn) -> str:
    """``fn(x, pad, dy, dx)`` for uint8 NHWC images x and per-image offsets dy, dx in 0..2 pad: pad every image
    with ``pad`` zeros on each side and cut the H x W window whose top-left corner is (dy, dx) in the padded
    image, Eq. (0.2); for offsets drawn as the library draws them, this is ``vnas.data.crop_flip`` without the flip.

    Introduced in chapters/00_welcome.py, Eq. (0.2)."""
    name = getattr(fn, "__name__", "your function")
    for k, (x, pad, dy, dx, want) in enumerate(_crop_cases()):
        out = call(fn, x.clone(), pad, dy.clone(), dx.clone())
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out)
        require(torch.is_tensor(out), f"{name} returned {type(out).__name__}; return a torch tensor.")
        n, h, w, c = x.shape
        if tuple(out.shape) != tuple(x.shape):
            hint = "pad by `pad` zeros on each side of H and W, then cut an H × W window."
            if tuple(out.shape) == (n, h + 2 * pad, w + 2 * pad, c):
                hint = "that is the padded image; cut the H × W window at (dy, dx) out of it."
            elif tuple(out.shape) == (n, h, w + 2 * pad, c + 2 * pad):
                hint = ("you padded W and the channels: the images are NHWC, and F.pad pads the last dimensions "
                        "first, so pad with (0, 0, pad, pad, pad, pad).")
            require(False, f"Case {k}: {name} returned shape {tuple(out.shape)}; expected {tuple(x.shape)}, the "
                           f"input's shape: {hint}")
        got = out.to(torch.float64)

        def same(ref, got=got):
            return bool(torch.equal(got, ref.to(torch.float64)))

        if same(want):
            continue
        rolled = torch.stack([torch.roll(x[i], (pad - int(dy[i]), pad - int(dx[i])), dims=(0, 1)) for i in range(n)])
        slips = [(rolled, "pixels that leave one side come back on the other (a roll): the uncovered border must "
                          "hold zeros (zero padding)."),
                 (_shift(x, dx - pad, dy - pad), "dy and dx are swapped: dy moves the rows (H), dx the columns (W)."),
                 (_shift(x, dy, dx), "the offsets index the padded image: dy = pad leaves the image where it was "
                                     "(the window starts at row dy of the padded image, not of the original)."),
                 (_shift(x, pad - dy, pad - dx), "the shift goes the other way: out[i, j] = padded[i + dy, j + dx]."),
                 (x, "the images came back unchanged: shift each by (dy[k] − pad, dx[k] − pad), Eq. (0.2)."),
                 (_shift(x, (dy[:1] - pad).expand(n), (dx[:1] - pad).expand(n)),
                  "every image got the offsets of the first: each image has its own (dy[k], dx[k]).")]
        hint = next((m for ref, m in slips if same(ref)), None)
        if hint is None:
            padding = (want == 0)  # where the window reaches into the padding
            agree_inside = torch.equal(got[~padding], want[~padding].to(torch.float64))
            hint = ("the image pixels are right, but the border must be zeros (zero padding, not reflect or "
                    "replicate)." if agree_inside and bool(padding.any()) else
                    "compare with Eq. (0.2): out[k, i, j] = padded[k, i + dy[k], j + dx[k]].")
        require(False, f"Case {k} (pad = {pad}, dy = {dy.tolist()}, dx = {dx.tolist()}): the crops differ: {hint}")
    return "zero padding and an H x W window at (dy, dx) per image: the library's random crop, offsets given."
