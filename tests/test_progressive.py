"""DrNAS' progressive search (Chen et al., ICLR 2021): the schedule, pruning (a pruned op is gone for good: it
never runs on either path, and the distribution gives it exactly 0), widening (the old weights carried into
the leading channels), the optimiser state carried along, and a checkpoint round trip at stage 2."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_supernet import _count_calls  # the call counter the supernet tests use
from torch import nn

from vnas import objectives, spaces
from vnas.posteriors import METHODS, build_posterior, keep_top_k
from vnas.spaces.darts_net import DartsSupernet
from vnas.supernet import (
    MixedOp,
    ProgressiveSchedule,
    Pruned,
    Stage,
    carry_optimizer_state,
    channel_shuffle,
    edge_key,
    fold_edge_weights,
)

DARTS_OPS = spaces.darts.PRIMITIVES
NB201_OPS = spaces.nb201.PRIMITIVES
LEARNED = [m for m, entry in METHODS.items() if entry.trained]
DARTS_SHAPES = {"normal": (14, 8), "reduce": (14, 8)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _leaves(module):
    return [m for m in module.modules() if not list(m.children())]


def _random_keep(shapes, k, generator):
    """Per cell type a mask keeping k random ops per edge."""
    return {c: keep_top_k(torch.rand(*s, generator=generator), k) for c, s in shapes.items()}


# ---- the schedule -----------------------------------------------------------------------------------

def test_drnas_schedule_stages_epochs_and_architecture_updates():
    s = ProgressiveSchedule([[6, 7, 25], [4, 4, 25]], arch_start=10)
    assert s.epochs == 50 and s.stages == (Stage(6, 7, 25), Stage(4, 4, 25))
    assert [s.stage_of(e) for e in (0, 24, 25, 49, 50)] == [0, 0, 1, 1, 1]
    assert [s.epoch_in_stage(e) for e in (0, 9, 10, 24, 25, 34, 35, 49)] == [0, 9, 10, 24, 0, 9, 10, 24]
    # α updates from epoch 10 of each stage: the new (pruned, wider) ops get 10 epochs of weights only
    assert [e for e in range(50) if s.updates_architecture(e)] == [*range(10, 25), *range(35, 50)]
    assert [e for e in range(51) if s.starts_stage(e)] == [25]
    s.check(36, DARTS_OPS)  # C=36: 36/6 = 6, then 36/4 = 9 channels through the ops of the first cells
    keep = s.initial_keep(DARTS_SHAPES, DARTS_OPS)  # DrNAS' DARTS space has 7 ops: DARTS' 8 but 'none'
    for mask in keep.values():
        assert mask.shape == (14, 8) and mask.dtype == torch.bool
        assert not mask[:, DARTS_OPS.index("none")].any() and int(mask.sum()) == 14 * 7
    assert ProgressiveSchedule([[4, 5, 3], [2, 3, 3]], 1).initial_keep({"cell": (6, 5)}, NB201_OPS) is None
    assert ProgressiveSchedule([Stage(1, 8, 2)], 0).stage_of(1) == 0


@pytest.mark.parametrize("stages, arch_start, message", [
    ([], 10, "non-empty list"),
    ("6,7,25", 10, "non-empty list"),
    ([[6, 7]], 0, "three integers"),
    ([[6, 0, 25]], 0, "keeping 0 ops"),
    ([[6, 7, 25.0]], 0, "three integers"),
    ([[6, 4, 25], [4, 5, 25]], 10, "stage 2 keeps 5 ops .* stage 1 keeps only 4: pruned ops cannot come back"),
    ([[4, 7, 25], [6, 4, 25]], 10, "only widens"),
    ([[6, 7, 25], [4, 4, 8]], 10, "leaves stage 2 .* without an architecture update"),
    ([[6, 7, 25]], -1, "arch_start"),
])
def test_schedule_rejects_bad_stages(stages, arch_start, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveSchedule(stages, arch_start)


def test_schedule_checks_channels_and_ops_of_the_space():
    with pytest.raises(ValueError, match=r"stage 1: partial_channels=5 does not divide C=36 .* 1, 2, 3, 4, 6, 9"):
        ProgressiveSchedule([[5, 7, 25]], 10).check(36, DARTS_OPS)
    with pytest.raises(ValueError, match="stage 2: partial_channels=8 does not divide C=36"):
        ProgressiveSchedule([[12, 7, 25], [8, 4, 25]], 10).check(36, DARTS_OPS)
    with pytest.raises(ValueError, match="keeps 9 ops per edge; the space has 8"):
        ProgressiveSchedule([[6, 9, 25]], 10).check(36, DARTS_OPS)
    with pytest.raises(ValueError, match="all 8 or the 7 without 'none'"):
        ProgressiveSchedule([[6, 6, 25]], 10).check(36, DARTS_OPS)
    with pytest.raises(ValueError, match="all 5 or the 4 without 'none'"):
        ProgressiveSchedule([[4, 3, 25]], 10).initial_keep({"cell": (6, 5)}, NB201_OPS)
    with pytest.raises(ValueError, match="epoch"):
        ProgressiveSchedule([[6, 7, 25]], 10).stage_of(-1)


# ---- pruning a mixed op ---------------------------------------------------------------------------

@pytest.mark.parametrize("partial_channels", [1, 2])
def test_pruned_ops_never_run_and_the_edge_is_the_sum_over_the_kept_ones(partial_channels):
    m = MixedOp(4, 1, DARTS_OPS, partial_channels=partial_channels).double()
    ops = list(m.ops)  # the modules as built, before pruning
    keep = [name in ("none", "max_pool_3x3", "sep_conv_3x3", "dil_conv_5x5") for name in DARTS_OPS]
    m.prune(keep)
    assert [isinstance(op, Pruned) for op in m.ops] == [not k for k in keep]
    assert all(m.ops[o] is ops[o] for o in range(len(keep)) if keep[o])
    assert m.runnable == tuple(k and name != "none" for k, name in zip(keep, DARTS_OPS, strict=True))
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    # weights on pruned ops too: they must be ignored (the distribution gives them 0; nothing runs them)
    theta = torch.softmax(torch.randn(len(DARTS_OPS), dtype=torch.float64), 0)
    xs = x[:, :4 // partial_channels]
    mixed = sum(theta[o] * ops[o](xs) for o in range(len(keep)) if keep[o])
    expected = mixed if partial_channels == 1 else channel_shuffle(torch.cat([mixed, x[:, 4 // partial_channels:]], 1),
                                                                   partial_channels)
    leaves = [leaf for op in ops for leaf in _leaves(op)]
    owner = [o for o, op in enumerate(ops) for _ in _leaves(op)]
    for fused, active in ((True, None), (True, [True] * len(DARTS_OPS)), (False, None)):
        m.fused = fused
        counts, handles = _count_calls(leaves)
        out = m(x, theta, active)
        for h in handles:
            h.remove()
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        ran = {owner[i] for i, n in enumerate(counts) if n}
        assert all(keep[o] for o in ran), f"fused={fused}: a pruned op ran"
        real = {o for o, k in enumerate(keep) if k and DARTS_OPS[o] != "none"}
        assert {o for o in ran if DARTS_OPS[o] != "none"} == real  # and every kept op did run
    with pytest.raises(RuntimeError, match="pruned"):
        m.ops[DARTS_OPS.index("avg_pool_3x3")](x)


def test_prune_rejects_bad_masks():
    m = MixedOp(4, 1, DARTS_OPS)
    with pytest.raises(ValueError, match="at least one op"):
        m.prune([False] * 8)
    with pytest.raises(ValueError, match="7 entries; this edge has 8 ops"):
        m.prune([True] * 7)
    m.prune([o < 4 for o in range(8)])
    with pytest.raises(ValueError, match=r"asks for \['sep_conv_3x3'\], pruned at an earlier stage"):
        m.prune([o < 5 for o in range(8)])


# ---- widening -------------------------------------------------------------------------------------

def test_widen_copies_the_old_weights_into_the_leading_channels():
    m = MixedOp(12, 1, DARTS_OPS, partial_channels=4)
    m.prune([name != "avg_pool_3x3" for name in DARTS_OPS])
    m.train()
    m(torch.randn(4, 12, 6, 6), torch.full((8,), 1 / 8))  # BN running statistics worth carrying
    old = {name: t.clone() for name, t in m.state_dict().items()}
    old_params = dict(m.named_parameters())
    carried = m.widen(2)
    assert m.k == 2 and m.C_op == 6
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert convs and all(c.out_channels == 6 and c.in_channels in (1, 6) for c in convs)
    for name, t in m.state_dict().items():
        src = old[name]
        if t.dim() == 0:
            assert t == src, name
            continue
        assert all(n >= s for n, s in zip(t.shape, src.shape, strict=True)), name
        torch.testing.assert_close(t[tuple(slice(0, s) for s in src.shape)], src, rtol=0, atol=0)
    # every new parameter knows the old one it came from, for the optimiser state
    assert set(carried) == set(m.parameters())
    assert all(old_params[n] is carried[p] for n, p in m.named_parameters())
    assert isinstance(m.ops[DARTS_OPS.index("avg_pool_3x3")], Pruned)
    out = m(torch.randn(2, 12, 6, 6), torch.full((8,), 1 / 8))
    assert out.shape == (2, 12, 6, 6)
    assert m.widen(2) == {}  # the same K: nothing to do
    with pytest.raises(ValueError, match="partial_channels=5 must divide the 12 channels"):
        m.widen(5)
    with pytest.raises(ValueError, match="can only shrink"):
        m.widen(3)


def test_widened_reduction_edge_runs_with_its_bypass_on_both_paths():
    m = MixedOp(8, 2, DARTS_OPS, partial_channels=4).double()
    m.prune([name in ("none", "max_pool_3x3", "skip_connect", "sep_conv_5x5") for name in DARTS_OPS])
    m.widen(2)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    theta = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    outs = []
    for fused in (True, False):
        m.fused = fused
        outs.append(m(x, theta))
    assert outs[0].shape == (2, 8, 3, 3)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)


def test_carry_optimizer_state_moves_momentum_into_the_leading_block():
    m = MixedOp(8, 1, DARTS_OPS, partial_channels=4)
    m.prune([name in ("skip_connect", "sep_conv_3x3", "dil_conv_3x3") for name in DARTS_OPS])
    outer = nn.Conv2d(3, 8, 1)  # a parameter that widening leaves alone
    old = torch.optim.SGD([*outer.parameters(), *m.parameters()], lr=0.1, momentum=0.9)
    (m(outer(torch.randn(2, 3, 5, 5)), torch.full((8,), 1 / 8)).square().sum()).backward()
    old.step()
    before = {p: old.state[p]["momentum_buffer"].clone() for p in m.parameters()}
    outer_buf = old.state[outer.weight]["momentum_buffer"].clone()
    carried = m.widen(2)
    new = torch.optim.SGD([*outer.parameters(), *m.parameters()], lr=0.1, momentum=0.9)
    carry_optimizer_state(old, new, carried)
    torch.testing.assert_close(new.state[outer.weight]["momentum_buffer"], outer_buf, rtol=0, atol=0)
    for p in m.parameters():
        buf, src = new.state[p]["momentum_buffer"], before[carried[p]]
        assert buf.shape == p.shape
        lead = tuple(slice(0, s) for s in src.shape)
        torch.testing.assert_close(buf[lead], src, rtol=0, atol=0)
        rest = buf.clone()
        rest[lead] = 0
        assert torch.count_nonzero(rest) == 0


# ---- the supernet at a stage ----------------------------------------------------------------------

def _run_both_paths(net, theta, x):
    out = {}
    for fused in (True, False):
        net.fused = fused
        leaves = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
        logits = net(x, leaves)
        params = list(net.parameters())
        grads = torch.autograd.grad(logits.square().sum(), list(leaves.values()) + params, allow_unused=True)
        out[fused] = (logits.detach(), grads)
    net.fused = True
    return out[True], out[False]


@pytest.mark.parametrize("space,kw", [("darts", dict(C=8, layers=3)), ("nb201", dict(C=8, layers=1))],
                         ids=["darts", "nb201"])
@pytest.mark.parametrize("edge_norm", [False, True], ids=["plain", "edge_norm"])
def test_fused_path_is_the_plain_equation_after_pruning_and_widening(space, kw, edge_norm):
    sp = spaces.get_space(space)
    net = sp.build_supernet(partial_channels=4, **kw).double().to(memory_format=torch.channels_last)
    q = build_posterior("drnas", space, edge_norm=edge_norm).double()
    keep = _random_keep(net.shapes, 3, torch.Generator().manual_seed(1))
    q.prune(keep)
    net.set_stage(keep, 2)
    assert {m.k for _, _, m in net.mixed_ops()} == {2}
    assert all(isinstance(op, Pruned) == (not keep[kind][e, o]) for kind, e, o, op in net.edge_ops())
    theta = q.sample()
    assert all(torch.all(theta[c][~keep[c]] == 0) for c in net.shapes)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    (lf, gf), (lp, gp) = _run_both_paths(net, theta, x)
    torch.testing.assert_close(lf, lp, rtol=1e-10, atol=1e-12)
    for a, b in zip(gf, gp, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in net.parameters())  # autograd.grad only


def test_set_stage_checks_everything_before_it_changes_anything():
    net = DartsSupernet(C=8, layers=3, partial_channels=4)
    params = list(net.parameters())
    keep = _random_keep(net.shapes, 4, torch.Generator().manual_seed(2))
    bad = {k: v.clone() for k, v in keep.items()}
    bad["reduce"][5] = False  # the last edge checked would fail after the others had been pruned
    with pytest.raises(ValueError, match=r"Cell type 'reduce', edge 5: keep must keep at least one op"):
        net.set_stage(bad, 2)
    with pytest.raises(ValueError, match="partial_channels=3 must divide the 8 channels"):
        net.set_stage(keep, 3)
    with pytest.raises(ValueError, match="can only shrink"):
        net.set_stage(keep, 8)
    with pytest.raises(ValueError, match=r"keep\['normal'\] must be a boolean tensor of shape \(14, 8\)"):
        net.set_stage({**keep, "normal": keep["normal"].float()}, 2)
    with pytest.raises(ValueError, match="one boolean mask per cell type"):
        net.set_stage({"normal": keep["normal"]}, 2)
    assert list(net.parameters()) == params and all(all(m.kept) and m.k == 4 for _, _, m in net.mixed_ops())
    net.set_stage(keep, 2)
    smaller = {k: keep_top_k(torch.rand(14, 8), 2, v) for k, v in keep.items()}
    net.set_stage(smaller, 2)  # pruning again at the same K
    with pytest.raises(ValueError, match="pruned at an earlier stage"):
        net.set_stage(keep, 1)
    assert net.stage() == {"partial_channels": 2, "keep": {k: v.tolist() for k, v in smaller.items()}}


# ---- the distribution over the kept ops -----------------------------------------------------------

@pytest.mark.parametrize("method", LEARNED)
def test_pruned_distribution_is_exactly_zero_there_and_renormalised(method):
    q = build_posterior(method, "darts")
    with torch.no_grad():
        for a in q.alphas.values():
            a.normal_()
    keep = q.top_k_keep(4)
    q.prune(keep)
    for theta in (q.sample(), q.mean()):
        for c in q.cell_types:
            assert torch.all(theta[c][~keep[c]] == 0) and torch.all(theta[c][keep[c]] >= 0)
            torch.testing.assert_close(theta[c].sum(-1), torch.ones(14))
    for c, a in q.alphas.items():  # the mean is the full mean renormalised over the kept ops
        full = q._mean(a) if method in ("darts", "snas", "gdas") else F.elu(a) + 1
        kept = torch.where(keep[c], full, torch.zeros(()))
        torch.testing.assert_close(q.mean()[c], kept / kept.sum(-1, keepdim=True))
    if method == "gdas":  # one-hot samples land on kept ops only
        for _ in range(50):
            theta = q.sample()
            assert all(bool(keep[c][torch.arange(14), theta[c].argmax(-1)].all()) for c in q.cell_types)
    cost = {c: torch.randn(14, 8) for c in q.cell_types}
    sum((q.sample()[c] * cost[c]).sum() for c in q.cell_types).backward()
    for c, a in q.alphas.items():
        assert torch.all(a.grad[~keep[c]] == 0), "a pruned op's parameter got a gradient"
        assert torch.any(a.grad[keep[c]] != 0)
    assert q.edge_stats()["normal"]["mean"][0].count(0.0) == 4


def test_pruned_dirichlet_is_the_dirichlet_of_the_kept_ops():
    q = build_posterior("variational", "nb201", c0=0.7)
    with torch.no_grad():
        q.alphas["cell"].copy_(torch.randn(6, 5))
    keep = keep_top_k(torch.rand(6, 5), 3)
    q.prune({"cell": keep})
    beta = (F.elu(q.alphas["cell"].detach()) + 1)[keep].view(6, 3).double()  # every edge keeps 3
    dist = torch.distributions.Dirichlet(beta)
    n = 20_000
    x = torch.stack([q.sample()["cell"].detach()[keep].view(6, 3) for _ in range(n)]).double()
    b0 = beta.sum(-1, keepdim=True)
    mean, var = beta / b0, beta * (b0 - beta) / (b0 ** 2 * (b0 + 1))
    assert torch.all((x.mean(0) - mean).abs() < 4.5 * (var / n).sqrt())
    kl = torch.distributions.kl_divergence(dist, torch.distributions.Dirichlet(torch.full_like(beta, 0.7)))
    torch.testing.assert_close(q.structure_kl()["cell"].double(), kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.entropy()["cell"].double(), dist.entropy(), rtol=1e-5, atol=1e-5)
    theta = q.sample()
    torch.testing.assert_close(q.log_prob(theta)["cell"].double(),
                               dist.log_prob(theta["cell"].detach()[keep].view(6, 3).double()), rtol=1e-4, atol=1e-4)
    stats = q.edge_stats()["cell"]
    torch.testing.assert_close(torch.tensor(stats["concentration"]).double(), beta.sum(-1), rtol=1e-6, atol=1e-6)
    q.structure_kl()["cell"].sum().backward()
    assert torch.all(q.alphas["cell"].grad[~keep] == 0)


def test_top_k_keep_ranks_by_the_mean_weight_among_the_kept_ops():
    q = build_posterior("darts", "nb201")
    with torch.no_grad():
        q.alphas["cell"].copy_(torch.tensor([[0.0, 3.0, 2.0, 1.0, 4.0]] * 6))
        q.alphas["cell"][0] = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])  # ties go to the lower index
    keep = q.top_k_keep(3)["cell"]
    assert keep[1].tolist() == [False, True, True, False, True]
    assert keep[0].tolist() == [True, True, False, True, False]
    q.prune({"cell": keep})
    with torch.no_grad():  # a pruned op, however strong now, is never kept again
        q.alphas["cell"][1, 0] = 10.0
    assert q.top_k_keep(2)["cell"][1].tolist() == [False, True, False, False, True]
    with pytest.raises(ValueError, match="Cannot keep 4 ops per edge: keep between 1 and 3"):
        q.top_k_keep(4)
    with pytest.raises(ValueError, match="Cannot keep 0 ops"):
        keep_top_k(torch.rand(6, 5), 0)


def test_posterior_prune_rejects_bad_masks():
    q = build_posterior("drnas", "darts")
    keep = _random_keep(DARTS_SHAPES, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one boolean .* mask per cell type normal, reduce"):
        q.prune({"normal": keep["normal"]})
    with pytest.raises(ValueError, match=r"keep\['reduce'\] must be a boolean tensor of shape \(14, 8\)"):
        q.prune({**keep, "reduce": keep["reduce"][:, :5]})
    empty = keep["normal"].clone()
    empty[3] = False
    with pytest.raises(ValueError, match=r"keep\['normal'\] keeps no op on edge 3"):
        q.prune({**keep, "normal": empty})
    q.prune(keep)
    with pytest.raises(ValueError, match="cannot come back"):
        q.prune({c: torch.ones(14, 8, dtype=torch.bool) for c in keep})
    with pytest.raises(ValueError, match="needs a learned distribution"):
        build_posterior("random_ws", "darts").prune(keep)


# ---- checkpoint round trip at stage 2 -------------------------------------------------------------

def _stage_one():
    """What a search builds at the start: the supernet and distribution of stage 1 (all but 'none', K=4)."""
    torch.manual_seed(1)
    net = DartsSupernet(C=8, layers=3, partial_channels=4)
    q = build_posterior("drnas", "darts", edge_norm=True)
    schedule = ProgressiveSchedule([[4, 7, 2], [2, 4, 2]], arch_start=1)
    initial = schedule.initial_keep(net.shapes, net.primitives)
    q.prune(initial)
    net.set_stage(initial, schedule.stages[0].partial_channels)
    return net, q, schedule


def test_stage_two_survives_a_checkpoint_round_trip():
    net, q, schedule = _stage_one()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():  # as if stage 1 had trained: other α, β and weights, BN statistics that moved
        for p in q.parameters():
            p.normal_()
    net.train()
    net(x, q.sample())
    keep = q.top_k_keep(schedule.stages[1].ops)
    q.prune(keep)
    net.set_stage(keep, schedule.stages[1].partial_channels)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net(x, q.sample())
    record = json.loads(json.dumps(net.stage()))  # what a checkpoint stores next to the state dicts
    saved = {"supernet": net.state_dict(), "posterior": q.state_dict()}

    fresh, q_fresh, _ = _stage_one()
    with pytest.raises(RuntimeError, match="size mismatch|Unexpected key"):
        fresh.load_state_dict(saved["supernet"])  # a stage-1 construction cannot hold a stage-2 state ...
    with pytest.raises(RuntimeError, match="op_keep"):
        build_posterior("drnas", "darts", edge_norm=True).load_state_dict(saved["posterior"])
    fresh, q_fresh, _ = _stage_one()
    fresh.set_stage(record["keep"], record["partial_channels"])  # ... until it is moved to the recorded stage
    q_fresh.prune({c: torch.tensor(v) for c, v in record["keep"].items()})
    fresh.load_state_dict(saved["supernet"])
    q_fresh.load_state_dict(saved["posterior"])
    assert fresh.state_dict().keys() == saved["supernet"].keys()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved["supernet"][k]), k
    mean, mean_fresh = q.mean(), q_fresh.mean()
    assert mean.keys() == mean_fresh.keys() and edge_key("normal") in mean
    assert all(torch.equal(mean[k], mean_fresh[k]) for k in mean)
    net.eval()
    fresh.eval()
    assert torch.equal(net(x, mean), fresh(x, mean_fresh))
    torch.manual_seed(5)
    a = q.sample()
    torch.manual_seed(5)
    b = q_fresh.sample()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- a whole (tiny) progressive search, wired as vnas/search.py will wire it ---------------------

def test_a_tiny_progressive_search_prunes_widens_and_keeps_training():
    net, q, schedule = _stage_one()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    arch_opt = torch.optim.Adam(q.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
    alpha_at = {-1: q.alphas["normal"].detach().clone()}
    for epoch in range(schedule.epochs):
        if schedule.starts_stage(epoch):
            stage = schedule.stages[schedule.stage_of(epoch)]
            keep = q.top_k_keep(stage.ops)
            q.prune(keep)
            carried = net.set_stage(keep, stage.partial_channels)
            new = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            carry_optimizer_state(opt, new, carried)
            opt = new
            assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in net.parameters()}
        if schedule.updates_architecture(epoch):
            arch_opt.zero_grad()
            theta = q.sample()
            grad, nll = objectives.first_order_gradient(net, theta, batch)
            (objectives.pullback(theta, grad) + sum(q.regularisers().values())).backward()
            assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in q.edge_betas.values())
            arch_opt.step()
        alpha_at[epoch] = q.alphas["normal"].detach().clone()
        opt.zero_grad()
        with torch.no_grad():
            theta = q.sample()
        F.cross_entropy(net(*batch[:1], theta), batch[1]).backward()
        opt.step()
    # arch_start = 1: epoch 0 of each stage (epochs 0 and 2) trains the weights only
    assert torch.equal(alpha_at[0], alpha_at[-1]) and not torch.equal(alpha_at[1], alpha_at[0])
    assert torch.equal(alpha_at[2], alpha_at[1]) and not torch.equal(alpha_at[3], alpha_at[2])
    assert all(sum(m.kept) == 4 and m.k == 2 for _, _, m in net.mixed_ops())
    genotype = spaces.darts.derive(fold_edge_weights({k: v.detach() for k, v in q.mean().items()}))
    for c in q.cell_types:  # the cell is made of kept ops only
        for i, (op, src) in enumerate(getattr(genotype, c)):
            e = spaces.darts.EDGES.index((src, spaces.darts.NODES[i // 2]))
            assert q._keep(c)[e, DARTS_OPS.index(op)], (c, i, op)
