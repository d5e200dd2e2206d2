"""The operations on a cell's edges, for both search spaces, by name: ``OPS[name](C, stride, affine)``.

DARTS (Liu et al., ICLR 2019): none, max/avg_pool_3x3, skip_connect, sep_conv_3x3/5x5, dil_conv_3x3/5x5.
NAS-Bench-201 (Dong & Yang, ICLR 2020): none, skip_connect, nor_conv_1x1/3x3, avg_pool_3x3.
Every op maps C channels to C channels and divides the resolution by ``stride``. ``affine=False`` is the
search setting (BN without learned scale and shift, so that the mixing weights alone scale an op).

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

from vnas.data import MEAN, STD


class Normalise(nn.Module):
    """The first module of every network: pixels x in [0, 1] -> (x - mean) / std per channel.

    Inside the network, so that attacks and calibration work on pixels (a perturbation's size is measured
    in pixel units) and every network, supernets included, takes the same input. ``mean`` and ``std``
    (CIFAR-10's published statistics by default) are buffers that follow ``.to(device)`` but are not saved
    in the state dict. Introduced in chapters/00_welcome.py.
    """

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        # in the 0..255 units of the stored images: for pixels k / 255, (255 x - 255 mean) / (255 std) is,
        # bit for bit, what normalising the uint8 images gives (255 * (k / 255) == k exactly in float32)
        self.register_buffer("mean255", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std255", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def forward(self, x):
        return (x * 255 - self.mean255) / self.std255

    def extra_repr(self):
        return f"mean={list(self.mean)}, std={list(self.std)}"


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the whole output of an op for a random fraction ``p`` of the examples and scale the rest by
    1 / (1 - p), so the expectation is unchanged (DARTS' regulariser for retraining).

    Introduced in chapters/02_darts.py.
    """
    if p <= 0.0:
        return x
    keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class PreReLU(nn.Sequential):
    """Layers that start with a ReLU: ``forward(x) = layers(relu(x))``.

    The ReLU is kept outside the stack so that a mixed op can compute ``relu(x)`` once for all the ops
    that read the same x (``from_relu``). Introduced in chapters/02_darts.py.
    """

    def forward(self, x):
        return super().forward(F.relu(x))

    def from_relu(self, r):
        """The op's output given ``r = relu(x)``. Introduced in chapters/02_darts.py."""
        return super().forward(r)


class _InputGradByConv(torch.autograd.Function):
    """Identity on y = dwconv(x.detach(), w) whose backward also returns dL/dx for a stride-1 depthwise
    conv: the correlation of dL/dy with the flipped filter, i.e. another depthwise conv."""

    @staticmethod
    def forward(y, x, weight, padding, dilation):
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output):  # separate from forward, so that torch.func can use it
        _, _, weight, ctx.padding, ctx.dilation = inputs
        ctx.save_for_backward(weight)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[1]:
            d, k = ctx.dilation, w.shape[-1]
            gx = F.conv2d(g, w.flip(-1, -2), None, 1, d * (k - 1) - ctx.padding, d, w.shape[0])
        return g, gx, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise convolution (one k x k filter per channel, no bias); the same function as ``nn.Conv2d``
    with ``groups=C``, computed faster on CPU:

    - a conv with stride s = dilation and padding divisible by s reads only every s-th pixel, so it is
      a plain stride-1 conv of ``x[:, :, ::s, ::s]`` (DARTS' dil_conv in reduction cells);
    - for stride 1 the input gradient is computed as a depthwise conv with the flipped filter: torch's
      CPU backward for dilated and 5x5 depthwise convs is up to 10x slower than its forward.
    The weight gradient is torch's own, and is only computed when something needs it.
    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__(C, C, kernel_size, stride, padding, dilation=dilation, groups=C, bias=False)
        # the fast path is written for square filters, strides, dilations, symmetric "same"-like padding
        self._fast = not isinstance(self.padding, str) and all(
            a == b for a, b in (self.kernel_size, self.stride, self.padding, self.dilation)) and (
            self.padding[0] <= self.dilation[0] * (self.kernel_size[0] - 1))

    def forward(self, x):
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0], self.dilation[0], self._fast)


def depthwise_conv2d(x, weight, stride: int, padding: int, dilation: int, fast: bool = True):
    """``F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=C)`` for a depthwise
    ``weight`` [C, 1, k, k], by ``DepthwiseConv2d``'s fast CPU path when ``fast`` (square, symmetric
    "same"-like padding): the Bayesian layers of ``vnas.bayes`` call it with their means and variances.
    Introduced in chapters/02_darts.py."""
    groups = weight.shape[0]
    if x.device.type != "cpu" or not fast:
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)
    s, p, d = stride, padding, dilation
    if s > 1 and d == s and p % s == 0 and x.shape[-2] % s == 0 and x.shape[-1] % s == 0:
        x, s, p, d = x[:, :, ::s, ::s], 1, p // s, 1
    if s > 1 or not (torch.is_grad_enabled() and x.requires_grad):
        return F.conv2d(x, weight, None, s, p, d, groups)
    y = F.conv2d(x.detach(), weight, None, 1, p, d, groups)  # carries dL/dw
    return _InputGradByConv.apply(y, x, weight, p, d)  # carries dL/dx


class ReLUConvBN(PreReLU):
    """ReLU - conv - BN: NB201's nor_conv ops and the cells' 1x1 preprocessing.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(nn.Conv2d(C_in, C_out, kernel_size, stride, padding, bias=False),
                         nn.BatchNorm2d(C_out, affine=affine))


class DilConv(PreReLU):
    """ReLU - dilated depthwise conv - pointwise conv - BN (DARTS dil_conv_*).

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(DepthwiseConv2d(C_in, kernel_size, stride, padding, dilation),
                         nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class SepConv(PreReLU):
    """(ReLU - depthwise conv - pointwise conv - BN) twice, the first one strided (DARTS sep_conv_*).

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(DepthwiseConv2d(C_in, kernel_size, stride, padding),
                         nn.Conv2d(C_in, C_in, 1, bias=False), nn.BatchNorm2d(C_in, affine=affine),
                         nn.ReLU(),
                         DepthwiseConv2d(C_in, kernel_size, 1, padding),
                         nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class _ShiftedPair(nn.Module):
    """Two strided 1x1 convs, one on x and one on x shifted by a pixel, concatenated."""

    def __init__(self, C_in, C_out):
        super().__init__()
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)

    def forward(self, x):
        a, b = self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])
        if b.shape != a.shape:  # odd sizes: the shifted grid is one short; it reads zero padding there
            b = F.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return torch.cat([a, b], dim=1)


class FactorizedReduce(PreReLU):
    """Halve the resolution without dropping pixels: ReLU, two strided 1x1 convs (on x and on x shifted
    by one pixel) concatenated, BN. DARTS' skip_connect in reduction cells.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C_in, C_out, affine=True):
        super().__init__(_ShiftedPair(C_in, C_out), nn.BatchNorm2d(C_out, affine=affine))


class Zero(nn.Module):
    """The ``none`` op: zeros of the output's shape (strided in reduction cells).

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, stride=1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        s = self.stride
        return torch.zeros_like(x if s == 1 else x[:, :, ::s, ::s])


class ResNetBasicBlock(nn.Module):
    """NB201's residual block between stages: ReLUConvBN(3x3, stride) - ReLUConvBN(3x3) plus a shortcut
    (2x2 average pool - 1x1 conv when the shape changes).

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, C_in, C_out, stride, affine=True):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine)
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))
        elif C_in != C_out:
            self.shortcut = ReLUConvBN(C_in, C_out, 1, 1, 0, affine)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class _OpTable(dict):
    """A dict of op constructors whose unknown keys raise a ValueError listing the valid names."""

    def __missing__(self, name):
        close = difflib.get_close_matches(str(name), self.keys(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown operation {name!r}.{hint} Valid operations: {', '.join(self)}.")


def _skip(C, stride, affine):
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine)


OPS = _OpTable({
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
})
"""Every op of both spaces: ``OPS[name](C, stride, affine) -> nn.Module``.
Introduced in chapters/02_darts.py."""


def make_op(name: str, C: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """``OPS[name](C, stride, affine)`` with its arguments checked.

    Introduced in chapters/02_darts.py.
    """
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}.")
    if not isinstance(C, int) or C < 1:
        raise ValueError(f"C (channels) must be a positive int, got {C!r}.")
    return OPS[name](C, stride, affine)


__all__ = ["OPS", "DepthwiseConv2d", "DilConv", "FactorizedReduce", "Normalise", "PreReLU", "ReLUConvBN",
           "ResNetBasicBlock", "SepConv", "Zero", "depthwise_conv2d", "drop_path", "make_op"]
