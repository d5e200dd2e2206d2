"""Bayesian weights: mean-field Gaussian layers q(w), weight priors p(w) and p(w | θ), and the KL between them.

    q(w) = Π_i N(w_i; μ_i, σ_i²),   σ_i = softplus(ρ_i)                                    (chapter 05, Eq. (5.1))
    KL(q(w) || N(0, s²)) = Σ_i [log s − log σ_i + (σ_i² + μ_i²) / (2 s²) − ½]               (Eq. (5.2))

A layer's output b = x ⋆ w (a convolution or a matrix product) is linear in w, so under q(w) each output
unit is Gaussian with mean x ⋆ μ and variance x² ⋆ σ² (the local reparameterisation trick; Kingma, Salimans
& Welling, NeurIPS 2015). Sampling b = x ⋆ μ + √(x² ⋆ σ²) ⊙ ε draws independent weights for every example
at the cost of a second convolution, and its gradient has a lower variance than sampling one w per batch
(``local_reparameterisation = False``, also offered). Eq. (5.3).

Priors (each has ``kl(mu, sigma, scale)``, summed over the tensor's entries):
- ``GaussianPrior(sigma)``: N(0, σ0²), the KL in closed form. Its μ²/(2σ0²) term is the point weights' L2
  term: SGD's weight decay λ over N data is the prior σ0² = 1 / (λ N) (``sigma_for_weight_decay``).
- ``ScaleMixturePrior(pi, sigma1, sigma2)``: π N(0, σ1²) + (1 − π) N(0, σ2²) (Blundell et al., ICML 2015).
  No closed form: the entropy of q is exact and the cross-entropy E_q[−log p(w)] is a one-sample Monte Carlo
  estimate (unbiased).
- ``CoupledPrior(sigma, eps)``: the structure-dependent prior of the course, p(w_{e,o} | θ_e) = N(0, s(θ_{e,o})²)
  with s(θ) = σ0 (θ + ε) / (1 + ε): an op that the structure switches off (θ → 0) has its weights pulled
  towards 0 (ARD-like); a fully selected op (θ = 1) has the plain prior N(0, σ0²). Weights outside the
  cells' edges (stem, preprocessing, classifier) have N(0, σ0²). Eq. (5.5).
  The floor ε keeps E_{q(θ)}[KL] finite: without it the KL holds E[log θ] and E[θ^{-2}], and E[θ^{-2}]
  under θ_o ~ Beta(β_o, β_0 − β_o) is infinite for β_o <= 2 (``beta_moments``). The expectation over q(θ)
  is estimated by Monte Carlo with the reparameterised sample θ ~ q that the step already draws.
The variational family stays a product q(θ) q(w): only the prior couples structure and weights.

``make_bayesian(model)`` turns every conv and linear layer of a network or supernet into its mean-field
version (means initialised from the point weights); ``weight_kl(model, prior, theta)`` sums the KL over them.
Layers sample in training mode, or whenever their own flag says so (``sampling(model, True)``), so that a
posterior predictive or an attack can draw weights with eval-mode BatchNorm.

Place in the flow: spaces/posteriors -> **bayes** -> supernet -> objectives.
Introduced in chapters/05_bayesian_weights.py.
"""

from __future__ import annotations

import contextlib
import difflib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas import ops

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


# --- priors ----------------------------------------------------------------------------------------------

def gaussian_kl(mu: Tensor, sigma: Tensor, s) -> Tensor:
    """Σ_i KL(N(μ_i, σ_i²) || N(0, s²)) in nats, Eq. (5.2), for one prior scale ``s`` (a float or a 0-d tensor,
    through which the gradient flows). Written with sums so that a scalar s costs no tensor of μ's size.
    Introduced in chapters/05_bayesian_weights.py, Eq. (5.2)."""
    n = mu.numel()
    s = torch.as_tensor(s, dtype=mu.dtype, device=mu.device)
    second_moment = sigma.square().sum() + mu.square().sum()
    return n * torch.log(s) - torch.log(sigma).sum() + second_moment / (2 * s * s) - 0.5 * n


class GaussianPrior:
    """p(w) = N(0, σ0²) for every weight. Introduced in chapters/05_bayesian_weights.py, Eq. (5.2)."""

    name = "gaussian"

    def __init__(self, sigma: float):
        self.sigma = _positive("The prior scale sigma", sigma)

    def log_prob(self, w: Tensor, scale=1.0) -> Tensor:
        s = self.sigma * scale
        return -0.5 * (w / s).square() - torch.log(torch.as_tensor(s, dtype=w.dtype)) - _HALF_LOG_2PI

    def kl(self, mu: Tensor, sigma: Tensor, scale=1.0) -> Tensor:
        """Σ KL(q(w) || N(0, (σ0 · scale)²)), closed form."""
        return gaussian_kl(mu, sigma, self.sigma * scale)

    def __repr__(self):
        return f"GaussianPrior(sigma={self.sigma:g})"


class ScaleMixturePrior:
    """p(w) = π N(0, σ1²) + (1 − π) N(0, σ2²) (Blundell et al., ICML 2015): a broad and a narrow component.

    Introduced in chapters/05_bayesian_weights.py."""

    name = "mixture"

    def __init__(self, pi: float, sigma1: float, sigma2: float):
        if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not 0 < pi < 1:
            raise ValueError(f"The mixture weight pi must lie strictly between 0 and 1, got {pi!r}.")
        self.pi = float(pi)
        self.sigma1 = _positive("The prior scale sigma1", sigma1)
        self.sigma2 = _positive("The prior scale sigma2", sigma2)

    def log_prob(self, w: Tensor, scale=1.0) -> Tensor:
        parts = [math.log(weight) - 0.5 * (w / (s * scale)).square() - math.log(s * scale) - _HALF_LOG_2PI
                 for weight, s in ((self.pi, self.sigma1), (1 - self.pi, self.sigma2))]
        return torch.logaddexp(*parts)

    def kl(self, mu: Tensor, sigma: Tensor, scale=1.0) -> Tensor:
        """−H[q] − E_q[log p(w)]: the entropy of q exactly, the cross-entropy with one sample w ~ q."""
        w = mu + sigma * torch.randn_like(mu)
        neg_entropy = -(torch.log(sigma).sum() + mu.numel() * (_HALF_LOG_2PI + 0.5))
        return neg_entropy - self.log_prob(w, scale).sum()

    def __repr__(self):
        return f"ScaleMixturePrior(pi={self.pi:g}, sigma1={self.sigma1:g}, sigma2={self.sigma2:g})"


class CoupledPrior(GaussianPrior):
    """p(w_{e,o} | θ_e) = N(0, s(θ_{e,o})²), s(θ) = σ0 (θ + ε) / (1 + ε): the structure-dependent prior.

    ``scale(theta)`` is s(θ) / σ0; a layer outside the cells' edges has scale 1. Needs a supernet (whose
    ``edge_ops`` say which θ scales which op) and a sample θ ~ q(θ). Introduced in chapters/05_bayesian_weights.py,
    Eq. (5.5)."""

    name = "coupled"

    def __init__(self, sigma: float, eps: float = 0.05):
        super().__init__(sigma)
        self.eps = _positive("The coupling floor eps", eps)

    def scale(self, theta: Tensor) -> Tensor:
        """s(θ) / σ0 = (θ + ε) / (1 + ε), elementwise."""
        return (theta + self.eps) / (1 + self.eps)

    def __repr__(self):
        return f"CoupledPrior(sigma={self.sigma:g}, eps={self.eps:g})"


PRIORS = ("gaussian", "mixture", "coupled")
"""The weight priors by name. Introduced in chapters/05_bayesian_weights.py."""


def sigma_for_weight_decay(weight_decay: float, num_data: int, kl_weight: float = 1.0) -> float:
    """The prior scale σ0 whose KL term, weighted by ``kl_weight`` over ``num_data`` points, puts on the means
    the same L2 as SGD's ``weight_decay``: kl_weight μ² / (2 σ0² N) = weight_decay μ² / 2, σ0² = kl_weight / (λ N).
    Introduced in chapters/05_bayesian_weights.py, Eq. (5.4)."""
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"num_data must be an integer >= 1 (the data points the likelihood sums over), got "
                         f"{num_data!r}.")
    return math.sqrt(_positive("kl_weight", kl_weight) / (_positive("weight_decay", weight_decay) * num_data))


def build_prior(name: str, sigma: float, pi: float = 0.5, sigma2: float = 2.5e-3, eps: float = 0.05):
    """The prior ``name`` (one of PRIORS): N(0, σ²); the mixture π N(0, σ²) + (1 − π) N(0, σ2²); or the coupled
    prior with scale σ and floor ε. Introduced in chapters/05_bayesian_weights.py."""
    if name == "gaussian":
        return GaussianPrior(sigma)
    if name == "mixture":
        return ScaleMixturePrior(pi, sigma, sigma2)
    if name == "coupled":
        return CoupledPrior(sigma, eps)
    close = difflib.get_close_matches(str(name), PRIORS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown weight prior {name!r}.{hint} Valid priors: {', '.join(PRIORS)}.")


def beta_moments(beta_o, beta_0) -> dict[str, Tensor]:
    """For θ_o ~ Beta(β_o, β_0 − β_o) (the marginal of Dir(β)), the expectations that E_q(θ)[KL(q(w) || p(w | θ))]
    holds without a floor: E[log θ] = ψ(β_o) − ψ(β_0); E[1/θ] = (β_0 − 1)/(β_o − 1), finite only for β_o > 1
    (a prior variance ∝ θ); E[θ^{-2}] = (β_0 − 1)(β_0 − 2) / ((β_o − 1)(β_o − 2)), finite only for β_o > 2 (a
    prior scale ∝ θ). Infinite values are returned as inf. Introduced in chapters/05_bayesian_weights.py, Eq. (5.6)."""
    b, b0 = torch.as_tensor(beta_o, dtype=torch.float64), torch.as_tensor(beta_0, dtype=torch.float64)
    inf = torch.full_like(b, math.inf)
    inv = torch.where(b > 1, (b0 - 1) / (b - 1), inf)
    inv2 = torch.where(b > 2, (b0 - 1) * (b0 - 2) / ((b - 1) * (b - 2)), inf)
    return {"log": torch.digamma(b) - torch.digamma(b0), "inverse": inv, "inverse_square": inv2}


# --- layers ----------------------------------------------------------------------------------------------

_TINY = 1e-16  # added to the output variance: √ has an infinite slope at 0 (a ReLU's zeros give variance 0)


class MeanField(nn.Module):
    """What the mean-field layers share: μ and ρ per weight (σ = softplus(ρ)), when to sample, and the KL.

    ``sampling``: None follows train/eval mode; True or False overrides it (eval-mode BN with sampled weights,
    for a posterior predictive or an attack). ``local_reparameterisation``: sample the outputs (True) or one
    weight tensor per forward pass (False). Introduced in chapters/05_bayesian_weights.py, Eq. (5.1)."""

    sampling: bool | None = None
    local_reparameterisation: bool = True

    def _init_variational(self, weight: Tensor, bias: Tensor | None, sigma_init: float) -> None:
        rho = math.log(math.expm1(_positive("sigma_init (the posterior's initial scale)", sigma_init)))
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_rho = nn.Parameter(torch.full_like(self.weight_mu, rho))
        if bias is not None:
            self.bias_mu = nn.Parameter(bias.detach().clone())
            self.bias_rho = nn.Parameter(torch.full_like(self.bias_mu, rho))
        else:
            self.bias_mu = self.bias_rho = None

    @property
    def weight_sigma(self) -> Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def samples_now(self) -> bool:
        return self.training if self.sampling is None else bool(self.sampling)

    def kl(self, prior, scale=1.0, detach_q: bool = False) -> Tensor:
        """Σ KL(q(w) || p(w)) over this layer's weights and bias, in nats; ``scale`` multiplies the prior's
        scale (the coupled prior's s(θ)/σ0); ``detach_q``: no gradient to μ and σ."""
        pairs = [(self.weight_mu, self.weight_sigma)]
        if self.bias_mu is not None:
            pairs.append((self.bias_mu, self.bias_sigma))
        if detach_q:
            pairs = [(mu.detach(), sigma.detach()) for mu, sigma in pairs]
        total = prior.kl(*pairs[0], scale)
        for mu, sigma in pairs[1:]:
            total = total + prior.kl(mu, sigma, scale)
        return total

    def _linear_map(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not self.samples_now():  # the posterior mean network
            return self._linear_map(x, self.weight_mu, self.bias_mu)
        sigma_w, sigma_b = self.weight_sigma, self.bias_sigma
        if not self.local_reparameterisation:  # one weight tensor for the whole batch
            w = self.weight_mu + sigma_w * torch.randn_like(sigma_w)
            b = None if sigma_b is None else self.bias_mu + sigma_b * torch.randn_like(sigma_b)
            return self._linear_map(x, w, b)
        mean = self._linear_map(x, self.weight_mu, self.bias_mu)  # Eq. (5.3): x ⋆ μ ...
        var = self._linear_map(x * x, sigma_w * sigma_w, None if sigma_b is None else sigma_b * sigma_b)  # x² ⋆ σ²
        return torch.addcmul(mean, (var + _TINY).sqrt_(), _standard_normal_like(mean))


def _standard_normal_like(t: Tensor) -> Tensor:
    """N(0, 1) noise of ``t``'s shape and memory layout. Drawn as a flat vector and laid out with t's strides:
    torch's CPU sampler is ~9x slower on a channels_last tensor than on a contiguous one (the noise is i.i.d.,
    so the layout does not change its distribution)."""
    return torch.randn(t.numel(), dtype=t.dtype, device=t.device).as_strided(t.shape, t.stride())


class MeanFieldConv2d(MeanField):
    """A Conv2d with q(w) mean-field Gaussian; depthwise and dilated convolutions included (a depthwise one
    uses ``vnas.ops.depthwise_conv2d``, the supernet's fast CPU path, for both its convolutions).

    Introduced in chapters/05_bayesian_weights.py, Eq. (5.3)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, sigma_init: float = 1e-3):
        super().__init__()
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._setup(template, sigma_init)

    def _setup(self, conv: nn.Conv2d, sigma_init: float) -> None:
        if isinstance(conv.padding, str):
            raise ValueError("MeanFieldConv2d needs numeric padding, not padding='same'/'valid'.")
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride, self.padding, self.dilation = (conv.kernel_size, conv.stride, conv.padding,
                                                                      conv.dilation)
        self.depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        self._fast = isinstance(conv, ops.DepthwiseConv2d) and conv._fast
        self._init_variational(conv.weight, conv.bias, sigma_init)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, sigma_init: float = 1e-3) -> MeanFieldConv2d:
        """The mean-field version of ``conv``: μ = its weights (and bias), σ = ``sigma_init`` everywhere."""
        layer = cls.__new__(cls)
        MeanField.__init__(layer)
        layer._setup(conv, sigma_init)
        return layer.to(conv.weight.device)

    def _linear_map(self, x, weight, bias):
        if self._fast:
            out = ops.depthwise_conv2d(x, weight, self.stride[0], self.padding[0], self.dilation[0])
            return out if bias is None else out + bias.view(1, -1, 1, 1)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias_mu is not None}")


class MeanFieldLinear(MeanField):
    """A Linear layer with q(w) mean-field Gaussian. Introduced in chapters/05_bayesian_weights.py, Eq. (5.3)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, sigma_init: float = 1e-3):
        super().__init__()
        self._setup(nn.Linear(in_features, out_features, bias), sigma_init)

    def _setup(self, linear: nn.Linear, sigma_init: float) -> None:
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_variational(linear.weight, linear.bias, sigma_init)

    @classmethod
    def from_linear(cls, linear: nn.Linear, sigma_init: float = 1e-3) -> MeanFieldLinear:
        """The mean-field version of ``linear``: μ = its weights and bias, σ = ``sigma_init``."""
        layer = cls.__new__(cls)
        MeanField.__init__(layer)
        layer._setup(linear, sigma_init)
        return layer.to(linear.weight.device)

    def _linear_map(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_mu is not None}"


# --- whole models ------------------------------------------------------------------------------------------

def make_bayesian(model: nn.Module, sigma_init: float = 1e-3, local_reparameterisation: bool = True) -> nn.Module:
    """Replace, in place, every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` by its mean-field version (μ from
    the point weights, σ = ``sigma_init``); returns the model. BatchNorm stays a point layer.
    Introduced in chapters/05_bayesian_weights.py."""
    _positive("sigma_init (the posterior's initial scale)", sigma_init)
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                swaps.append((parent, name, MeanFieldConv2d.from_conv(child, sigma_init)))
            elif isinstance(child, nn.Linear):
                swaps.append((parent, name, MeanFieldLinear.from_linear(child, sigma_init)))
    if not swaps and not variational_layers(model):
        raise ValueError(f"make_bayesian found no Conv2d or Linear layer in {type(model).__name__}.")
    for parent, name, layer in swaps:
        layer.local_reparameterisation = bool(local_reparameterisation)
        layer.train(parent.training)
        setattr(parent, name, layer)
    return model


def variational_layers(model: nn.Module) -> list[tuple[str, MeanField]]:
    """The model's mean-field layers, with their names. Introduced in chapters/05_bayesian_weights.py."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MeanField)]


def is_bayesian(model: nn.Module) -> bool:
    """Whether the model has any mean-field layer. Introduced in chapters/05_bayesian_weights.py."""
    return any(isinstance(m, MeanField) for m in model.modules())


@contextlib.contextmanager
def sampling(model: nn.Module, on: bool = True):
    """Within the block every mean-field layer of ``model`` samples (``on=True``) or uses its mean (False),
    whatever its train/eval mode; the flags are restored after. Introduced in chapters/05_bayesian_weights.py."""
    layers = [m for m in model.modules() if isinstance(m, MeanField)]
    before = [m.sampling for m in layers]
    try:
        for m in layers:
            m.sampling = bool(on)
        yield model
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.sampling = flag


def _edge_index(model: nn.Module, layers, theta_keys) -> list[tuple[str, int, int] | None]:
    """For each layer, the (cell type, e, o) whose mixing weight scales its op, or None outside the edges."""
    where = {}
    if hasattr(model, "edge_ops"):
        for kind, e, o, op in model.edge_ops():
            for m in op.modules():
                if isinstance(m, MeanField):
                    where[id(m)] = (kind, e, o)
    return [where.get(id(m)) for _, m in layers]


def _layer_scales(model: nn.Module, prior, theta):
    """(name, layer, scale) for every mean-field layer: scale s(θ_{e,o})/σ0 for an edge op's layers under the
    coupled prior, 1 elsewhere."""
    layers = variational_layers(model)
    if not isinstance(prior, CoupledPrior):
        for name, m in layers:
            yield name, m, 1.0
        return
    _check_coupled(model, theta)
    factors = {k: prior.scale(v) for k, v in theta.items()}
    for (name, m), where in zip(layers, _edge_index(model, layers, theta), strict=True):
        yield name, m, 1.0 if where is None else factors[where[0]][where[1], where[2]]


def _check_coupled(model, theta):
    if theta is None or not hasattr(model, "edge_ops"):
        raise ValueError("The coupled prior p(w | θ) needs a supernet and a sample θ ~ q(θ): "
                         "weight_kl(supernet, prior, theta).")


class _FlatPlan:
    """Every mean-field layer of a model, read as flat vectors: which layer each entry belongs to and which
    mixing weight scales it. Built once per model (and again if its layers change): a supernet has about a
    thousand layers, and one KL per layer would cost a thousand small kernels per step, forward and backward."""

    def __init__(self, model: nn.Module):
        self.layers = variational_layers(model)
        self.key = tuple(id(m) for _, m in self.layers)
        self.params = [(m.weight_mu, m.weight_rho) for _, m in self.layers]
        self.params += [(m.bias_mu, m.bias_rho) for _, m in self.layers if m.bias_mu is not None]
        owner = list(range(len(self.layers))) + [i for i, (_, m) in enumerate(self.layers) if m.bias_mu is not None]
        sizes = torch.tensor([mu.numel() for mu, _ in self.params])
        self.segment = torch.repeat_interleave(torch.tensor(owner), sizes)  # the layer of every flat entry
        self.counts = torch.zeros(len(self.layers)).index_add_(0, self.segment, torch.ones(len(self.segment)))
        self.where = None  # per layer: (cell type, e, o) or None; filled for the coupled prior
        self._model = model

    def on(self, device):
        if self.segment.device != device:
            self.segment, self.counts = self.segment.to(device), self.counts.to(device)
        return self

    def theta_index(self, theta: dict[str, Tensor]) -> tuple[Tensor, list[str]]:
        """Per layer, its index into cat(θ[k].flatten() for k) + [1] (the last entry: layers off the edges)."""
        kinds = sorted(theta)
        if self.where is None:
            self.where = _edge_index(self._model, self.layers, theta)
        offsets, start = {}, 0
        for k in kinds:
            offsets[k], start = start, start + theta[k].numel()
        index = [start if w is None else offsets[w[0]] + w[1] * theta[w[0]].shape[-1] + w[2] for w in self.where]
        return torch.tensor(index, device=self.segment.device), kinds


def _plan(model: nn.Module) -> _FlatPlan:
    plan = model.__dict__.get("_vnas_kl_plan")
    layers = variational_layers(model)
    if plan is None or plan.key != tuple(id(m) for _, m in layers):
        plan = _FlatPlan(model)
        model.__dict__["_vnas_kl_plan"] = plan  # a plain attribute: not a submodule, not in the state dict
    return plan


def weight_kl(model: nn.Module, prior, theta: dict[str, Tensor] | None = None, detach_q: bool = False) -> Tensor:
    """KL(q(w) || p(w | θ)) in nats, summed over the model's mean-field layers; 0 for point weights. With the
    coupled prior, ``theta`` is one sample θ ~ q(θ) and the result is a one-sample estimate of
    E_q(θ)[KL(q(w) || p(w | θ))] whose gradient reaches q(θ) through θ; ``detach_q``: no gradient to q(w).
    Computed on all layers at once (the same value as Σ ``layer.kl``). Introduced in chapters/05_bayesian_weights.py,
    Eq. (5.5)."""
    p = next(model.parameters(), None)
    if not is_bayesian(model):
        return torch.zeros((), device=p.device if p is not None else None)
    plan = _plan(model).on(p.device)
    mu = torch.cat([m.reshape(-1) for m, _ in plan.params])
    sigma = F.softplus(torch.cat([r.reshape(-1) for _, r in plan.params]))
    if detach_q:
        mu, sigma = mu.detach(), sigma.detach()
    if not isinstance(prior, CoupledPrior):  # one prior for every weight
        return prior.kl(mu, sigma)
    _check_coupled(model, theta)
    index, kinds = plan.theta_index(theta)
    flat = torch.cat([theta[k].reshape(-1).to(mu.dtype) for k in kinds] + [mu.new_ones(1)])
    s = prior.sigma * prior.scale(flat)[index]  # per layer: σ0 (θ + ε) / (1 + ε), or σ0 off the edges
    n = plan.counts.to(mu.dtype)
    log_sigma = mu.new_zeros(len(n)).index_add_(0, plan.segment, torch.log(sigma))
    second_moment = mu.new_zeros(len(n)).index_add_(0, plan.segment, sigma * sigma + mu * mu)
    return (n * torch.log(s) - log_sigma + second_moment / (2 * s * s) - 0.5 * n).sum()


@torch.no_grad()
def first_non_finite_kl(model: nn.Module, prior, theta: dict[str, Tensor] | None = None) -> str | None:
    """The name of the first mean-field layer whose KL is NaN or infinite (a scan for error messages)."""
    for name, layer, scale in _layer_scales(model, prior, theta):
        if not bool(torch.isfinite(layer.kl(prior, scale))):
            return name
    return None


@torch.no_grad()
def posterior_scales(model: nn.Module) -> dict[str, float]:
    """Summary of q(w): the mean σ, the mean |μ| and the mean signal-to-noise |μ|/σ over all Bayesian weights.
    Introduced in chapters/05_bayesian_weights.py."""
    mus = [m.weight_mu.abs().flatten() for _, m in variational_layers(model)]
    sigmas = [m.weight_sigma.flatten() for _, m in variational_layers(model)]
    if not mus:
        return {}
    mu, sigma = torch.cat(mus), torch.cat(sigmas)
    return {"sigma_mean": float(sigma.mean()), "mu_abs_mean": float(mu.mean()), "snr_mean": float((mu / sigma).mean())}


@torch.no_grad()
def op_weight_rms(supernet: nn.Module) -> dict[str, Tensor]:
    """Root mean square of the (mean) weights of every op, per cell type [E, O] (0 for an op without weights):
    what an ARD-like prior pulls towards 0. Point and Bayesian weights alike.
    Introduced in chapters/05_bayesian_weights.py."""
    sums, counts = {}, {}
    for kind, e, o, op in supernet.edge_ops():
        for name, p in op.named_parameters():
            if name.endswith("rho"):
                continue
            key = (kind, e, o)
            sums[key] = sums.get(key, 0.0) + float(p.square().sum())
            counts[key] = counts.get(key, 0) + p.numel()
    out = {kind: torch.zeros(shape) for kind, shape in supernet.shapes.items()}
    for (kind, e, o), total in sums.items():
        out[kind][e, o] = math.sqrt(total / counts[(kind, e, o)])
    return out


__all__ = ["PRIORS", "CoupledPrior", "GaussianPrior", "MeanField", "MeanFieldConv2d", "MeanFieldLinear",
           "ScaleMixturePrior", "beta_moments", "build_prior", "first_non_finite_kl", "gaussian_kl", "is_bayesian",
           "make_bayesian", "op_weight_rms", "posterior_scales", "sampling", "sigma_for_weight_decay",
           "variational_layers", "weight_kl"]
