"""The architecture gradients of the bilevel problem, checked against exact autograd computations."""

import pytest
import torch
import torch.nn.functional as F

from vnas import objectives, posteriors, spaces
from vnas.supernet import build_supernet


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    net = build_supernet("nb201", C=4, N=1, num_classes=3).double()
    space = spaces.get_space("nb201")
    mix = {"cell": torch.softmax(torch.randn(space.num_edges, space.num_ops, dtype=torch.float64), -1)}
    train = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = (torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.tensor([2, 1, 0, 0, 1, 2]))
    return net, mix, train, val


def test_first_order_is_the_validation_gradient(tiny):
    net, mix, _, val = tiny
    grads, loss = objectives.first_order_gradient(net, mix, val)
    m = mix["cell"].clone().requires_grad_()
    expected = torch.autograd.grad(F.cross_entropy(net(val[0], {"cell": m}), val[1]), m)[0]
    assert torch.allclose(grads["cell"], expected) and torch.isfinite(loss)


def test_second_order_matches_double_backward(tiny):
    net, mix, train, val = tiny
    before = [p.detach().clone() for p in net.parameters()]
    xi = 0.05
    # a step far smaller than DARTS' 0.01 / ||v||, so that no ReLU changes sign between w- and w+
    approx, _ = objectives.second_order_gradient(net, mix, train, val, xi, fd_scale=1e-7)
    after = [p.detach().clone() for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "weights must be restored"
    exact = objectives.exact_second_order_gradient(net, mix, train, val, xi)
    first, _ = objectives.first_order_gradient(net, mix, val)
    err = (approx["cell"] - exact["cell"]).norm() / exact["cell"].norm()
    assert err < 1e-5, f"finite-difference hypergradient off by {err:.2e}"
    # and the unrolled step really matters here: first order is measurably different
    assert (first["cell"] - exact["cell"]).norm() / exact["cell"].norm() > 100 * err


def test_second_order_on_a_smooth_model_with_darts_step():
    """Without ReLU kinks, DARTS' own step eps = 0.01 / ||v|| is accurate to O(eps^2)."""

    class Smooth(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))
            self.head = torch.nn.Linear(3, 3)

        def forward(self, x, mix):
            acts = (torch.tanh, torch.sigmoid, torch.nn.functional.softplus)
            h = sum(w * act(conv(x)) for w, act, conv in zip(mix["cell"][0], acts, self.convs, strict=True))
            return self.head(h.mean((2, 3)))

    torch.manual_seed(1)
    net = Smooth().double()
    mix = {"cell": torch.softmax(torch.randn(1, 3, dtype=torch.float64), -1)}
    train = (torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    val = (torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.tensor([2, 1, 0, 0, 1]))
    approx, _ = objectives.second_order_gradient(net, mix, train, val, xi=0.5)
    exact = objectives.exact_second_order_gradient(net, mix, train, val, xi=0.5)
    first, _ = objectives.first_order_gradient(net, mix, val)
    err = float((approx["cell"] - exact["cell"]).norm() / exact["cell"].norm())
    assert err < 1e-4 and float((first["cell"] - exact["cell"]).norm() / exact["cell"].norm()) > 100 * err


def test_architect_moves_only_the_architecture(tiny):
    net, _, train, val = tiny
    space = spaces.get_space("nb201")
    post = posteriors.build_posterior("variational", space.cell_types, space.num_edges, space.num_ops).double()
    architect = objectives.Architect(net, post, num_data=100, order="second")
    w0 = [p.detach().clone() for p in net.parameters()]
    a0 = post.alphas["cell"].detach().clone()
    architect.step(train, val, xi=0.025)
    a1 = post.alphas["cell"].detach()
    assert not torch.equal(a0, a1)
    assert all(torch.equal(a, p.detach()) for a, p in zip(w0, net.parameters(), strict=True))
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="'first' or 'second'"):
        objectives.Architect(net, post, num_data=1, order="third")


def test_a_cell_switched_off_gets_zero_architecture_gradient():
    """A hard sample with 'none' on every edge into the output node leaves the cell's weights unused."""
    torch.manual_seed(0)
    net = build_supernet("nb201", C=4, N=1, num_classes=3)
    ops = spaces.nb201.PRIMITIVES
    cell = ["nor_conv_3x3", "nor_conv_3x3", "skip_connect", "none", "none", "none"]
    mix = {"cell": torch.stack([torch.nn.functional.one_hot(torch.tensor(ops.index(o)), 5).float() for o in cell])}
    batch = (torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    for grads in (objectives.first_order_gradient(net, mix, batch)[0],
                  objectives.second_order_gradient(net, mix, batch, batch, xi=0.01)[0]):
        assert torch.equal(grads["cell"], torch.zeros(6, 5))
