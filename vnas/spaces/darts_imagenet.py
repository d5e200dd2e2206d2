"""The DARTS network for ImageNet in the mobile setting: 14 cells, C=48, under 600 M multiply-adds at 224x224.

The CIFAR skeleton of ``vnas.spaces.darts_net`` (its cells, drop-path and reduction positions) with what
224x224 images need (Liu et al., ICLR 2019, Table 3 and appendix A.2; quark0/darts ``cnn/model.py``,
``NetworkImageNet``, Apache-2.0):

- a stem of three stride-2 3x3 convolutions, 224 -> 28: ``stem0`` (3 -> C/2 -> C channels, to 56x56) and
  ``stem1`` (C -> C, to 28x28). The first cell reads both, so its s0 (stem0's, twice s1's resolution) is
  halved as after a reduction cell (FactorizedReduce);
- reductions at cells 4 and 9 (1/3 and 2/3 of 14): the last cells run on 7x7 maps, which the classifier
  averages (the original's 7x7 average pool);
- the auxiliary head after the second reduction (7x7 maps; the original's comment says 14x14, but 224 / 32
  is 7) pools with stride 2, and has no BN after its 768-channel conv: the published runs had none;
- ImageNet's channel statistics in the first module (``Normalise``): the network takes pixels in [0, 1].

Its parameters are exactly the original's (tests/test_imagenet.py). Multiply-adds, counted as
``vnas.networks.count_macs`` counts them (conv and linear layers), are 530 M for DARTS_V2, also the
original's under that count; the paper reports 574 M, which other counters do not reproduce either
(quark0/darts issue #46: 523 M, 545 M; the paper's counting code was not published).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from vnas import spaces
from vnas.ops import FactorizedReduce, Normalise
from vnas.spaces.darts import Genotype
from vnas.spaces.darts_net import AuxiliaryHead, DartsNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MOBILE_MACS = 600_000_000  # the mobile setting (NASNet, DARTS): under this many multiply-adds per 224x224 image


class AuxiliaryHeadImageNet(AuxiliaryHead):
    """The CIFAR auxiliary head with the ImageNet changes: on 7x7 maps the 5x5 pool has stride 2 (-> 2x2, which
    the 2x2 conv turns into 1x1), and no BN after the 768-channel conv (quark0/darts: a typo in the
    original runs, kept for consistency with the paper)."""

    def __init__(self, C, num_classes):
        super().__init__(C, num_classes)
        self.features[1] = nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)
        del self.features[6]  # BatchNorm2d(768)


def _conv_bn(C_in, C_out):
    return [nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_out)]


class DartsImageNetNetwork(DartsNetwork):
    """The DARTS ImageNet network of a genotype; ``forward(x)`` as ``DartsNetwork``'s: logits, or
    ``(logits, logits_aux)`` in training mode with the auxiliary head."""

    def __init__(self, genotype, C=48, layers=14, num_classes=1000, auxiliary=True, drop_path=0.0):
        # the CIFAR skeleton with a C-channel stem (stem_multiplier=1), whose parts are then swapped
        super().__init__(genotype, C, layers, num_classes, auxiliary, drop_path, stem_multiplier=1)
        self.normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD)
        del self.stem
        self.stem0 = nn.Sequential(*_conv_bn(3, C // 2), nn.ReLU(), *_conv_bn(C // 2, C))
        self.stem1 = nn.Sequential(nn.ReLU(), *_conv_bn(C, C))
        self.cells[0].preprocess0 = FactorizedReduce(C, C)  # s0 = stem0's output, at twice s1's resolution
        if auxiliary:
            C_aux = self.auxiliary_head.features[2].in_channels  # the channels after the second reduction
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)

    def run(self, x, **cell_kwargs):
        """``DartsNet.run`` with the two-stage stem: the first cell reads stem0's and stem1's outputs."""
        logits_aux = None
        s0 = self.stem0(self.normalise(x))
        s1 = self.stem1(s0)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, **cell_kwargs)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))  # 7x7 maps at 224x224
        return (logits, logits_aux) if logits_aux is not None else logits


def build_imagenet_network(genotype, C: int = 48, layers: int = 14, num_classes: int = 1000, auxiliary: bool = True,
                           drop_path: float = 0.0) -> DartsImageNetNetwork:
    """The ImageNet network of a DARTS genotype (defaults: the published mobile-setting network, 4.7 M
    parameters for DARTS_V2). Only the DARTS space has one: NB201 cells are defined on CIFAR-sized
    networks (and NB201's own ImageNet16-120, 16x16 images)."""
    if not isinstance(genotype, Genotype):
        try:
            kind = f"a genotype of the {spaces.space_of(genotype).name} space"
        except ValueError:
            kind = f"a {type(genotype).__name__}"
        raise ValueError(f"Of the search spaces ({', '.join(spaces.SPACES)}), only darts has an ImageNet network; "
                         f"got {kind}: {genotype}. Give a DARTS genotype, e.g. DARTS_V2.")
    return DartsImageNetNetwork(genotype, C=C, layers=layers, num_classes=num_classes, auxiliary=auxiliary,
                                drop_path=drop_path)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MOBILE_MACS", "AuxiliaryHeadImageNet", "DartsImageNetNetwork",
           "build_imagenet_network"]
