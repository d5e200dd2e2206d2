"""Search supernets: every edge carries every op, mixed by weights θ that come from outside.

An edge (i, j) computes the mixed op  ō(x_i) = Σ_o θ_o · o(x_i)  (DARTS Eq. 2; chapter 02, Eq. (2.2)),
and node j is the sum of its incoming edges, Eq. (2.1). The mixing weights θ (a softmax of α, a Gumbel or
Dirichlet sample, a one-hot genotype) are an *argument* of ``forward``, so the supernet holds only
network weights: ``supernet.parameters()`` is exactly what the weight optimiser trains.

Search protocol (DARTS): BN without affine parameters, pooling followed by BN(affine=False). NB201 keeps
its own protocol: no BN after pooling. ``partial_channels=K`` (PC-DARTS, Xu et al., ICLR 2020) sends only
C/K channels through each mixed op; the rest bypass it, then the channels are shuffled. PC-DARTS' *edge
normalisation* weighs every edge (i, j) by γ_ij = softmax over node j's incoming edges of β_ij: node j is
Σ_i γ_ij · ō_ij(x_i), the whole edge output (bypassed channels included) scaled by γ_ij. The γ come, like θ,
from outside: as the optional entries ``theta[edge_key(cell type)]`` (one weight per edge), which the
learned distributions add when ``edge_norm`` is on.

DrNAS' progressive search (Chen et al., ICLR 2021) grows the ops as it prunes them: at a stage boundary
each edge keeps its strongest ops (``set_stage(keep, partial_channels)``: the others are removed and never
run again) and the kept ops are rebuilt wider (C/K channels with a smaller K). ``ProgressiveSchedule`` says
which stage an epoch is in.

Two paths compute the same function, selected as nanoGPT selects its attention: ``fused`` (the
default) and, under it, the plain equation (``supernet.fused = False``), which the chapters teach from
and the tests compare against. The fused path does less work:
- ``none`` is never run (it adds 0), nor an op whose weight is exactly 0.0 when the caller passes
  ``active`` (``supernet.active(θ)``: one-hot and straight-through weights then cost one op per edge);
  a skipped op also gets no gradient with respect to its (zero) weight;
- relu(x_i) is computed once per node i for all the ops on all its outgoing edges that start with a ReLU;
- an op that ends in BN(affine=False) is scaled by its weight inside that BN (θ · BN(z) is BN(z) with
  scale θ): the product costs no extra pass over memory, forward or backward.
Neither path reads a tensor back to the host during a forward pass.

The cells and the network skeletons of each space live with the space (``vnas.spaces.darts_net``,
``vnas.spaces.nb201_net``); build a supernet with ``vnas.spaces.get_space(name).build_supernet(...)``.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas.ops import OPS


def scaled_bn(bn: nn.BatchNorm2d, z: Tensor, scale: Tensor) -> Tensor:
    """``scale * bn(z)`` for a BN without affine parameters, computed as one BN whose scale is ``scale``.

    Same running statistics as ``bn(z)``. Introduced in chapters/02_darts.py, Eq. (2.2).
    """
    batch_stats = bn.training or bn.running_mean is None
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    dtype = bn.running_mean.dtype if bn.running_mean is not None else z.dtype
    # a real vector, not expand(): torch 2.14's CPU BN backward misreads a stride-0 weight in channels_last
    weight = scale.to(dtype).expand(z.shape[1]).contiguous()
    return F.batch_norm(z, bn.running_mean, bn.running_var, weight, None, batch_stats,
                        momentum if bn.training else 0.0, bn.eps)


def add_all(terms: list[Tensor]) -> Tensor:
    """``terms[0] + terms[1] + ...``, accumulated in place into ``terms[0]`` (a fresh tensor that no backward
    needs): no new tensor per addition. Introduced in chapters/02_darts.py."""
    out = terms[0]
    for t in terms[1:]:
        out += t
    return out


def _zeros(x: Tensor, C: int, stride: int) -> Tensor:
    n, _, h, w = x.shape
    return x.new_zeros(n, C, (h + stride - 1) // stride, (w + stride - 1) // stride)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal blocks (ShuffleNet), so that PC-DARTS sends other
    channels through the next edge. Introduced in chapters/02_darts.py."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)  # keeps x's memory layout (channels_last stays channels_last)
    out.view(n, c // groups, groups, h, w).copy_(x.view(n, groups, c // groups, h, w).transpose(1, 2))
    return out


def _ends_in_bn(op: nn.Module) -> bool:
    """Whether ``op`` is a Sequential that ends in a BN without affine parameters."""
    return isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d) and not op[-1].affine


class Pruned(nn.Module):
    """The place of an op that a progressive search has pruned: it holds no weights and must never run.

    It keeps the op's index, so that θ keeps one column per op of the space and a state dict keeps its keys.
    Introduced in chapters/06_full_search.py."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        raise RuntimeError(f"op {self.name!r} was pruned from this edge; a pruned op never runs.")

    def extra_repr(self):
        return repr(self.name)


def _leading(t: Tensor, shape) -> Tensor:
    """The leading block ``t[:shape[0], :shape[1], ...]`` of ``t`` (a view)."""
    return t[tuple(slice(0, n) for n in shape)]


def _copy_leading(old: nn.Module, new: nn.Module) -> dict[nn.Parameter, nn.Parameter]:
    """Copy every parameter and buffer of ``old`` into the leading block of ``new``'s (same names, each
    dimension at least as large); returns {new parameter: old parameter}."""
    old_state, new_state = old.state_dict(), new.state_dict()
    if old_state.keys() != new_state.keys():
        raise ValueError(f"Cannot widen {type(old).__name__}: its layers are not those it was built with "
                         f"({sorted(old_state)} vs {sorted(new_state)}); widen before replacing layers "
                         f"(vnas.bayes.make_bayesian).")
    with torch.no_grad():
        for name, t in new_state.items():  # state_dict tensors share storage with the module's
            src = old_state[name]
            (t if t.dim() == 0 else _leading(t, src.shape)).copy_(src)
    old_params = dict(old.named_parameters())
    return {p: old_params[name] for name, p in new.named_parameters()}


def _memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last if a 4-d weight of ``module`` is laid out that way (and not also contiguous: 1x1 and
    depthwise filters are both), else the default format."""
    for p in module.parameters():
        if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format


def _check_partial_channels(k, C: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"partial_channels must be an integer >= 1, got {k!r}.")
    if C % k:
        divisors = [d for d in range(1, C + 1) if C % d == 0]
        raise ValueError(f"partial_channels={k} must divide the {C} channels of the edge; divisors of {C}: "
                         f"{', '.join(map(str, divisors))}.")
    return k


class MixedOp(nn.Module):
    """One edge of the supernet: ``forward(x, theta) = Σ_o θ_o · o(x)`` over the ops of ``primitives``.

    ``theta`` is a vector on the simplex, one entry per op. With ``partial_channels=K`` only the first
    C/K channels go through the ops (PC-DARTS). ``fused`` selects the fast path (see the module
    docstring); with ``fused = False`` forward is DARTS' one-line mixed op. ``edge_weight`` (PC-DARTS'
    γ_ij, a 0-d tensor) scales the whole output, the bypassed channels included.

    A progressive search (DrNAS) changes an edge between stages: ``prune(keep)`` removes ops for good
    (their θ entries are ignored and they never run, on either path) and ``widen(K)`` rebuilds the kept ops
    on C/K channels. Introduced in chapters/02_darts.py, Eq. (2.2).
    """

    def __init__(self, C: int, stride: int, primitives, pool_bn: bool = True, partial_channels: int = 1):
        super().__init__()
        _check_partial_channels(partial_channels, C)
        self.primitives, self.stride, self.k = tuple(primitives), stride, partial_channels
        self.C, self.C_op, self.pool_bn = C, C // partial_channels, pool_bn
        self.fused = True
        self.kept = (True,) * len(self.primitives)  # False: pruned by a progressive search
        self.ops = nn.ModuleList(self._make_op(name, self.C_op) for name in self.primitives)
        self._refresh()
        if partial_channels > 1 and stride == 2:
            self.bypass = nn.MaxPool2d(2, 2)

    def _make_op(self, name: str, C_op: int) -> nn.Module:
        op = OPS[name](C_op, self.stride, False)
        if self.pool_bn and "pool" in name:  # DARTS: pooling has no scale of its own; BN gives it one
            op = nn.Sequential(op, nn.BatchNorm2d(C_op, affine=False))
        return op

    def _refresh(self) -> None:
        """The per-op flags of the fused path, after the ops were built, pruned or rebuilt."""
        self.runnable = tuple(name != "none" and kept for name, kept in zip(self.primitives, self.kept, strict=True))
        self.pre_relu = tuple(hasattr(op, "from_relu") for op in self.ops)
        # an op ending in BN(affine=False) takes its weight as that BN's scale; its layers are read from
        # self.ops at every call, so a layer swapped in later (vnas.bayes.make_bayesian) is the one that runs
        self.ends_in_bn = tuple(_ends_in_bn(op) for op in self.ops)

    def check_stage(self, keep, partial_channels: int) -> tuple[bool, ...]:
        """``keep`` as a tuple of bools, or a ValueError if this edge cannot move to that stage (nothing kept,
        a pruned op kept again, a K that does not divide its channels or grows). Changes nothing."""
        keep = tuple(bool(k) for k in keep)
        if len(keep) != len(self.primitives):
            raise ValueError(f"keep has {len(keep)} entries; this edge has {len(self.primitives)} ops "
                             f"({', '.join(self.primitives)}).")
        if not any(keep):
            raise ValueError("keep must keep at least one op on every edge.")
        back = [name for name, k, was in zip(self.primitives, keep, self.kept, strict=True) if k and not was]
        if back:
            raise ValueError(f"keep asks for {back}, pruned at an earlier stage: a pruned op cannot come back "
                             f"(its weights are gone).")
        _check_partial_channels(partial_channels, self.C)
        if partial_channels > self.k:
            raise ValueError(f"partial_channels can only shrink between stages (the ops get wider): "
                             f"{self.k} -> {partial_channels}.")
        return keep

    def prune(self, keep) -> None:
        """Remove the ops with ``keep[o]`` False from this edge: each is replaced by a ``Pruned`` placeholder
        (no weights), and neither path runs it again. Introduced in chapters/06_full_search.py."""
        keep = self.check_stage(keep, self.k)
        for o, (k, name) in enumerate(zip(keep, self.primitives, strict=True)):
            if not k and self.kept[o]:
                self.ops[o] = Pruned(name)
        self.kept = keep
        self._refresh()

    def widen(self, partial_channels: int, memory_format: torch.memory_format | None = None
              ) -> dict[nn.Parameter, nn.Parameter]:
        """Rebuild the kept ops on C/K channels, K = ``partial_channels`` (<= the current K).

        Each new op starts as a freshly built one (PyTorch's default initialisation), then the old op's
        weights and BN statistics are copied into its leading block: the first C/K_old input and output
        channels. Copied rather than re-initialised: the op keeps reading its old channels first (the slice
        x[:, :C/K] only grows), and the architecture distribution was learned together with these weights,
        so throwing away a stage of training would make its ranking of the ops stale. DrNAS also carries
        the weights over (Net2Net-style, duplicating random channels); a leading copy needs no record of
        which channel was duplicated where. No widening is function-preserving here: the channel shuffle
        changes with K. Returns {new parameter: old parameter}, for carrying optimiser state
        (``carry_optimizer_state``). Introduced in chapters/06_full_search.py.
        """
        self.check_stage(self.kept, partial_channels)
        if partial_channels == self.k:
            return {}
        fmt = _memory_format(self) if memory_format is None else memory_format
        C_op, carried = self.C // partial_channels, {}
        for o, name in enumerate(self.primitives):
            if not self.kept[o]:
                continue
            old, new = self.ops[o], self._make_op(name, C_op)
            ref = next((t for t in [*old.parameters(), *old.buffers()] if t.is_floating_point()), None)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            carried.update(_copy_leading(old, new))
            self.ops[o] = new.to(memory_format=fmt)
        self.k, self.C_op = partial_channels, C_op
        if partial_channels > 1 and self.stride == 2 and not hasattr(self, "bypass"):
            self.bypass = nn.MaxPool2d(2, 2)
        self._refresh()
        return carried

    def needs_relu(self, active) -> bool:
        """Whether any running op starts with a ReLU. Introduced in chapters/02_darts.py."""
        return any(a and p for a, p in zip(active, self.pre_relu, strict=True))

    def terms(self, x: Tensor, theta: Tensor, active, x_relu: Tensor | None = None) -> list[Tensor]:
        """``[θ_o · o(x) for the running ops o]`` (the fused path); ``x_relu = relu(x)`` if it is already
        computed. Introduced in chapters/02_darts.py, Eq. (2.2).
        """
        if x_relu is None and self.needs_relu(active):
            x_relu = F.relu(x)
        out = []
        for o, run in enumerate(active):
            if not run:
                continue
            op = self.ops[o]
            if not self.ends_in_bn[o]:
                out.append((op.from_relu(x_relu) if self.pre_relu[o] else op(x)) * theta[o])
                continue
            *body, bn = op
            z = x_relu if self.pre_relu[o] else x
            for layer in body:
                z = layer(z)
            out.append(scaled_bn(bn, z, theta[o]))
        return out

    def forward(self, x: Tensor, theta: Tensor, active=None, edge_weight: Tensor | None = None) -> Tensor:
        if theta.shape != (len(self.ops),):
            raise ValueError(f"MixedOp weights have shape {tuple(theta.shape)}; expected ({len(self.ops)},): "
                             f"one per op of {self.primitives}.")
        if self.k > 1:
            x, rest = x[:, :self.C_op], x[:, self.C_op:]
        if self.fused:
            if edge_weight is not None:  # γ Σ_o θ_o o(x) = Σ_o (γ θ_o) o(x): γ rides on the ops' weights
                theta = theta * edge_weight
            if active is None:
                active = self.runnable
            elif not all(self.kept):  # a pruned op never runs, whatever its weight
                active = [a and k for a, k in zip(active, self.kept, strict=True)]
            terms = self.terms(x, theta, active)
            out = add_all(terms) if terms else _zeros(x, self.C_op, self.stride)
        else:  # the equation itself (DARTS' MixedOp.forward), over the ops not pruned
            out = sum(t * op(x) for t, op, kept in zip(theta, self.ops, self.kept, strict=True) if kept)
            if edge_weight is not None:
                out = edge_weight * out
        if self.k > 1:
            rest = self.bypass(rest) if self.stride == 2 else rest
            if edge_weight is not None:  # PC-DARTS scales the whole edge, the bypassed channels too
                rest = rest * edge_weight
            out = channel_shuffle(torch.cat([out, rest], dim=1), self.k)
        return out


def run_dag(states: list[Tensor], edges, mixed: nn.ModuleList, theta: Tensor, active=None,
            edge_weights: Tensor | None = None) -> list[Tensor]:
    """Append a cell's intermediate nodes to ``states``: node j = Σ over its edges e = (i, j) of
    ``mixed[e](states[i], theta[e])`` (Eq. (2.1)); ``active[e]`` says which ops of edge e run (None:
    every op but ``none``). With PC-DARTS' edge normalisation, ``edge_weights[e]`` = γ_ij scales edge e:
    node j = Σ_i γ_ij · ō_ij(x_i) (Xu et al., Eq. 4).

    Introduced in chapters/02_darts.py, Eq. (2.1).
    """
    relu = {}  # relu(states[i]), computed at most once per node i
    first = len(states)
    for node in range(first, first + len({dst for _, dst in edges})):
        incoming = [(e, src) for e, (src, dst) in enumerate(edges) if dst == node]
        if not mixed[0].fused:  # the equation itself: x_j = Σ_i ō_(i,j)(x_i), or Σ_i γ_ij ō_(i,j)(x_i)
            if edge_weights is None:
                states.append(sum(mixed[e](states[src], theta[e]) for e, src in incoming))
            else:
                states.append(sum(edge_weights[e] * mixed[e](states[src], theta[e]) for e, src in incoming))
            continue
        terms = []
        for e, src in incoming:
            op = mixed[e]
            run = op.runnable if active is None else active[e]
            if op.k > 1:  # partial channels: every edge adds its bypassed channels, so it mixes on its own
                terms.append(op(states[src], theta[e], run, None if edge_weights is None else edge_weights[e]))
                continue
            if active is not None and not all(op.kept):  # a pruned op never runs, whatever its weight
                run = [a and k for a, k in zip(run, op.kept, strict=True)]
            if src not in relu and op.needs_relu(run):
                relu[src] = F.relu(states[src])
            weights = theta[e] if edge_weights is None else theta[e] * edge_weights[e]  # γ θ_o: into the BN scale
            terms += op.terms(states[src], weights, run, relu.get(src))
        if not terms:  # every incoming op is `none` or weighted 0
            op, src = mixed[incoming[0][0]], incoming[0][1]
            terms = [_zeros(states[src], op.C_op * op.k, op.stride)]
        states.append(add_all(terms))
    return states


# --- what the supernet receives: θ per cell type, and optionally PC-DARTS' edge weights ------------------
# This is the supernet's input format; the distributions (vnas.posteriors) import it from here.

EDGE_SUFFIX = ".edges"


def edge_key(cell_type: str) -> str:
    """The key of a cell type's edge weights γ [E] in θ: ``edge_key("normal") == "normal.edges"``.

    Introduced in chapters/02_darts.py."""
    return cell_type + EDGE_SUFFIX


def is_edge_key(key) -> bool:
    """Whether a key of θ holds edge weights (``edge_key``) rather than a cell type's mixing weights."""
    return isinstance(key, str) and key.endswith(EDGE_SUFFIX)


def fold_edge_weights(theta: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """The weights a genotype is derived from: with edge normalisation, each op weight times its edge's
    weight, γ_ij · θ_ij,o (PC-DARTS), and the edge entries dropped; without edge weights θ itself (the same
    object, untouched). Introduced in chapters/02_darts.py."""
    if not any(is_edge_key(k) for k in theta):
        return theta
    return {k: v * theta[edge_key(k)].unsqueeze(-1) if edge_key(k) in theta else v
            for k, v in theta.items() if not is_edge_key(k)}


def check_theta_shapes(theta, shapes: dict[str, tuple[int, int]], primitives) -> None:
    """Check that ``theta`` has one tensor of the right shape per cell type (no host read), and, if it has
    PC-DARTS edge weights, one vector of E weights per cell type.

    Introduced in chapters/02_darts.py."""
    expected = ", ".join(f"{k!r}: Tensor{list(s)}" for k, s in shapes.items())
    edges = {edge_key(k): (s[0],) for k, s in shapes.items()}
    keys = set(theta) if isinstance(theta, Mapping) else set()
    if not isinstance(theta, Mapping) or not set(shapes) <= keys <= set(shapes) | set(edges):
        got = sorted(theta) if isinstance(theta, Mapping) else type(theta).__name__
        optional = ", ".join(f"{k!r}: Tensor{list(s)}" for k, s in edges.items())
        raise ValueError(f"The supernet needs mixing weights {{{expected}}} (one row per edge, one column "
                         f"per op), and with PC-DARTS edge normalisation also the edge weights {{{optional}}}; "
                         f"got {got}.")
    if keys & set(edges) and not set(edges) <= keys:
        raise ValueError(f"theta has edge weights for {sorted(keys & set(edges))} but not for "
                         f"{sorted(set(edges) - keys)}: edge normalisation weighs the edges of every cell type "
                         f"or of none.")
    for key, shape in shapes.items():
        t = theta[key]
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"theta[{key!r}] has shape {got}; expected {shape}: one row per edge, "
                             f"one column per op ({', '.join(primitives)}).")
    for key in keys & set(edges):
        t = theta[key]
        if not isinstance(t, Tensor) or tuple(t.shape) != edges[key]:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"theta[{key!r}] has shape {got}; expected {edges[key]}: one weight per edge "
                             f"(PC-DARTS edge normalisation: softmax over each node's incoming edges).")


def active_ops(theta: Mapping[str, Tensor], primitives) -> dict[str, list[list[bool]]]:
    """Which ops run for mixing weights θ, per cell type and edge: not ``none``, weight not exactly 0.

    One read back to the host per cell type: call it once per sample, not per forward pass.
    Introduced in chapters/02_darts.py."""
    runnable = [name != "none" for name in primitives]
    return {key: [[r and nz for r, nz in zip(runnable, row, strict=True)] for row in (t != 0).tolist()]
            for key, t in theta.items() if not is_edge_key(key)}


class Supernet:
    """What every search supernet shares (a mixin for the spaces' supernets, which set ``primitives``
    and ``shapes``): which ops a sample runs, the fused/plain switch, and the network at a fixed θ.

    Introduced in chapters/02_darts.py.
    """

    primitives: tuple[str, ...]
    shapes: dict[str, tuple[int, int]]

    def active(self, theta: Mapping[str, Tensor]) -> dict[str, list[list[bool]]]:
        """``active_ops(theta)``: pass it to ``forward`` to skip the ops whose weight is exactly 0."""
        check_theta_shapes(theta, self.shapes, self.primitives)
        return active_ops(theta, self.primitives)

    @property
    def fused(self) -> bool:
        """True: the fast path; False: the plain equation Σ_o θ_o · o(x) on every edge."""
        return all(m.fused for m in self.modules() if isinstance(m, MixedOp))

    @fused.setter
    def fused(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.fused = bool(value)

    def edge_ops(self):
        """Every op of every search cell, as (cell type, edge e, op index o, module): which mixing weight
        θ[cell type][e, o] scales each op's output (a structure-dependent weight prior reads it). A pruned op
        is its ``Pruned`` placeholder, which has no weights."""
        for kind, e, mixed in self.mixed_ops():
            for o, op in enumerate(mixed.ops):
                yield kind, e, o, op

    def mixed_ops(self):
        """Every mixed edge of every search cell, as (cell type, edge e, MixedOp)."""
        for cell in self.modules():
            if isinstance(getattr(cell, "mixed", None), nn.ModuleList):
                for e, mixed in enumerate(cell.mixed):
                    yield cell.kind, e, mixed

    def set_stage(self, keep: Mapping[str, Tensor], partial_channels: int) -> dict[nn.Parameter, nn.Parameter]:
        """Move the supernet to a stage of a progressive search (DrNAS): on every edge of every cell of type c,
        keep the ops with ``keep[c][e, o]`` True (``MixedOp.prune``) and rebuild them on C/K channels,
        K = ``partial_channels`` (``MixedOp.widen``: old weights copied into the leading channels).

        Everything is checked before anything changes. Returns {new parameter: old parameter} for the widened
        ops: the weight optimiser must be rebuilt for ``parameters()`` (``carry_optimizer_state``). A supernet
        at a later stage is restored from a fresh (stage-1) construction by calling ``set_stage`` with the
        recorded ``stage()`` and then ``load_state_dict``. Introduced in chapters/06_full_search.py."""
        if not isinstance(keep, Mapping) or set(keep) != set(self.shapes):
            got = sorted(keep) if isinstance(keep, Mapping) else type(keep).__name__
            raise ValueError(f"keep needs one boolean mask per cell type, {{"
                             f"{', '.join(f'{k!r}: [{s[0]}, {s[1]}]' for k, s in self.shapes.items())}}}; got {got}.")
        masks = {}
        for kind, shape in self.shapes.items():
            m = torch.as_tensor(keep[kind], device="cpu").detach()  # read on the host, whatever the default device
            if tuple(m.shape) != shape or m.dtype != torch.bool:
                raise ValueError(f"keep[{kind!r}] must be a boolean tensor of shape {shape} (one row per edge, "
                                 f"one column per op: {', '.join(self.primitives)}); got {m.dtype} "
                                 f"{tuple(m.shape)}.")
            masks[kind] = m.tolist()
        edges = list(self.mixed_ops())
        for kind, e, mixed in edges:  # all checks first: a bad stage leaves the supernet as it was
            try:
                mixed.check_stage(masks[kind][e], partial_channels)
            except ValueError as err:
                raise ValueError(f"Cell type {kind!r}, edge {e}: {err}") from None
        fmt, carried = _memory_format(self), {}
        for kind, e, mixed in edges:
            mixed.prune(masks[kind][e])
            carried.update(mixed.widen(partial_channels, fmt))
        return carried

    def stage(self) -> dict:
        """The supernet's stage as plain data (JSON-ready): {"partial_channels": K, "keep": {cell type:
        [[bool] * O] * E}}; ``set_stage(**stage)`` rebuilds it on a fresh construction."""
        ks = {mixed.k for _, _, mixed in self.mixed_ops()}
        keep = {kind: [[True] * shape[1] for _ in range(shape[0])] for kind, shape in self.shapes.items()}
        for kind, e, mixed in self.mixed_ops():
            keep[kind][e] = list(mixed.kept)
        if len(ks) != 1:
            raise ValueError(f"The supernet's edges have different partial_channels {sorted(ks)}; a stage has one.")
        return {"partial_channels": ks.pop(), "keep": keep}

    def at(self, theta: Mapping[str, Tensor], active=None) -> FixedArchitecture:
        """This supernet with its mixing weights fixed to ``theta``: a model ``x -> logits``."""
        return FixedArchitecture(self, theta, active)


def carry_optimizer_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer,
                          carried: Mapping[nn.Parameter, nn.Parameter]) -> None:
    """Give ``new`` (an optimiser over the parameters after ``set_stage``) the state ``old`` had: a parameter
    that did not change keeps its state (SGD's momentum buffer, Adam's moments); a widened one
    (``carried[new p] = old p``) gets the old state in its leading block and zeros elsewhere, as its weights
    got the old weights. Introduced in chapters/06_full_search.py."""
    for group in new.param_groups:
        for p in group["params"]:
            source = carried.get(p, p)
            state = old.state.get(source)
            if not state:
                continue
            moved = {}
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == source.shape and value.dim() > 0:
                    grown = torch.zeros_like(p)
                    _leading(grown, value.shape).copy_(value)
                    moved[name] = grown
                else:  # a step count or a scalar
                    moved[name] = value.clone() if torch.is_tensor(value) else value
            new.state[p] = moved


@dataclass(frozen=True)
class Stage:
    """One stage of a progressive search: ``partial_channels`` K (1/K of the channels through the ops),
    ``ops`` kept per edge, ``epochs``. Introduced in chapters/06_full_search.py."""

    partial_channels: int
    ops: int
    epochs: int


class ProgressiveSchedule:
    """DrNAS' progressive search (Chen et al., ICLR 2021): stages of fixed length; at each stage boundary
    every edge keeps its ``ops`` strongest ops and the ops get wider (a smaller K); the architecture is updated
    from epoch ``arch_start`` of each stage on (weights only before, so the new ops warm up). DrNAS in the
    DARTS space: ``ProgressiveSchedule([(6, 7, 25), (4, 4, 25)], arch_start=10)``.

    Pure: epochs in, stage facts out (epochs count from 0). DrNAS' DARTS space has no ``none``: its 7 ops are
    DARTS' 8 without it. So a first stage that keeps one op fewer than the space has drops ``none``
    (``initial_keep``); before any architecture step no weight could say which op to drop.
    Introduced in chapters/06_full_search.py.
    """

    def __init__(self, stages: Sequence, arch_start: int = 10):
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
            raise ValueError(f"stages must be a non-empty list of [partial_channels, ops, epochs], e.g. "
                             f"[[6, 7, 25], [4, 4, 25]]; got {stages!r}.")
        parsed = []
        for i, stage in enumerate(stages, 1):
            values = (stage.partial_channels, stage.ops, stage.epochs) if isinstance(stage, Stage) else stage
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"stage {i} is {stage!r}; a stage is [partial_channels, ops, epochs], three "
                                 f"integers >= 1 (keeping 0 ops would leave an edge without an op).")
            parsed.append(Stage(*values))
        for i, (a, b) in enumerate(zip(parsed, parsed[1:], strict=False), 2):
            if b.ops > a.ops:
                raise ValueError(f"stage {i} keeps {b.ops} ops per edge but stage {i - 1} keeps only {a.ops}: "
                                 f"pruned ops cannot come back.")
            if b.partial_channels > a.partial_channels:
                raise ValueError(f"stage {i} has partial_channels={b.partial_channels} > {a.partial_channels} of "
                                 f"stage {i - 1}: a progressive search only widens the ops (K shrinks).")
        if not isinstance(arch_start, int) or isinstance(arch_start, bool) or arch_start < 0:
            raise ValueError(f"arch_start must be an integer >= 0 (epochs into each stage), got {arch_start!r}.")
        short = [i for i, s in enumerate(parsed, 1) if s.epochs <= arch_start]
        if short:
            raise ValueError(f"arch_start={arch_start} leaves stage {short[0]} ({parsed[short[0] - 1].epochs} "
                             f"epochs) without an architecture update: its pruning would rank the ops by an "
                             f"untrained distribution. Give every stage more than {arch_start} epochs.")
        self.stages, self.arch_start = tuple(parsed), arch_start
        self.starts = tuple(sum(s.epochs for s in parsed[:i]) for i in range(len(parsed)))

    @property
    def epochs(self) -> int:
        """All stages' epochs."""
        return self.starts[-1] + self.stages[-1].epochs

    def stage_of(self, epoch: int) -> int:
        """The (0-based) stage that epoch ``epoch`` (0-based) trains in; the last one from ``epochs`` on."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}.")
        return max(i for i, start in enumerate(self.starts) if start <= epoch)

    def epoch_in_stage(self, epoch: int) -> int:
        """Epochs since the start of ``epoch``'s stage."""
        return epoch - self.starts[self.stage_of(epoch)]

    def updates_architecture(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` has architecture steps: from ``arch_start`` epochs into its stage on."""
        return self.epoch_in_stage(epoch) >= self.arch_start

    def starts_stage(self, epoch: int) -> bool:
        """Whether a later stage begins at ``epoch``: prune and widen before training it."""
        return epoch in self.starts[1:]

    def check(self, channels: int, primitives: Sequence[str]) -> None:
        """A ValueError if a stage's K does not divide ``channels`` (the first cells' C; later cells have 2C
        and 4C) or its op count does not fit the space's ``primitives``."""
        for i, stage in enumerate(self.stages, 1):
            if channels % stage.partial_channels:
                divisors = [d for d in range(1, channels + 1) if channels % d == 0]
                raise ValueError(f"stage {i}: partial_channels={stage.partial_channels} does not divide C={channels} "
                                 f"channels; use one of {', '.join(map(str, divisors))}.")
        self._check_ops(primitives)

    def _check_ops(self, primitives: Sequence[str]) -> None:
        n = len(primitives)
        for i, stage in enumerate(self.stages, 1):
            if stage.ops > n:
                raise ValueError(f"stage {i} keeps {stage.ops} ops per edge; the space has {n} "
                                 f"({', '.join(primitives)}).")
        first = self.stages[0].ops
        if first < n and not (first == n - 1 and "none" in primitives):
            raise ValueError(f"stage 1 keeps {first} of the {n} ops; it must start with all {n}"
                             + (f" or the {n - 1} without 'none' (DrNAS' DARTS space)" if "none" in primitives else "")
                             + ": before any architecture step no weight says which ops to drop.")

    def initial_keep(self, shapes: Mapping[str, tuple[int, int]], primitives: Sequence[str]
                     ) -> dict[str, Tensor] | None:
        """The keep masks of the first stage: None when it keeps every op; all ops but ``none`` when it
        keeps one fewer (DrNAS' DARTS space has no ``none``)."""
        self._check_ops(primitives)
        n = len(primitives)
        if self.stages[0].ops == n:
            return None
        row = torch.tensor([name != "none" for name in primitives])
        return {kind: row.expand(shape[0], n).clone() for kind, shape in shapes.items()}


class FixedArchitecture(nn.Module):
    """A supernet at fixed mixing weights θ, as a plain model ``x -> logits`` (for the evaluator, and for
    anything else that takes a model). It shares the supernet's weights and train/eval mode.

    Introduced in chapters/02_darts.py.
    """

    def __init__(self, supernet: nn.Module, theta: Mapping[str, Tensor], active=None):
        super().__init__()
        check_theta_shapes(theta, supernet.shapes, supernet.primitives)
        self.supernet = supernet
        self.theta = {k: v.detach() for k, v in theta.items()}
        self.active = active

    def forward(self, x: Tensor) -> Tensor:
        return self.supernet(x, self.theta, self.active)


__all__ = ["EDGE_SUFFIX", "FixedArchitecture", "MixedOp", "ProgressiveSchedule", "Pruned", "Stage", "Supernet",
           "active_ops", "add_all", "carry_optimizer_state", "channel_shuffle", "check_theta_shapes", "edge_key",
           "fold_edge_weights", "is_edge_key", "run_dag", "scaled_bn"]
