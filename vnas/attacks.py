"""Adversarial attacks on models that take pixels in [0, 1]: FGSM, PGD (L∞ and L2) and EOT-PGD, and the
robust accuracy over a grid of budgets ε, with the sanity checks that catch a broken attack.

An attack looks, within the ball B_p(x, ε) = {x' : ||x' − x||_p <= ε} ∩ [0, 1]^d, for an input that maximises
the loss L(x', y) = −log p(y | x'):                                                       (chapter 07, Eq. (7.1))

- FGSM (Goodfellow et al., ICLR 2015): one step x' = clip(x + ε sign ∇_x L).              (Eq. (7.2))
- PGD (Madry et al., ICLR 2018): from a random start in the ball, ``steps`` ascent steps of size η, each
  followed by the projection Π onto the ball: x ← Π(x + η sign ∇L) for L∞, x ← Π(x + η ∇L / ||∇L||₂) for L2,
  where Π clips to [x − ε, x + ε] (L∞) or rescales δ to norm ε when it is longer (L2), then clips to [0, 1].
  Clipping to [0, 1] after the L2 projection can only shorten δ, so the result stays in both sets.    (Eq. (7.3))
- EOT-PGD (Athalye et al., ICML 2018): a stochastic model's loss is random, and one sample's gradient is a
  noisy ascent direction; EOT ascends E_w[L] instead, averaging the gradient over ``samples`` posterior draws
  (expectation over transformation). Without it a stochastic model looks more robust than it is.      (Eq. (7.4))

The loss is summed over the batch, so each example's step does not depend on the batch size. Attacks run in
float32 outside any autocast, with BatchNorm in eval mode; a Bayesian network (``vnas.bayes``) samples its
weights through its sampling flag, not through train mode. Each attack returns the adversarial inputs.

Place in the flow: networks/train -> metrics -> **attacks** -> plots.
Introduced in chapters/07_robustness.py.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vnas import bayes

NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd", "eot_pgd")


MASKING_ACCURACY = 0.05
"""The accuracy that a working attack must get below at a very large ε (the masking check of robust_accuracy)."""


class AttackWarning(UserWarning):
    """A sanity check of an attack failed: its robust accuracy may be an overestimate."""


# --- checks of the arguments -------------------------------------------------------------------------

def _check_eps(eps, norm: str = "linf") -> float:
    if norm == "l2":  # an L2 ball may be wider than 1 (the diagonal of [0, 1]^d is √d long)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
            raise ValueError(f"eps must be a finite number >= 0 for the L2 norm (0.5 is the usual CIFAR-10 "
                             f"budget), got {eps!r}.")
    elif isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be a number in [0, 1] (pixels lie in [0, 1]; 8/255 = {8 / 255:.4f} is the "
                         f"usual L∞ budget), got {eps!r}.")
    return float(eps)


def _check_pixels(x: Tensor) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of pixels in [0, 1].")
    lo, hi = torch.aminmax(x.detach())
    if lo.item() < 0 or hi.item() > 1:
        raise ValueError(f"x has values in [{lo.item():.3g}, {hi.item():.3g}], outside [0, 1]: attacks work on "
                         "pixels. vnas models take pixels in [0, 1] and normalise inside their first module, so "
                         "pass the images before any normalisation.")


def _check_steps(steps, step_size, norm: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size < math.inf:
        raise ValueError(f"step_size must be a number > 0 (e.g. 2.5 * eps / steps), got {step_size!r}.")
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")


def _check_restarts(restarts) -> None:
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}.")


def is_stochastic(model: nn.Module) -> bool:
    """Whether the model's output is random given its input: it has Bayesian layers, or says so itself
    (an attribute ``stochastic = True``, e.g. a model that samples a member of an ensemble)."""
    return bool(getattr(model, "stochastic", False)) or bayes.is_bayesian(model)


@contextlib.contextmanager
def attacking(model: nn.Module, stochastic: bool | None = None):
    """Eval-mode BatchNorm, float32 (no autocast), and the Bayesian layers sampling when the model is
    stochastic; the model's mode and flags are restored after."""
    stochastic = is_stochastic(model) if stochastic is None else stochastic
    was_training = model.training
    model.eval()
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    try:
        with torch.autocast(device_type, enabled=False), \
                (bayes.sampling(model, True) if stochastic else contextlib.nullcontext()):
            yield model
    finally:
        model.train(was_training)


# --- the steps ---------------------------------------------------------------------------------------

def _loss_gradient(model: nn.Module, x: Tensor, y: Tensor, samples: int = 1) -> Tensor:
    """∇_x Σ_n −log p(y_n | x_n), averaged over ``samples`` forward passes (each one a posterior draw of a
    stochastic model): Eq. (7.4). Only x's gradient is computed; the weights' .grad are untouched."""
    x = x.detach().requires_grad_(True)
    grad = torch.zeros_like(x)
    for _ in range(samples):
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        grad += torch.autograd.grad(loss, x)[0]
    return grad / samples


def _per_example_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str = "linf") -> Tensor:
    """Π onto B_p(x, ε) ∩ [0, 1]^d: clip δ = x_adv − x to [−ε, ε] (L∞) or shorten it to norm ε (L2), then
    clip to [0, 1] (which only shortens δ further). Eq. (7.3)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_example_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0, 1)


def _ascent(grad: Tensor, step_size: float, norm: str) -> Tensor:
    if norm == "linf":
        return step_size * grad.sign()
    return step_size * grad / _per_example_norm(grad)


def _random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:  # a uniform direction, a radius uniform in [0, ε]
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
        noise = direction / _per_example_norm(direction) * radius * eps
    return project(x + noise, x, eps, norm)


# --- the attacks -------------------------------------------------------------------------------------

def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The fast gradient sign method, x' = clip(x + ε sign ∇_x L(x, y), 0, 1): Eq. (7.2). Returns x'.
    Introduced in chapters/07_robustness.py."""
    eps = _check_eps(eps)
    _check_pixels(x)
    if eps == 0:
        return x.detach().clone()
    with attacking(model):
        grad = _loss_gradient(model, x.float(), y)
    return project(x.float() + eps * grad.sign(), x.float(), eps, "linf").detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float | None = None, steps: int = 10,
        norm: str = "linf", random_start: bool = True, restarts: int = 1, samples: int = 1,
        generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent on −log p(y | x') within B_p(x, ε) ∩ [0, 1]: Eq. (7.3). Returns x'.

    - ``step_size`` η (default 2.5 ε / steps, Madry et al.'s choice); ``norm`` "linf" or "l2";
    - ``random_start``: start from a uniform point of the ball (L2: a uniform direction and radius);
    - ``restarts``: independent starts; each example keeps the one with the highest final loss;
    - ``samples``: gradient draws averaged per step (EOT, ``eot_pgd``); 1 is plain PGD. A stochastic model
      (``is_stochastic``) samples in every forward pass either way.
    Introduced in chapters/07_robustness.py."""
    eps = _check_eps(eps, norm)
    step_size = 2.5 * eps / steps if step_size is None and isinstance(steps, int) and steps >= 1 else step_size
    _check_pixels(x)
    _check_restarts(restarts)
    if eps == 0:
        _check_steps(steps, 1.0, norm)
        return x.detach().clone()
    _check_steps(steps, step_size, norm)
    x = x.detach().float()
    best, best_loss = x.clone(), None
    with attacking(model):
        for _ in range(restarts):
            x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
            for _ in range(steps):
                grad = _loss_gradient(model, x_adv, y, samples)
                x_adv = project(x_adv + _ascent(grad, step_size, norm), x, eps, norm)
            if restarts == 1:
                return x_adv.detach()
            with torch.no_grad():  # keep, per example, the restart with the highest loss
                loss = torch.stack([F.cross_entropy(model(x_adv).float(), y, reduction="none")
                                    for _ in range(samples)]).mean(0)
                if best_loss is None:
                    best, best_loss = x_adv, loss
                else:
                    better = loss > best_loss
                    best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
                    best_loss = torch.maximum(loss, best_loss)
    return best.detach()


def eot_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float | None = None, steps: int = 10,
            norm: str = "linf", random_start: bool = True, restarts: int = 1, samples: int = 8,
            generator: torch.Generator | None = None) -> Tensor:
    """PGD whose every step averages the input gradient over ``samples`` posterior draws of a stochastic model
    (expectation over transformation, Athalye et al. 2018): Eq. (7.4). On a deterministic model it is plain PGD
    ``samples`` times over, and it warns. Returns x'.
    Introduced in chapters/07_robustness.py."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (posterior draws averaged per step), got {samples!r}.")
    _check_pixels(x)
    if not is_stochastic(model):
        warnings.warn("eot_pgd on a deterministic model (no Bayesian layers, no `stochastic = True`): every "
                      "draw gives the same gradient, so this is plain PGD at `samples` times the cost. Use pgd.",
                      AttackWarning, stacklevel=2)
        samples = 1
    return pgd(model, x, y, eps, step_size, steps, norm, random_start, restarts, samples, generator)


# --- robust accuracy ---------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, x: Tensor, samples: int = 1) -> Tensor:
    """The log posterior predictive log (1/S) Σ_s p(· | x, w_s) of ``samples`` forward passes (eval-mode BN,
    float32, a stochastic model sampling); S = 1 for a deterministic model."""
    with attacking(model):
        samples = samples if is_stochastic(model) else 1
        log_p = torch.stack([torch.log_softmax(model(x.float()).float(), -1) for _ in range(samples)])
    return torch.logsumexp(log_p, 0) - math.log(samples)


def _noise(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy p measured on n images, plus one image: the tolerance
    of the sanity checks (a stochastic model's accuracy is itself random)."""
    return 2 * math.sqrt(max(p * (1 - p), 0.25 / n) / n) + 1 / n


def _attack_fn(attack, **kwargs) -> Callable:
    if callable(attack):
        return attack
    table = {"fgsm": fgsm, "pgd": pgd, "eot_pgd": eot_pgd}
    if attack not in table:
        raise ValueError(f"Unknown attack {attack!r}; use one of {ATTACKS} or a function (model, x, y, eps) -> x'.")
    fn = table[attack]
    if attack == "fgsm":
        return fn
    return lambda model, x, y, eps: fn(model, x, y, eps, **kwargs)


def robust_accuracy(model: nn.Module, batches, attack="pgd", eps_grid=(0, 1 / 255, 2 / 255, 4 / 255, 8 / 255),
                    predict_samples: int = 1, checks: bool = True, masking_eps: float = 0.25,
                    **attack_kwargs) -> dict:
    """Accuracy of ``model`` on the adversarial inputs that ``attack`` finds for ``batches`` (an iterable of
    (x, y) pixel batches on the model's device), for each ε of ``eps_grid``.

    - ``attack``: "fgsm", "pgd", "eot_pgd", or a function (model, x, y, eps) -> x'; ``attack_kwargs`` go to
      pgd/eot_pgd (steps, step_size, norm, restarts, ``samples`` per EOT step, generator);
    - ``predict_samples``: forward passes whose probabilities are averaged to classify (the posterior predictive of a
      stochastic model; 1 for a deterministic one);
    - ``checks`` (cheap, on by default): every x' lies in the ε-ball and in [0, 1] (else an error: the attack is
      broken); ε = 0 gives the clean accuracy; a PGD attack is not weaker than FGSM at the same ε, and EOT-PGD not
      weaker than plain PGD, up to noise; and on the first batch a large ε (``masking_eps``) brings the accuracy to
      about 0. A failed check warns (``AttackWarning``): gradient masking, too few steps, or a too weak attack.
    Returns {"eps": [...], "acc": [...], "clean": accuracy, "n": images, "checks": {...}, "warnings": [...]};
    with checks, "fgsm" (and for EOT "pgd") hold the reference accuracies per ε.
    Introduced in chapters/07_robustness.py."""
    norm = attack_kwargs.get("norm", "linf")
    eps_grid = [_check_eps(e, norm) for e in eps_grid]
    if not eps_grid:
        raise ValueError("eps_grid is empty: give at least one budget, e.g. [0, 8/255].")
    fn = _attack_fn(attack, **attack_kwargs)
    references = {}
    if checks and attack != "fgsm" and norm == "linf":  # any multi-step or custom L∞ attack must beat FGSM
        references["fgsm"] = _attack_fn("fgsm")
    if checks and attack == "eot_pgd" and is_stochastic(model):
        references["pgd"] = _attack_fn("pgd", **{k: v for k, v in attack_kwargs.items() if k != "samples"})
    correct = {e: 0 for e in eps_grid}
    ref_correct = {name: {e: 0 for e in eps_grid} for name in references}
    clean_correct = n = 0
    masking = masking_n = None
    for i, (x, y) in enumerate(batches):
        _check_pixels(x)
        clean_correct += (predict(model, x, predict_samples).argmax(-1) == y).sum().item()
        n += len(y)
        for eps in eps_grid:
            x_adv = fn(model, x, y, eps)
            if checks:
                _check_in_ball(x_adv, x, eps, norm if callable(attack) or attack != "fgsm" else "linf")
            correct[eps] += (predict(model, x_adv, predict_samples).argmax(-1) == y).sum().item()
            for name, ref in references.items():
                x_ref = ref(model, x, y, eps)
                ref_correct[name][eps] += (predict(model, x_ref, predict_samples).argmax(-1) == y).sum().item()
        if checks and i == 0 and masking_eps > 0:
            big = fn(model, x, y, masking_eps)
            masking = (predict(model, big, predict_samples).argmax(-1) == y).sum().item() / len(y)
            masking_n = len(y)
    if n == 0:
        raise ValueError("robust_accuracy got no batches: give at least one (x, y) batch.")
    out = {"eps": eps_grid, "acc": [correct[e] / n for e in eps_grid], "clean": clean_correct / n, "n": n,
           "warnings": []}
    for name in references:
        out[name] = [ref_correct[name][e] / n for e in eps_grid]
    if checks:
        out["checks"] = _sanity(out, references, masking, masking_n, masking_eps,
                                is_stochastic(model) or predict_samples > 1)
        for message in out["warnings"]:
            warnings.warn(message, AttackWarning, stacklevel=2)
    return out


def _check_in_ball(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> None:
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    slack = 1e-5 * max(1.0, eps) + (1e-4 if norm == "l2" else 0.0)
    if size.max().item() > eps + slack or x_adv.min().item() < 0 or x_adv.max().item() > 1:
        raise RuntimeError(f"The attack left the {norm} ball of radius {eps:.4g} (largest ||δ|| = "
                           f"{size.max().item():.4g}) or [0, 1] (range [{x_adv.min().item():.3g}, "
                           f"{x_adv.max().item():.3g}]): it is broken; its robust accuracy means nothing.")


def _sanity(out: dict, references: dict, masking, masking_n, masking_eps: float, stochastic: bool) -> dict:
    n, checks = out["n"], {}
    for eps, acc in zip(out["eps"], out["acc"], strict=True):
        if eps == 0:
            tol = _noise(out["clean"], n) if stochastic else 0.0
            checks["eps0_is_clean"] = abs(acc - out["clean"]) <= tol
            if not checks["eps0_is_clean"]:
                out["warnings"].append(f"At eps = 0 the accuracy {acc:.3f} differs from the clean {out['clean']:.3f}.")
    for name in references:
        ok = all(acc <= ref + _noise(ref, n) for acc, ref in zip(out["acc"], out[name], strict=True))
        checks[f"not_weaker_than_{name}"] = ok
        if not ok:
            out["warnings"].append(f"The attack is weaker than {name} at some eps (acc {out['acc']} vs "
                                   f"{out[name]}): too few steps, a too small step size, or gradient masking.")
    if masking is not None:
        checks["large_eps_accuracy"] = masking
        checks["goes_to_zero"] = masking <= MASKING_ACCURACY + 1 / masking_n  # one image of slack on small batches
        if not checks["goes_to_zero"]:
            out["warnings"].append(f"At eps = {masking_eps:g} the accuracy is still {masking:.3f}, not about 0: the "
                                   "gradient may be masked (obfuscated); the robust accuracies may be overestimates.")
    return checks


__all__ = ["ATTACKS", "AttackWarning", "MASKING_ACCURACY", "NORMS", "attacking", "eot_pgd", "fgsm", "is_stochastic",
           "pgd", "predict", "project", "robust_accuracy"]
