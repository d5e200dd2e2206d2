"""Final (evaluation) networks built from a genotype, and how to measure their size.

Each space builds its own final network (``vnas.spaces.darts_net``, ``vnas.spaces.nb201_net``);
``build_network`` finds the space from the genotype. Every network takes pixels in [0, 1] and
normalises them in its first module.

Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vnas import spaces


def build_network(genotype, **kwargs) -> nn.Module:
    """The final network of a genotype of either space: ``space_of(genotype).build_network(genotype, ...)``.

    Introduced in chapters/02_darts.py."""
    try:
        space = spaces.space_of(genotype)
    except ValueError:
        raise ValueError(f"build_network needs a DARTS or NB201 genotype, got {type(genotype).__name__}; "
                         f"see vnas.spaces.load_genotype.") from None
    return space.build_network(genotype, **kwargs)


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    """Number of trainable parameters; the auxiliary head is left out unless asked for, as papers report.

    Introduced in chapters/02_darts.py.
    """
    return sum(p.numel() for name, p in model.named_parameters()
               if p.requires_grad and (include_auxiliary or not name.startswith("auxiliary_head.")))


def count_macs(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """Multiply-adds of the conv and linear layers for one forward pass of a zero input of ``input_size``
    in eval mode (BN, pooling, additions not counted). Introduced in chapters/02_darts.py."""
    total = 0

    def conv_hook(m, inputs, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


__all__ = ["build_network", "count_macs", "count_parameters"]
