"""Final networks from genotypes: shapes, the auxiliary head, drop-path, pixels in, and the published sizes."""

import pytest
import torch
from torch import nn

from vnas import data, spaces
from vnas.networks import build_network, count_macs, count_parameters
from vnas.ops import Normalise, drop_path
from vnas.spaces.darts_net import DartsCell, DartsNetwork
from vnas.spaces.nb201_net import NB201Network

NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_darts_network_shapes_and_auxiliary_head_only_in_training():
    net = DartsNetwork(spaces.darts.DARTS_V2, C=4, layers=5, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = net.train()(x)
    assert logits.shape == aux.shape == (2, 7)
    out = net.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
    plain = DartsNetwork(spaces.darts.DARTS_V2, C=4, layers=5, num_classes=7, auxiliary=False).train()
    assert isinstance(plain(x), torch.Tensor)
    assert count_parameters(net, include_auxiliary=True) > count_parameters(net) == count_parameters(plain)


def test_drop_path_only_in_training_and_never_on_identity():
    net = DartsNetwork(spaces.darts.DARTS_V2, C=4, layers=5, auxiliary=False, drop_path=0.5)
    assert net.drop_path_prob == 0.5
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x))  # eval: no randomness at all
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.drop_path_prob = 0.0  # the trainer's ramp starts here
    torch.testing.assert_close(net(x), net(x))

    skips = [("skip_connect", 0), ("skip_connect", 1)] * 4
    convs = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4
    s0, s1 = torch.randn(4, 6, 8, 8), torch.randn(4, 6, 8, 8)
    for pairs, dropped in ((skips, False), (convs, True)):
        cell = DartsCell(pairs, (2, 3, 4, 5), 6, 6, 4, reduction=False, reduction_prev=False).train()
        changed = not torch.allclose(cell(s0, s1, drop_prob=0.9), cell(s0, s1, drop_prob=0.0))
        assert changed == dropped


def test_drop_path_keeps_the_expectation():
    x = torch.ones(20000, 1, 1, 1)
    y = drop_path(x, 0.3)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.7])
    assert abs(y.mean().item() - 1.0) < 0.03
    assert drop_path(x, 0.0) is x


def test_published_darts_v2_size():
    net = DartsNetwork(spaces.darts.DARTS_V2, C=36, layers=20)
    n = count_parameters(net)
    assert 3.2e6 <= n <= 3.45e6, n  # DARTS paper: 3.3M
    assert count_parameters(net, include_auxiliary=True) - n == sum(
        p.numel() for p in net.auxiliary_head.parameters())


def test_nb201_network_sizes_and_shapes():
    best = NB201Network(spaces.nb201.parse(NB201_BEST))
    assert abs(count_parameters(best) - 1.07e6) / 1.07e6 < 0.02  # the table's best CIFAR-10 cell
    largest = NB201Network(spaces.nb201.Genotype.from_ops(["nor_conv_3x3"] * 6))
    assert abs(count_parameters(largest) - 1.53e6) / 1.53e6 < 0.02  # NB201's largest cell
    cheap = spaces.nb201.Genotype.from_ops(["none", "skip_connect", "avg_pool_3x3"] * 2)
    small = NB201Network(cheap, C=4, N=1, num_classes=3)
    assert small(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_build_network_picks_the_space_from_the_genotype():
    assert isinstance(build_network(spaces.darts.DARTS_V1, C=4, layers=3), DartsNetwork)
    assert isinstance(build_network(spaces.nb201.parse(NB201_BEST), C=4, layers=1), NB201Network)
    with pytest.raises(ValueError, match="genotype"):
        build_network("sep_conv_3x3")
    with pytest.raises(ValueError, match="drop_path"):
        DartsNetwork(spaces.darts.DARTS_V2, C=4, layers=5, drop_path=1.5)
    with pytest.raises(ValueError, match="NB201 genotype"):
        spaces.get_space("nb201").build_network(spaces.darts.DARTS_V2)
    with pytest.raises(ValueError, match="DARTS genotype"):
        spaces.get_space("darts").build_network(spaces.nb201.parse(NB201_BEST))
    with pytest.raises(ValueError, match="no auxiliary head.*auxiliary = false"):
        spaces.get_space("nb201").build_network(spaces.nb201.parse(NB201_BEST), auxiliary=True)
    with pytest.raises(ValueError, match="at least 3 cells"):
        spaces.get_space("darts").build_supernet(C=4, layers=2)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_every_network_takes_pixels_and_normalises_first(space):
    """Normalisation is the first module, so a model sees pixels in [0, 1] (attacks perturb those)."""
    sp = spaces.get_space(space)
    genotype = sp.random_genotype(torch.Generator().manual_seed(0))
    for net in (sp.build_network(genotype, C=4, layers=3 if space == "darts" else 1, auxiliary=False, drop_path=0.0),
                sp.build_supernet(C=4, layers=3 if space == "darts" else 1)):
        first = next(net.children())
        assert isinstance(first, Normalise)
        assert not any("mean255" in k or "std255" in k for k in net.state_dict())  # not saved, follows .to()
    x = torch.rand(5, 3, 4, 4)
    manual = (x - torch.tensor(data.MEAN).view(1, 3, 1, 1)) / torch.tensor(data.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalise()(x), manual)
    k = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    uint8_way = (k - torch.tensor(data.MEAN).view(1, 3, 1, 1) * 255) / (torch.tensor(data.STD).view(1, 3, 1, 1) * 255)
    assert torch.equal(Normalise()(k / 255), uint8_way)  # bit for bit what normalising the uint8 images gave


def test_count_macs_by_hand():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    assert count_macs(conv) == 32 * 32 * 8 * (3 * 3 * 3)
    strided_dw = nn.Sequential(nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8))
    assert count_macs(strided_dw, (1, 8, 32, 32)) == 16 * 16 * 8 * (5 * 5)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_macs(mlp, (2, 3, 2, 2)) == 2 * 12 * 5
    net = NB201Network(spaces.nb201.parse(NB201_BEST), C=4, N=1).train()
    macs = count_macs(net)
    assert net.training and macs > 32 * 32 * 4 * 27  # mode restored; at least the stem
