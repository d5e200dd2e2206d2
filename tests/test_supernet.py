"""Operations and search supernets: the mixed op is Eq. (2.2), skipped ops really are skipped, gradients
reach what they should, and the fused path computes the same function as the plain equation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vnas import ops, spaces
from vnas.posteriors import edge_normalise
from vnas.spaces.darts_net import DartsNetwork, DartsSupernet
from vnas.spaces.nb201_net import NB201Network, NB201Supernet
from vnas.supernet import (
    FixedArchitecture,
    MixedOp,
    active_ops,
    channel_shuffle,
    edge_key,
    fold_edge_weights,
    run_dag,
    scaled_bn,
)


def build_supernet(space, **kw):
    return spaces.get_space(space).build_supernet(**kw)

DARTS_OPS = spaces.darts.PRIMITIVES
NB201_OPS = spaces.nb201.PRIMITIVES
CL = torch.channels_last


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _softmax_theta(net, requires_grad=False):
    return {k: torch.softmax(torch.randn(*s, dtype=torch.float64), -1).requires_grad_(requires_grad)
            for k, s in net.shapes.items()}


def _count_calls(modules):
    """Attach call counters to ``modules``; returns (counts, handles)."""
    counts = [0] * len(modules)
    handles = []
    for i, m in enumerate(modules):
        def hook(*_, i=i):
            counts[i] += 1
        handles.append(m.register_forward_hook(hook))
    return counts, handles


# ---- ops -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(DARTS_OPS) | set(NB201_OPS)))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_maps_C_to_C_and_divides_the_resolution(name, stride):
    op = ops.OPS[name](6, stride, False)
    assert op(torch.randn(2, 6, 8, 8)).shape == (2, 6, 8 // stride, 8 // stride)


def test_unknown_op_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid operations: .*sep_conv_3x3.*nor_conv_1x1") as err:
        ops.OPS["sep_conv_7x7"](4, 1, True)
    assert "sep_conv_3x3" in str(err.value)
    with pytest.raises(ValueError, match="stride"):
        ops.make_op("skip_connect", 4, stride=3)


def test_factorized_reduce_handles_odd_sizes_like_zero_padding():
    fr = ops.FactorizedReduce(4, 6).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    r = F.relu(x)
    pair = fr[0]
    expected = torch.cat([pair.conv_1(r), pair.conv_2(F.pad(r, (0, 1, 0, 1))[:, :, 1:, 1:])], 1)
    torch.testing.assert_close(pair(r), expected)
    assert fr(x).shape == (2, 6, 4, 4)


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 1, 4, 2),
                                                       (3, 2, 1, 1), (3, 2, 2, 2), (5, 2, 4, 2)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_depthwise_conv_is_conv2d_with_its_gradients(k, stride, padding, dilation, layout):
    conv = ops.DepthwiseConv2d(3, k, stride, padding, dilation).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    if layout == "channels_last":
        conv, x = conv.to(memory_format=CL), x.contiguous(memory_format=CL)
    x.requires_grad_()
    plain = lambda: F.conv2d(x, conv.weight, None, stride, padding, dilation, 3)  # noqa: E731
    y = conv(x)
    torch.testing.assert_close(y, plain())
    g, v = torch.randn_like(y), torch.randn_like(x)
    torch.testing.assert_close(torch.autograd.grad(y, (x, conv.weight), g),
                               torch.autograd.grad(plain(), (x, conv.weight), g))

    def second(fn):  # d/dw <dL/dx, v>: the double backward that exact second-order DARTS needs
        gx = torch.autograd.grad((fn() * g).sum(), x, create_graph=True)[0]
        return torch.autograd.grad((gx * v).sum(), conv.weight)[0]
    torch.testing.assert_close(second(lambda: conv(x)), second(plain))


def test_depthwise_conv_works_under_torch_func():
    conv = ops.DepthwiseConv2d(3, 5, 1, 4, 2).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    params = dict(conv.named_parameters())
    ours = torch.func.grad(lambda x: torch.func.functional_call(conv, params, (x,)).square().sum())(x)
    plain = torch.func.grad(lambda x: F.conv2d(x, conv.weight, None, 1, 4, 2, 3).square().sum())(x)
    torch.testing.assert_close(ours, plain)


# ---- the mixed op -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scaled_bn_is_the_weight_times_bn(layout):
    bn_a, bn_b = nn.BatchNorm2d(5, affine=False).double(), nn.BatchNorm2d(5, affine=False).double()
    z = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    g = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    if layout == "channels_last":  # torch's CL BN backward misreads an expanded (stride-0) scale
        z, g = z.contiguous(memory_format=CL), g.contiguous(memory_format=CL)
    z.requires_grad_()
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    a, b = scaled_bn(bn_a, z, theta), theta * bn_b(z)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, (z, theta), g), torch.autograd.grad(b, (z, theta), g))
    torch.testing.assert_close(bn_a.running_var, bn_b.running_var)
    assert bn_a.num_batches_tracked == bn_b.num_batches_tracked == 1


@pytest.mark.parametrize("primitives,pool_bn,stride", [(DARTS_OPS, True, 1), (DARTS_OPS, True, 2),
                                                       (NB201_OPS, False, 1)])
def test_mixed_op_is_the_weighted_sum_of_its_ops(primitives, pool_bn, stride):
    m = MixedOp(4, stride, primitives, pool_bn=pool_bn).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    theta = torch.softmax(torch.randn(len(primitives), dtype=torch.float64), 0)
    expected = sum(theta[o] * op(x) for o, op in enumerate(m.ops))
    torch.testing.assert_close(m(x, theta), expected)


def test_without_active_every_op_but_none_runs():
    m = MixedOp(4, 1, DARTS_OPS).double()
    leaves = [[mod for mod in op.modules() if not list(mod.children())] for op in m.ops]
    counts, handles = _count_calls([mod for group in leaves for mod in group])
    m(torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.zeros(len(DARTS_OPS), dtype=torch.float64))
    for h in handles:
        h.remove()
    sizes = [len(group) for group in leaves]
    ran = [any(counts[sum(sizes[:o]):sum(sizes[:o + 1])]) for o in range(len(DARTS_OPS))]
    assert ran == [name != "none" for name in DARTS_OPS]


def test_one_hot_weights_give_exactly_one_op_and_run_only_it():
    m = MixedOp(4, 1, DARTS_OPS).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    leaves = [[mod for mod in op.modules() if not list(mod.children())] for op in m.ops]
    flat = [mod for group in leaves for mod in group]
    for o, name in enumerate(DARTS_OPS):
        theta = torch.zeros(len(DARTS_OPS), dtype=torch.float64)
        theta[o] = 1.0
        counts, handles = _count_calls(flat)
        out = m(x, theta, active_ops({"e": theta[None]}, DARTS_OPS)["e"][0])
        for h in handles:
            h.remove()
        ran = {id(mod) for mod, n in zip(flat, counts, strict=True) if n}
        assert ran <= {id(mod) for mod in leaves[o]}, f"{name}: another op ran"
        assert bool(ran) == (name != "none"), f"{name}: ran={bool(ran)}"
        if name == "none":
            assert torch.count_nonzero(out) == 0
        else:
            torch.testing.assert_close(out, m.ops[o](x), rtol=1e-12, atol=1e-12)


def test_zero_weights_are_skipped_but_straight_through_gradients_flow():
    m = MixedOp(4, 1, DARTS_OPS).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    soft = torch.softmax(torch.randn(len(DARTS_OPS), dtype=torch.float64), 0).requires_grad_()
    pick = DARTS_OPS.index("sep_conv_3x3")
    hard = torch.zeros_like(soft)
    hard[pick] = 1.0
    theta = hard - soft.detach() + soft  # GDAS: one-hot value, softmax gradient
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    counts, handles = _count_calls(convs)
    out = m(x, theta, active_ops({"e": theta[None]}, DARTS_OPS)["e"][0])
    for h in handles:
        h.remove()
    assert sum(counts) == 4  # sep_conv_3x3: two depthwise + two pointwise convs, nothing else
    out.square().sum().backward()
    assert soft.grad[pick] != 0
    assert all(p.grad is not None for p in m.ops[pick].parameters())
    assert all(p.grad is None for o, op in enumerate(m.ops) if o != pick for p in op.parameters())


def test_partial_channels_mix_a_slice_and_shuffle():
    m = MixedOp(8, 1, NB201_OPS, pool_bn=False, partial_channels=4).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(NB201_OPS), dtype=torch.float64), 0)
    mixed = sum(w[o] * op(x[:, :2]) for o, op in enumerate(m.ops))
    torch.testing.assert_close(m(x, w), channel_shuffle(torch.cat([mixed, x[:, 2:]], 1), 4))
    shuffled = channel_shuffle(torch.arange(8.0).view(1, 8, 1, 1), 4)
    assert shuffled.flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    reduce = MixedOp(8, 2, DARTS_OPS, partial_channels=2)
    assert reduce(torch.randn(2, 8, 6, 6), torch.full((8,), 1 / 8)).shape == (2, 8, 3, 3)
    with pytest.raises(ValueError, match="divide"):
        MixedOp(6, 1, DARTS_OPS, partial_channels=4)


# ---- supernets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("space,kw", [("darts", dict(C=4, layers=3)),
                                      ("darts", dict(C=4, layers=3, partial_channels=2)),
                                      ("nb201", dict(C=4, layers=1)),
                                      ("nb201", dict(C=4, layers=1, partial_channels=2))],
                         ids=["darts", "darts-pc", "nb201", "nb201-pc"])
def test_supernet_shapes_and_gradients(space, kw):
    net = build_supernet(space, num_classes=7, **kw).double()
    theta = _softmax_theta(net, requires_grad=True)
    logits = net(torch.rand(2, 3, 16, 16, dtype=torch.float64), theta)
    assert logits.shape == (2, 7)
    logits.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.dim() > 1)
    names = spaces.get_space(space).ops
    for v in theta.values():
        assert torch.all(v.grad[:, names.index("none")] == 0)  # `none` adds exactly 0
        others = [i for i, n in enumerate(names) if n != "none"]
        assert torch.all(v.grad[:, others] != 0)
    assert not any("alpha" in n for n, _ in net.named_parameters())
    if kw.get("partial_channels"):  # the first cell's edges: C=4 channels, 4/2 of them through the ops
        first = next(m for m in net.modules() if isinstance(m, MixedOp))
        convs = [m for m in first.modules() if isinstance(m, nn.Conv2d)]
        assert first.C_op == 2 and convs and all(c.in_channels == 2 for c in convs)


def _run_both_paths(net, theta, x, active=None):
    """Logits and gradients (w.r.t. theta and the weights) of the fused path and of the plain equation."""
    out = {}
    for fused in (True, False):
        net.fused = fused
        assert net.fused == fused
        leaves = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
        logits = net(x, leaves, active if fused else None)
        params = list(net.parameters())
        grads = torch.autograd.grad(logits.square().sum(), list(leaves.values()) + params, allow_unused=True)
        out[fused] = (logits.detach(), grads[:len(leaves)], grads[len(leaves):])
    net.fused = True
    return out[True], out[False]


def _assert_paths_agree(net, theta, x):
    """Same logits and the same gradients w.r.t. θ and every weight on the fused and plain paths (float64, train-mode
    BN); returns the fused path's gradients w.r.t. θ."""
    (lf, tf, wf), (lp, tp, wp) = _run_both_paths(net, theta, x)
    torch.testing.assert_close(lf, lp, rtol=1e-10, atol=1e-12)
    for a, b in zip(tf + wf, tp + wp, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    return tf


@pytest.mark.parametrize("space,kw", [("darts", dict(C=4, layers=3)),
                                      ("darts", dict(C=4, layers=3, partial_channels=2)),
                                      ("nb201", dict(C=4, layers=2)),
                                      ("nb201", dict(C=4, layers=1, partial_channels=2))],
                         ids=["darts", "darts-pc", "nb201", "nb201-pc"])
def test_fused_path_is_the_plain_equation(space, kw):
    """For dense θ: same logits and the same gradients w.r.t. θ and every weight (float64, train-mode BN)."""
    net = build_supernet(space, **kw).double().to(memory_format=torch.channels_last)
    theta = _softmax_theta(net)
    _assert_paths_agree(net, theta, torch.rand(3, 3, 8, 8, dtype=torch.float64))


def test_fused_path_skips_zero_weights_and_drops_only_their_gradient():
    """A one-hot θ with ``active``: same logits and weight gradients; θ's gradient agrees on the ops that ran,
    and is 0 on the skipped ones (the plain path gives them <dL/dout, o(x)>)."""
    space = spaces.get_space("nb201")
    net = build_supernet("nb201", C=4, layers=1).double()
    genotype = space.random_genotype(torch.Generator().manual_seed(3))
    theta = {k: v.double() for k, v in space.one_hot(genotype).items()}
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    (lf, tf, wf), (lp, tp, wp) = _run_both_paths(net, theta, x, net.active(theta))
    torch.testing.assert_close(lf, lp, rtol=1e-10, atol=1e-12)
    ran = theta["cell"] != 0
    torch.testing.assert_close(tf[0][ran], tp[0][ran])
    assert torch.all(tf[0][~ran] == 0) and torch.any(tp[0][~ran] != 0)
    for a, b in zip(wf, wp, strict=True):  # weights of skipped ops: no gradient (fused) or a zero one (plain)
        if a is None:
            assert b is None or torch.all(b == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_active_reads_theta_once_and_fixed_architecture_is_a_model():
    net = build_supernet("nb201", C=4, layers=1)
    theta = {"cell": torch.zeros(6, 5)}
    theta["cell"][1:, 3] = 1.0
    theta["cell"][0, 0] = 1.0  # 'none' never runs, whatever its weight
    active = net.active(theta)
    assert active["cell"][0] == [False] * 5
    assert all(row == [False, False, False, True, False] for row in active["cell"][1:])
    model = net.at(theta, active)
    assert isinstance(model, FixedArchitecture) and model.supernet is net
    x = torch.rand(2, 3, 8, 8)
    net.eval()
    torch.testing.assert_close(model(x), net(x, theta, active))
    model.train()
    assert net.training  # one set of weights, one mode
    with pytest.raises(ValueError, match=r"expected \(6, 5\)"):
        net.at({"cell": torch.zeros(5, 6)})


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_darts_supernet_channels_last_is_the_same_function(layout):
    net = DartsSupernet(C=4, layers=3).double()
    w = _softmax_theta(net)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    a = net(x, w)
    if layout == "channels_last":
        net = net.to(memory_format=CL)
    torch.testing.assert_close(net(x, w), a)


def test_wrong_weights_raise_clear_errors():
    net = DartsSupernet(C=4, layers=3)
    x = torch.randn(1, 3, 8, 8)
    good = {"normal": torch.full((14, 8), 1 / 8), "reduce": torch.full((14, 8), 1 / 8)}
    with pytest.raises(ValueError, match=r"expected \(14, 8\)"):
        net(x, {**good, "reduce": torch.full((14, 5), 0.2)})
    with pytest.raises(ValueError, match="'normal': Tensor"):
        net(x, {"normal": good["normal"]})
    with pytest.raises(ValueError, match="mixing weights"):
        net(x, good["normal"])
    with pytest.raises(ValueError, match=r"expected \(6, 5\)"):
        NB201Supernet(C=4, N=1)(x, {"cell": torch.full((5, 6), 0.2)})
    with pytest.raises(ValueError, match=r"expected \(8,\)"):
        MixedOp(4, 1, DARTS_OPS)(torch.randn(1, 4, 4, 4), torch.ones(5))
    with pytest.raises(ValueError, match="darts, nb201"):
        spaces.get_space("enas")


def _conv_calls(model, *args):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    counts, handles = _count_calls(convs)
    model(*args)
    for h in handles:
        h.remove()
    return sum(counts)


def test_one_hot_genotype_runs_what_the_final_network_runs():
    x = torch.randn(2, 3, 16, 16)
    for genotype in (spaces.darts.DARTS_V2, spaces.darts.DARTS_V1):
        supernet = DartsSupernet(C=4, layers=5)
        final = DartsNetwork(genotype, C=4, layers=5, auxiliary=False)
        theta = spaces.darts.one_hot(genotype)
        assert _conv_calls(supernet, x, theta, supernet.active(theta)) == _conv_calls(final, x)
    genotype = spaces.nb201.Genotype.from_ops(["nor_conv_3x3", "none", "skip_connect",
                                               "nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3"])
    supernet, final = NB201Supernet(C=4, N=2), NB201Network(genotype, C=4, N=2)
    theta = spaces.nb201.one_hot(genotype)
    assert _conv_calls(supernet, x, theta, supernet.active(theta)) == _conv_calls(final, x)


def test_a_node_with_only_none_is_zero():
    net = NB201Supernet(C=4, N=1).double()
    theta = torch.zeros(6, 5, dtype=torch.float64)
    theta[:, 0] = 1.0  # every edge `none`: every cell outputs zeros, the network still runs
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for active in (None, net.active({"cell": theta})):
        out = net(x, {"cell": theta}, active)
        assert out.shape == (2, 10) and torch.isfinite(out).all()


# ---- PC-DARTS edge normalisation ---------------------------------------------------------------------

def _edge_theta(net, requires_grad=False):
    """Dense θ plus edge weights γ (a softmax over each node's incoming edges of random β)."""
    theta = _softmax_theta(net, requires_grad)
    edges = spaces.get_space("darts" if "normal" in net.shapes else "nb201").edges
    for k, (n_edges, _) in net.shapes.items():
        gamma = edge_normalise(torch.randn(n_edges, dtype=torch.float64), edges)
        theta[edge_key(k)] = gamma.requires_grad_(requires_grad)
    return theta


@pytest.mark.parametrize("partial_channels", [1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_edge_normalisation_is_the_weighted_node_sum_by_hand(partial_channels, fused):
    """node j = Σ_i γ_ij ō_ij(x_i), γ_ij = softmax over j's incoming edges of β_ij (PC-DARTS Eq. 4)."""
    edges = ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
    mixed = nn.ModuleList(MixedOp(4, 1, DARTS_OPS, partial_channels=partial_channels) for _ in edges).double()
    for m in mixed:
        m.fused = fused
    theta = torch.softmax(torch.randn(len(edges), len(DARTS_OPS), dtype=torch.float64), -1)
    beta = torch.randn(len(edges), dtype=torch.float64)
    gamma = edge_normalise(beta, edges)
    by_hand = torch.cat([torch.softmax(beta[:2], 0), torch.softmax(beta[2:], 0)])
    torch.testing.assert_close(gamma, by_hand)
    c = 4 // partial_channels

    def o_bar(e, x):  # the mixed op written out: Σ_o θ_o o(x[:, :C/K]), bypass, shuffle
        out = sum(theta[e, o] * op(x[:, :c]) for o, op in enumerate(mixed[e].ops))
        return out if partial_channels == 1 else channel_shuffle(torch.cat([out, x[:, c:]], 1), partial_channels)

    x0, x1 = torch.randn(2, 2, 4, 6, 6, dtype=torch.float64)
    x2 = gamma[0] * o_bar(0, x0) + gamma[1] * o_bar(1, x1)
    x3 = gamma[2] * o_bar(2, x0) + gamma[3] * o_bar(3, x1) + gamma[4] * o_bar(4, x2)
    states = run_dag([x0, x1], edges, mixed, theta, None, gamma)
    torch.testing.assert_close(states[2], x2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(states[3], x3, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_edge_weight_scales_the_bypassed_channels_too(stride):
    m = MixedOp(8, stride, DARTS_OPS, partial_channels=4).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(DARTS_OPS), dtype=torch.float64), 0)
    gamma = torch.tensor(0.3, dtype=torch.float64)
    expected = 0.3 * m(x, w)  # the whole edge output, bypass included
    for fused in (True, False):
        m.fused = fused
        torch.testing.assert_close(m(x, w, None, gamma), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("space,kw", [("darts", dict(C=4, layers=3)),
                                      ("darts", dict(C=4, layers=3, partial_channels=2)),
                                      ("nb201", dict(C=4, layers=1)),
                                      ("nb201", dict(C=4, layers=1, partial_channels=2))],
                         ids=["darts", "darts-pc", "nb201", "nb201-pc"])
def test_fused_path_is_the_plain_equation_with_edge_weights(space, kw):
    """Same logits and gradients (θ, γ and every weight) on both paths, with edge weights in θ."""
    net = build_supernet(space, **kw).double().to(memory_format=torch.channels_last)
    theta = _edge_theta(net)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    tf = _assert_paths_agree(net, theta, x)
    assert all(g.abs().sum() > 0 for g in tf)  # γ gets a gradient on both cell types
    without = {k: v for k, v in theta.items() if k in net.shapes}
    assert not torch.allclose(net(x, theta), net(x, without))  # the edge weights do something


def test_edge_weight_gradient_matches_finite_differences():
    net = build_supernet("darts", C=4, layers=3, partial_channels=2).double().eval()
    theta = _edge_theta(net)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    key = edge_key("reduce")
    gamma = theta[key].clone().requires_grad_()

    def loss(g):
        return net(x, {**theta, key: g}).square().sum()

    grad, = torch.autograd.grad(loss(gamma), gamma)
    h = 1e-6
    for e in (0, 5, 13):
        step = torch.zeros_like(gamma)
        step[e] = h
        fd = (loss(gamma.detach() + step) - loss(gamma.detach() - step)) / (2 * h)
        torch.testing.assert_close(grad[e], fd, rtol=1e-5, atol=1e-8)


def test_edge_weights_in_theta_errors_are_clear():
    net = DartsSupernet(C=4, layers=3)
    x = torch.randn(1, 3, 8, 8)
    good = {"normal": torch.full((14, 8), 1 / 8), "reduce": torch.full((14, 8), 1 / 8),
            "normal.edges": torch.full((14,), 0.5), "reduce.edges": torch.full((14,), 0.5)}
    assert net(x, good).shape == (1, 10)
    with pytest.raises(ValueError, match=r"theta\['normal.edges'\] has shape \(13,\); expected \(14,\): one weight"):
        net(x, {**good, "normal.edges": torch.ones(13)})
    with pytest.raises(ValueError, match="edge weights for \\['normal.edges'\\] but not for \\['reduce.edges'\\]"):
        net(x, {k: v for k, v in good.items() if k != "reduce.edges"})
    with pytest.raises(ValueError, match="also the edge weights {'normal.edges': Tensor\\[14\\]"):
        net(x, {**good, "normal.edge": torch.ones(14)})
    assert net.active(good).keys() == {"normal", "reduce"}  # edge weights are not ops


def test_fold_edge_weights_gives_the_pc_darts_derivation():
    theta = {c: torch.full((14, 8), 0.01) for c in ("normal", "reduce")}
    conv = DARTS_OPS.index("sep_conv_3x3")
    # node 3 reads edges 2, 3, 4 = (0, 3), (1, 3), (2, 3); by op weight alone edges 2 and 3 win
    for c in theta:
        theta[c][2, conv], theta[c][3, conv], theta[c][4, conv] = 0.5, 0.4, 0.3
    gamma = torch.full((14,), 0.5)
    gamma[2:5] = torch.tensor([0.1, 0.45, 0.45])
    with_edges = {**theta, "normal.edges": gamma, "reduce.edges": gamma}
    assert fold_edge_weights(theta) is theta  # nothing to fold: θ as it was
    folded = fold_edge_weights(with_edges)
    assert folded.keys() == theta.keys()
    torch.testing.assert_close(folded["normal"], theta["normal"] * gamma[:, None])
    by_ops, by_both = spaces.darts.derive(theta), spaces.darts.derive(folded)
    assert {src for _, src in by_ops.normal[2:4]} == {0, 1}
    assert {src for _, src in by_both.normal[2:4]} == {1, 2}  # γθ: 0.05, 0.18, 0.135
