"""Every exercise checker, called directly: the reference answer passes, plausible wrong answers are
rejected with the right diagnosis, and the result is structured (passed / wrong / not attempted). Every
chapter has at least three checked exercises, each check in its own cell.

Chapter 01's checkers (Gaussian KL, ELBO estimator, log evidence) are tested the same way in
tests/test_evidence.py.
"""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vnas import book, checks, data, grade, posteriors, spaces

# --- reference answers (as in the chapters) ----------------------------------------------------------


def split_right(y, seed=0):
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.concatenate(first), np.concatenate(second)


def channel_stats_right(x):
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255
    return pixels.mean(0), pixels.std(0)


def pad_and_crop_right(x, pad, dy, dx):
    n, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    return torch.stack([padded[k, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])


def mixed_right(x, ops, theta):
    return sum(t * op(x) for t, op in zip(theta, ops, strict=True))


def genotype_right(theta, ops=spaces.darts.PRIMITIVES, edges=spaces.darts.EDGES, exclude_none=True):
    pairs = []
    for node in range(2, 6):
        best = []
        for e, (src, dst) in enumerate(edges):
            if dst != node:
                continue
            allowed = [k for k in range(len(ops)) if ops[k] != "none" or not exclude_none]
            k = max(allowed, key=lambda k: float(theta[e, k]))
            best.append((float(theta[e, k]), ops[k], src))
        best.sort(reverse=True)
        pairs += [(op, src) for _, op, src in best[:2]]
    return pairs


def hvp_right(grad_alpha, w, v, eps=None):
    eps = 0.01 / v.norm() if eps is None else eps
    return (grad_alpha(w + eps * v) - grad_alpha(w - eps * v)) / (2 * eps)


def gumbel_right(logits, tau, generator=None):
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype)
    return torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)


def straight_through_right(logits, g, tau):
    y_soft = torch.softmax((logits + g) / tau, dim=-1)
    y_hard = F.one_hot(y_soft.argmax(-1), logits.shape[-1]).to(y_soft.dtype)
    return y_hard + (y_soft - y_soft.detach())


def kl_right(beta, c0):
    return posteriors.dirichlet_kl(beta, c0)


def arch_kl_right(betas, c0, num_data):
    return sum(posteriors.dirichlet_kl(b, c0).sum() for b in betas.values()) / num_data


def nb201_right(beta):
    mean = beta / beta.sum(-1, keepdim=True)
    return spaces.nb201.Genotype.from_ops([spaces.nb201.PRIMITIVES[k] for k in mean.argmax(-1).tolist()])


def mean_field_kl_right(mu, rho, s):
    sigma = F.softplus(rho)
    return (torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5).sum()


def local_reparam_right(x, mu, sigma):
    return x @ mu.T, (x * x) @ (sigma * sigma).T


def coupled_kl_right(mu, sigma, theta, sigma0, eps):
    s = sigma0 * (theta + eps) / (1 + eps)
    return (torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5).sum()


def fgsm_right(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    return (x + eps * x.grad.sign()).clamp(0, 1).detach()


def l2_projection_right(x_adv, x, eps):
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta * (eps / norms).clamp(max=1)).clamp(0, 1)


def _input_grad(model, x, y, reduction="sum"):
    x = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
    return x.grad


def eot_right(model, x, y, samples):
    return sum(_input_grad(model, x, y) for _ in range(samples)) / samples


def conv_macs_right(c_in, c_out, k, h, w, stride=1, padding=0, dilation=1, groups=1):
    h_out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    return k * k * (c_in // groups) * c_out * h_out * w_out


def _average_ranks(v):
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - counts + (1 + counts) / 2)[inverse.reshape(-1)]


def spearman_right(x, y):
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def percentile_rank_right(all_acc, acc):
    return float(100 * (np.sum(all_acc < acc) + 0.5 * np.sum(all_acc == acc)) / len(all_acc))


def best_epoch_right(run_folder):
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(run_folder) / "history.jsonl").read_text().splitlines() if line.strip()]
    best = min(rows, key=lambda r: r["val_loss"])  # min keeps the first of ties
    return best["epoch"], best["genotype"]


def projected_hours_right(seconds_per_step, steps_per_epoch, epochs, eval_seconds_per_epoch=0.0):
    return epochs * (steps_per_epoch * seconds_per_step + eval_seconds_per_epoch) / 3600


def shard_plan_right(n_images, batch_size, world_size=1, drop_last=True):
    if batch_size % world_size:
        raise ValueError(f"{world_size} processes cannot share a batch of {batch_size}")
    steps = n_images // batch_size if drop_last else -(-n_images // batch_size)
    return steps, batch_size // world_size


def stub(*args, **kwargs):
    raise NotImplementedError


CHECKERS = {
    "check_stratified_split": split_right, "check_channel_stats": channel_stats_right,
    "check_pad_and_crop": pad_and_crop_right,
    "check_mixed_op": mixed_right, "check_darts_genotype": genotype_right,
    "check_finite_difference_hvp": hvp_right, "check_gumbel_softmax": gumbel_right,
    "check_straight_through": straight_through_right, "check_dirichlet_kl": kl_right,
    "check_architecture_kl": arch_kl_right, "check_genotype_from_posterior": nb201_right,
    "check_mean_field_kl": mean_field_kl_right,
    "check_local_reparameterisation": local_reparam_right, "check_coupled_kl": coupled_kl_right,
    "check_fgsm": fgsm_right, "check_l2_projection": l2_projection_right, "check_eot_gradient": eot_right,
    "check_conv_macs": conv_macs_right, "check_spearman": spearman_right,
    "check_percentile_rank": percentile_rank_right,
    "check_best_epoch": best_epoch_right, "check_projected_hours": projected_hours_right,
    "check_shard_plan": shard_plan_right,
}


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_reference_passes_and_a_stub_is_not_attempted(name):
    check = getattr(checks, name)
    result = check(CHECKERS[name])
    assert isinstance(result, checks.CheckResult) and result.status == "passed" and result.passed
    assert result.exercise == name.removeprefix("check_") and str(result).startswith("\N{CHECK MARK}")
    result = check(stub, stop=False)
    assert result.status == "not attempted" and "not written yet" in result.reason
    with pytest.raises(checks.NotAttempted) as err:
        check(stub)
    assert err.value.result == result


def test_every_chapter_checker_is_covered_here_or_in_test_evidence():
    names = {n for n in dir(checks) if n.startswith("check_")}
    # check_bridge_elbo is tested with its wrong answers in tests/test_bridge.py
    assert names == set(CHECKERS) | {"check_gaussian_kl", "check_elbo_estimator", "check_log_evidence",
                                     "check_bridge_elbo"}


# --- every chapter: at least three exercises, each check alone in the cell after its answer ---------------

@pytest.mark.parametrize("path", book.chapters(), ids=lambda p: p.stem)
def test_every_chapter_has_at_least_three_checked_exercises(path):
    found = grade.exercises(path)  # raises GradeError for an exercise that no check call names
    assert len(found) >= 3, f"{path.name} has {len(found)} checked exercises: {found}"
    for e in found:
        assert hasattr(checks, e.checker), f"{path.name}: {e.function} names an unknown checker {e.checker}"


def _cells(text: str) -> list[tuple[str, str]]:
    """(header, body) of every jupytext percent cell."""
    parts = re.split(r"^(# %%.*)$", text, flags=re.MULTILINE)
    return [(parts[i].strip(), parts[i + 1].strip()) for i in range(1, len(parts), 2)]


@pytest.mark.parametrize("path", book.chapters(), ids=lambda p: p.stem)
def test_every_check_sits_alone_in_the_cell_after_its_answer(path):
    """nbgrader grades an answer cell with a separate test cell: the solution cell holds the function, the next
    code cell only the one-line check that names it."""
    cells = _cells(path.read_text())
    answers = [i for i, (_, body) in enumerate(cells) if book.SOLUTION_BEGIN in body]
    assert answers, f"{path.name} has no exercise"
    for i in answers:
        header, body = cells[i]
        fn = re.search(r"^def (\w+)\(", body, flags=re.MULTILINE).group(1)
        assert "check_" not in body, f"{path.name}: the answer cell of {fn} also runs a check"
        assert i + 1 < len(cells), f"{path.name}: no cell after the answer {fn}"
        next_header, next_body = cells[i + 1]
        assert next_header == "# %%", f"{path.name}: the cell after {fn} is {next_header!r}, not a code cell"
        assert re.fullmatch(rf"(vnas\.)?checks\.check_\w+\({fn}\)", next_body), \
            f"{path.name}: the cell after {fn} must hold only its check, got {next_body!r}"


def test_an_exception_in_the_answer_is_a_wrong_answer_with_its_message():
    def crashes(x, ops, theta):
        return x[99]

    result = checks.check_mixed_op(crashes, stop=False)
    assert result.status == "wrong" and "IndexError" in result.reason
    with pytest.raises(checks.ExerciseError, match="IndexError") as err:
        checks.check_mixed_op(crashes)
    assert err.value.result.status == "wrong"


# --- plausible wrong answers, one diagnosis each ---------------------------------------------------

def _wrong(check, answer, message):
    result = check(answer, stop=False)
    assert result.status == "wrong", f"{check.__name__} accepted a wrong answer"
    assert message in result.reason, result.reason
    with pytest.raises(checks.ExerciseError, match=re.escape(message)):
        check(answer)


@pytest.mark.parametrize("answer, message", [
    (lambda y, seed=0: (np.arange(len(y) // 2), np.arange(len(y) // 2, len(y))), "half of every class"),
    (lambda y, seed=0: (np.arange(len(y)), np.arange(len(y) // 2)), "share indices"),
    (lambda y, seed=0: split_right(y, seed=None), "same seed must give the same split"),
    (lambda y, seed=0: split_right(y, seed=0), "different seed"),
    (lambda y, seed=0: tuple(m.astype(bool) for m in split_right(y, seed)), "integer index arrays"),
])
def test_stratified_split_checker_rejects(answer, message):
    _wrong(checks.check_stratified_split, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda x, ops, theta: sum(op(x) for op in ops) / len(ops), "averaged"),
    (lambda x, ops, theta: ops[int(theta.argmax())](x), "strongest op"),
    (lambda x, ops, theta: mixed_right(x, ops, theta.detach()), "differentiable"),
    (lambda x, ops, theta: mixed_right(x, ops, theta.flip(0)), "check the weighting"),
    (lambda x, ops, theta: mixed_right(x, ops, theta).mean(0), "shape"),
    (lambda x, ops, theta: mixed_right(x, ops, torch.softmax(theta, 0)), "softmax again"),
    (lambda x, ops, theta: sum(op(t * x) for t, op in zip(theta, ops, strict=True)), "weights its output"),
])
def test_mixed_op_checker_rejects(answer, message):
    _wrong(checks.check_mixed_op, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda theta: genotype_right(theta, exclude_none=False), "'none'"),
    (lambda theta: genotype_right(theta)[:6], "Return 8"),
    (lambda theta: [(op, src) for op, src in genotype_right(torch.softmax(theta.T, -1).T)], "node"),
    (lambda theta: [(src, op) for op, src in genotype_right(theta)], "(op name, input node)"),
])
def test_darts_genotype_checker_rejects(answer, message):
    _wrong(checks.check_darts_genotype, answer, message)


def _sum_ranked(theta, ops=spaces.darts.PRIMITIVES, edges=spaces.darts.EDGES):
    """Ranks edges by the sum of their non-'none' weights instead of the strongest one."""
    strength = theta[:, 1:].sum(-1)
    pairs = []
    for node in range(2, 6):
        incoming = sorted((e for e, (_, dst) in enumerate(edges) if dst == node), key=lambda e: -float(strength[e]))
        pairs += [(ops[1 + int(theta[e, 1:].argmax())], edges[e][0]) for e in incoming[:2]]
    return pairs


def test_darts_genotype_checker_rejects_a_sum_ranking():
    _wrong(checks.check_darts_genotype, _sum_ranked, "strongest non-'none' weight")


@pytest.mark.parametrize("answer, message", [
    (lambda g, w, v: -hvp_right(g, w, v), "sign is flipped"),
    (lambda g, w, v: 2 * hvp_right(g, w, v), "factor of 2"),
    (lambda g, w, v: (g(w + 0.01 / v.norm() * v) - g(w)) / (0.01 / v.norm()), "forward difference"),
    (lambda g, w, v: hvp_right(g, w, v, eps=0.01), "not 0.01."),
    (lambda g, w, v: hvp_right(g, w, v, eps=0.01 * v.norm()), "not 0.01 * ||v||"),
    (lambda g, w, v: hvp_right(g, w, v, eps=1e-3 / v.norm()), "step size matters"),
])
def test_hvp_checker_rejects_every_wrong_step(answer, message):
    """The test function is not quadratic, so the step size matters (a quadratic would accept them all)."""
    _wrong(checks.check_finite_difference_hvp, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda logits, tau, generator=None: torch.softmax(logits / tau - torch.log(-torch.log(
        torch.rand(logits.shape, generator=generator, dtype=logits.dtype))), -1), "divide the whole sum"),
    (lambda logits, tau, generator=None: torch.softmax((logits + torch.randn(
        logits.shape, generator=generator, dtype=logits.dtype)) / tau, -1), "Check the noise"),
    (lambda logits, tau, generator=None: gumbel_right(logits, tau, generator)[:1].expand_as(logits),
     "every row is the same"),
    (lambda logits, tau, generator=None: gumbel_right(logits, tau, None), "generators seeded alike"),
    (lambda logits, tau, generator=None: gumbel_right(logits, tau, generator).detach(), "not differentiable"),
])
def test_gumbel_checker_rejects(answer, message):
    _wrong(checks.check_gumbel_softmax, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda beta, c0: -kl_right(beta, c0), "negative of it"),
    (lambda beta, c0: posteriors.dirichlet_kl(torch.full_like(beta, c0), beta), "KL(Dir(c0) || Dir(beta))"),
    (lambda beta, c0: kl_right(beta, c0)[..., None].expand_as(beta) / beta.shape[-1], "one value per op"),
    (lambda beta, c0: kl_right(beta, 1.0), "must be 0 when beta = c0"),  # the prior's c0 ignored
    (lambda beta, c0: kl_right(beta, c0) / beta.shape[-1], "averaged over the ops"),
    (lambda beta, c0: kl_right(beta, c0) + ((beta - c0) * torch.digamma(beta.sum(-1, keepdim=True))).sum(-1),
     "psi(beta_0) term is missing"),
])
def test_dirichlet_kl_checker_rejects(answer, message):
    _wrong(checks.check_dirichlet_kl, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda betas, c0, n: arch_kl_right(betas, c0, n) * n, "Divide by num_data"),
    (lambda betas, c0, n: arch_kl_right(betas, c0, n) / sum(b.shape[0] for b in betas.values()), "averaging"),
    (lambda betas, c0, n: posteriors.dirichlet_kl(next(iter(betas.values())), c0).sum() / n, "one cell type"),
    (lambda betas, c0, n: arch_kl_right(betas, 1.0, n), "not the flat Dir(1)"),
    (lambda betas, c0, n: -arch_kl_right(betas, c0, n), "sign is flipped"),
    (lambda betas, c0, n: torch.tensor(0.0176, dtype=torch.float64), "expected"),  # a value hard-coded from case 0
    (lambda betas, c0, n: arch_kl_right(betas, c0, n) / len(betas), "Sum over the cell types"),
])
def test_architecture_kl_checker_rejects(answer, message):
    _wrong(checks.check_architecture_kl, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda beta: nb201_right(torch.cat([torch.zeros(6, 1), beta[:, 1:]], 1)), "'none' is an ordinary choice"),
    (lambda beta: spaces.nb201.Genotype.from_ops([spaces.nb201.PRIMITIVES[k % 5] for k in beta.argmax(0).tolist()]
                                                 + ["none"]), "last dimension"),  # argmax over edges
    (lambda beta: nb201_right(beta / beta.sum(0, keepdim=True)), "not over the edges"),
    (lambda beta: "not a genotype", "Return an NB201 genotype"),
])
def test_genotype_from_posterior_checker_rejects(answer, message):
    _wrong(checks.check_genotype_from_posterior, answer, message)


def test_genotype_from_posterior_accepts_the_argmax_of_beta_itself():
    """Normalising a row does not move its argmax: argmax of beta is a right answer, not a slip."""
    result = checks.check_genotype_from_posterior(lambda beta: nb201_right(beta * 7.0))
    assert result.passed


# --- chapter 05: the plausible wrong answers of each exercise, each rejected with its diagnosis -----------

@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda x, mu, sigma: (x @ mu.T, x @ (sigma * sigma).T), "square x"),
    (lambda x, mu, sigma: (x @ mu.T, (x @ sigma.T) ** 2), "standard deviations do not"),
    (lambda x, mu, sigma: (x @ mu.T, torch.sqrt((x * x) @ (sigma * sigma).T)), "standard deviation; return"),
    (lambda x, mu, sigma: (x @ mu.T, (x * x) @ sigma.T), "use σ², not σ"),
    (lambda x, mu, sigma: (mu @ x.T, (x * x) @ (sigma * sigma).T), "shape"),
    (lambda x, mu, sigma: (x @ mu.T + 0.1, (x * x) @ (sigma * sigma).T), "mean is wrong"),
    (lambda x, mu, sigma: tuple(t.detach() for t in local_reparam_right(x, mu, sigma)), "differentiable"),
])
def test_local_reparameterisation_rejects_plausible_wrong_answers(wrong, diagnosis):
    result = checks.check_local_reparameterisation(wrong, stop=False)
    assert result.status == "wrong" and diagnosis in result.reason, result.reason


def _coupled(scale_fn, extra=0.0, reduce="sum"):
    def kl(mu, sigma, theta, sigma0, eps):
        s = scale_fn(theta, sigma0, eps)
        terms = torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5 + extra
        return terms.sum() if reduce == "sum" else terms.mean()
    return kl


@pytest.mark.parametrize("wrong, diagnosis", [
    (_coupled(lambda t, s0, e: s0 * (t + e)), "divide by 1 + ε"),
    (_coupled(lambda t, s0, e: s0 * torch.sqrt((t + e) / (1 + e))), "variance"),
    (_coupled(lambda t, s0, e: s0 + 0 * t), "does not depend on θ"),
    (_coupled(lambda t, s0, e: s0 * (t + e) / (1 + e), extra=0.5), "−½"),
    (_coupled(lambda t, s0, e: s0 * (t + e) / (1 + e), reduce="mean"), "do not average"),
    (lambda mu, sigma, theta, sigma0, eps: coupled_kl_right(mu, sigma, torch.tensor(theta.item()), sigma0, eps),
     "keep θ a tensor"),
])
def test_coupled_kl_rejects_plausible_wrong_answers(wrong, diagnosis):
    result = checks.check_coupled_kl(wrong, stop=False)
    assert result.status == "wrong" and diagnosis in result.reason, result.reason


# --- chapter 07: FGSM, the L2 projection and the EOT gradient, each plausible slip rejected with its diagnosis ---

def _fgsm_wrong(step):
    def fgsm(model, x, y, eps):
        return step(x, _input_grad(model, x, y), eps)
    return fgsm


@pytest.mark.parametrize("wrong, diagnosis", [
    (_fgsm_wrong(lambda x, g, eps: x + eps * g.sign()), "leaves [0, 1]"),
    (_fgsm_wrong(lambda x, g, eps: (x - eps * g.sign()).clamp(0, 1)), "steps down the loss"),
    (_fgsm_wrong(lambda x, g, eps: (x + eps * g).clamp(0, 1)), "takes its sign"),
    (_fgsm_wrong(lambda x, g, eps: (x + eps * g.sign().clamp(min=0)).clamp(0, 1)), "only moves pixels up"),
    (_fgsm_wrong(lambda x, g, eps: (x + 2 * eps * g.sign()).clamp(0, 1)), "differs from clip"),
    (lambda model, x, y, eps: x[:, :1], "expected"),
])
def test_fgsm_checker_rejects_plausible_wrong_answers(wrong, diagnosis):
    result = checks.check_fgsm(wrong, stop=False)
    assert result.status == "wrong" and diagnosis in result.reason, result.reason


def _l2_wrong(rule):
    def project(x_adv, x, eps):
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
        return rule(x, delta, norms, eps)
    return project


@pytest.mark.parametrize("wrong, diagnosis", [
    (_l2_wrong(lambda x, d, n, eps: x + d * (eps / n).clamp(max=1)), "leaves [0, 1]"),
    (_l2_wrong(lambda x, d, n, eps: (x + d.clamp(-eps, eps)).clamp(0, 1)), "L∞ projection"),
    (_l2_wrong(lambda x, d, n, eps: (x + d * eps / n).clamp(0, 1)), "also the shorter ones"),
    (_l2_wrong(lambda x, d, n, eps: (x + d * min(1.0, eps / d.norm().item())).clamp(0, 1)), "whole batch"),
    (_l2_wrong(lambda x, d, n, eps: (x + d * (eps / n**2).clamp(max=1)).clamp(0, 1)), "differs from the projection"),
    (lambda x_adv, x, eps: x_adv.clamp(0, 1), "keeps δ = x_adv − x as it is"),  # was diagnosed as the L∞ projection
])
def test_l2_projection_checker_rejects_plausible_wrong_answers(wrong, diagnosis):
    result = checks.check_l2_projection(wrong, stop=False)
    assert result.status == "wrong" and diagnosis in result.reason, result.reason


def _eot_averaged_prediction(model, x, y, samples):
    x = x.clone().requires_grad_(True)
    log_p = torch.stack([torch.log_softmax(model(x), -1) for _ in range(samples)])
    log_mean = torch.logsumexp(log_p, 0) - math.log(samples)
    torch.nn.functional.nll_loss(log_mean, y, reduction="sum").backward()
    return x.grad


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda model, x, y, samples: sum(_input_grad(model, x, y) for _ in range(samples)), "sums the draws"),
    (lambda model, x, y, samples: _input_grad(model, x, y), "one draw's gradient"),
    (lambda model, x, y, samples: eot_right(model, x, y, samples) / len(y), "averages the loss over the batch"),
    (lambda model, x, y, samples: eot_right(model, x, y, samples).sign(), "sign of the gradient"),
    (_eot_averaged_prediction, "loss of the averaged prediction"),
    (lambda model, x, y, samples: eot_right(model, x, y, samples) * 1.1, "differs from"),
])
def test_eot_gradient_checker_rejects_plausible_wrong_answers(wrong, diagnosis):
    result = checks.check_eot_gradient(wrong, stop=False)
    assert result.status == "wrong" and diagnosis in result.reason, result.reason


# --- the exercises added for chapters 00, 03 and 05: each plausible slip rejected with its diagnosis ---------

def _stats_with(mean=None, std=None):
    def stats(x):
        right_mean, right_std = channel_stats_right(x)
        return (right_mean if mean is None else mean(x)), (right_std if std is None else std(x))
    return stats


@pytest.mark.parametrize("answer, message", [
    (lambda x: (x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)), "divide the pixels by 255"),
    (lambda x: ((x / 255).mean(), (x / 255).std()), "one per channel"),
    (lambda x: ((x / 255).mean((0, 2, 3)), (x / 255).std((0, 2, 3))), "NHWC"),  # NCHW axes on NHWC images
    (_stats_with(std=lambda x: channel_stats_right(x)[1] ** 2), "that is the variance"),
    (_stats_with(std=lambda x: torch.as_tensor(x / 255).std((0, 1, 2))), "NHW − 1"),  # torch.std's unbiased default
    (_stats_with(std=lambda x: (x / 255).std(axis=(1, 2)).mean(0)), "pools the pixels of all images"),
    (lambda x: channel_stats_right(x)[::-1], "return (mean, std)"),
    (_stats_with(mean=lambda x: np.full(3, (x / 255).mean())), "keep the channel axis"),
])
def test_channel_stats_checker_rejects(answer, message):
    _wrong(checks.check_channel_stats, answer, message)


def test_channel_stats_checker_accepts_float32_torch():
    def in_torch(x):
        t = torch.as_tensor(x).float() / 255
        return t.mean((0, 1, 2)), t.std((0, 1, 2), unbiased=False)
    assert checks.check_channel_stats(in_torch).passed


def _crop_from(shift):
    """A crop that takes out[k, i, j] = x[k, i + sy, j + sx] (0 outside) with (sy, sx) = shift(pad, dy, dx)."""
    def crop(x, pad, dy, dx):
        n, h, w, _ = x.shape
        sy, sx = shift(pad, dy, dx)
        p = int(max(sy.abs().max(), sx.abs().max()))
        padded = F.pad(x, (0, 0, p, p, p, p))
        return torch.stack([padded[k, p + sy[k]:p + sy[k] + h, p + sx[k]:p + sx[k] + w] for k in range(n)])
    return crop


def _reflect_crop(x, pad, dy, dx):
    n, h, w, _ = x.shape
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="reflect").permute(0, 2, 3, 1)
    return torch.stack([padded[k, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])


@pytest.mark.parametrize("answer, message", [
    (lambda x, pad, dy, dx: torch.stack([torch.roll(x[k], (pad - int(dy[k]), pad - int(dx[k])), (0, 1))
                                         for k in range(len(x))]), "(a roll)"),
    (_reflect_crop, "zero padding"),
    (lambda x, pad, dy, dx: pad_and_crop_right(x, pad, dx, dy), "dy and dx are swapped"),
    (_crop_from(lambda pad, dy, dx: (dy, dx)), "the offsets index the padded image"),
    (_crop_from(lambda pad, dy, dx: (pad - dy, pad - dx)), "the other way"),
    (lambda x, pad, dy, dx: pad_and_crop_right(x, pad, dy[:1].expand(len(x)), dx[:1].expand(len(x))),
     "each image has its own"),
    (lambda x, pad, dy, dx: F.pad(x, (0, 0, pad, pad, pad, pad)), "that is the padded image"),
    (lambda x, pad, dy, dx: x, "came back unchanged"),
])
def test_pad_and_crop_checker_rejects(answer, message):
    _wrong(checks.check_pad_and_crop, answer, message)


def test_pad_and_crop_cases_agree_with_the_library():
    """The checker's own closed form, Eq. (0.2), is the library's crop for the offsets the library draws."""
    from vnas.checks.data import _shift
    x = torch.randint(1, 256, (4, 5, 7, 3), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    draws = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 7, (4, 1, 1), generator=draws).view(-1)
    dx = torch.randint(0, 7, (4, 1, 1), generator=draws).view(-1)
    library = data.crop_flip(x, torch.Generator().manual_seed(3), pad=3, flip=False)
    assert torch.equal(_shift(x, dy - 3, dx - 3), library)
    assert torch.equal(pad_and_crop_right(x, 3, dy, dx), library)


def _st(sign=1.0, detach=True, tau_in_soft=True, noise_in_hard=True):
    def straight_through(logits, g, tau):
        soft = torch.softmax((logits + g) / (tau if tau_in_soft else 1.0), -1)
        hard = F.one_hot((logits + g if noise_in_hard else logits).argmax(-1), logits.shape[-1]).to(soft)
        return hard + sign * (soft - (soft.detach() if detach else soft))
    return straight_through


@pytest.mark.parametrize("answer, message", [
    (lambda logits, g, tau: torch.softmax((logits + g) / tau, -1), "that is the soft sample"),
    (lambda logits, g, tau: F.one_hot((logits + g).argmax(-1), logits.shape[-1]).to(logits), "no gradient reaches"),
    (_st(sign=-1.0), "wrong sign"),
    (_st(detach=False), "without the .detach()"),
    (_st(tau_in_soft=False), "divide by tau"),
    (_st(noise_in_hard=False), "without the noise"),
    (lambda logits, g, tau: torch.softmax((logits + g) / 0.1, -1), "only close to it"),  # a cold softmax
    (lambda logits, g, tau: torch.softmax((logits + g) / 0.01, -1), "must get exactly 0.0"),  # a colder one
    (lambda logits, g, tau: _st()(logits, -g, tau), "one-hot of argmax(logits + g)"),
])
def test_straight_through_checker_rejects(answer, message):
    _wrong(checks.check_straight_through, answer, message)


def test_straight_through_accepts_the_sum_written_without_brackets():
    """(y_hard + y_soft) - y_soft keeps the zeros exactly 0.0 and the ones within rounding of 1: still right."""
    def unbracketed(logits, g, tau):
        soft = torch.softmax((logits + g) / tau, -1)
        return F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft) + soft - soft.detach()
    assert checks.check_straight_through(unbracketed).passed


def _mean_field(sigma_of=F.softplus, reduce="sum", extra=0.0, prior=lambda s: s):
    def kl(mu, rho, s):
        sigma, s = sigma_of(rho), prior(s)
        terms = torch.log(s / sigma) + (sigma**2 + mu**2) / (2 * s**2) - 0.5 + extra
        return {"sum": terms.sum(), "mean": terms.mean(), "none": terms}[reduce]
    return kl


@pytest.mark.parametrize("answer, message", [
    (_mean_field(sigma_of=torch.exp), "not e^ρ"),
    (_mean_field(sigma_of=lambda rho: rho), "NaN"),  # ρ taken for σ
    (_mean_field(sigma_of=lambda rho: torch.log(1 + torch.exp(rho))), "rounds 1 + e^ρ to 1"),
    (_mean_field(sigma_of=lambda rho: F.softplus(rho).sqrt()), "not the variance: the KL has σ²"),
    (_mean_field(prior=lambda s: s * s), "s is the prior's standard deviation"),
    (_mean_field(reduce="mean"), "do not average"),
    (_mean_field(reduce="none"), "return one number"),
    (_mean_field(extra=0.5), "−½ per weight"),
    (lambda mu, rho, s: -mean_field_kl_right(mu, rho, s), "wrong sign"),
    (lambda mu, rho, s: mean_field_kl_right(mu.detach(), rho, s), "gradient with respect to μ"),
    (lambda mu, rho, s: torch.tensor(mean_field_kl_right(mu, rho, s).item(), dtype=torch.float64),
     "not differentiable"),
])
def test_mean_field_kl_checker_rejects(answer, message):
    _wrong(checks.check_mean_field_kl, answer, message)


def test_mean_field_kl_accepts_log1p():
    assert checks.check_mean_field_kl(_mean_field(sigma_of=lambda rho: torch.log1p(torch.exp(rho)))).passed


# --- chapter 08: a convolution's multiply-adds, Spearman's rho with ties, the percentile rank ---------------

def _conv_with(out_size=None, factor=1, groups_used=True, k_power=2):
    """conv_macs with one slip: ``out_size(n, k, s, p, d)`` for the output side, a factor, groups ignored, k^1."""
    def macs(c_in, c_out, k, h, w, stride=1, padding=0, dilation=1, groups=1):
        size = out_size or (lambda n, k, s, p, d: (n + 2 * p - d * (k - 1) - 1) // s + 1)
        c = c_in // groups if groups_used else c_in
        return factor * k ** k_power * c * c_out * size(h, k, stride, padding, dilation) * \
            size(w, k, stride, padding, dilation)
    return macs


@pytest.mark.parametrize("answer, message", [
    (_conv_with(factor=2), "counts one multiplication and its addition together"),
    (_conv_with(groups_used=False), "divide C_in by groups"),
    (_conv_with(out_size=lambda n, k, s, p, d: n + 2 * p - d * (k - 1)), "the stride is missing"),
    (_conv_with(out_size=lambda n, k, s, p, d: n), "counts the output at the input's size"),
    (_conv_with(out_size=lambda n, k, s, p, d: -(-(n + 2 * p - d * (k - 1) - 1) // s) + 1), "rounds down (floor)"),
    (_conv_with(out_size=lambda n, k, s, p, d: (n + 2 * p - (k - 1) - 1) // s + 1), "the dilation is missing"),
    (_conv_with(out_size=lambda n, k, s, p, d: (n - d * (k - 1) - 1) // s + 1), "the padding is missing"),
    (_conv_with(out_size=lambda n, k, s, p, d: -(-n // s)), "'same' padding"),
    (_conv_with(k_power=1), "k² weights per input channel"),
    (lambda *args: conv_macs_right(*args) + 0.5, "not a whole number"),
    (lambda *args: conv_macs_right(*args) + 1, "compare with Eqs. (8.1)-(8.2)"),
])
def test_conv_macs_checker_rejects(answer, message):
    _wrong(checks.check_conv_macs, answer, message)


def _ordinal(v):
    ranks = np.empty(len(v))
    ranks[np.argsort(v, kind="stable")] = np.arange(1, len(v) + 1)
    return ranks


def _no_ties_shortcut(rank):
    def rho(x, y):
        d = rank(x) - rank(y)
        return 1 - 6 * np.sum(d ** 2) / (len(x) * (len(x) ** 2 - 1))
    return rho


def _min_ranks(v):
    return np.searchsorted(np.sort(v), v, side="left") + 1.0


@pytest.mark.parametrize("answer, message", [
    (lambda x, y: float(np.corrcoef(x, y)[0, 1]), "Pearson's correlation of the values themselves"),
    (lambda x, y: float(np.corrcoef(_ordinal(x), _ordinal(y))[0, 1]), "tied values got different ranks"),
    (lambda x, y: float(np.corrcoef(np.argsort(x), np.argsort(y))[0, 1]), "is the order"),
    (lambda x, y: float(np.corrcoef(_min_ranks(x), _min_ranks(y))[0, 1]), "lowest rank of their group"),
    (_no_ties_shortcut(_average_ranks), "holds only without ties"),
    (_no_ties_shortcut(_ordinal), "tied values got different ranks"),  # = Pearson's r of ordinal ranks
    (lambda x, y: -spearman_right(x, y), "the sign is flipped"),
    (lambda x, y: (spearman_right(x, y), 0.01), "return only the correlation coefficient"),
    (lambda x, y: spearman_right(x, y) * 0.99, "compare with Eq. (8.3)"),
])
def test_spearman_checker_rejects(answer, message):
    _wrong(checks.check_spearman, answer, message)


def _sorting_in_place(all_acc, acc):
    all_acc.sort()
    return percentile_rank_right(all_acc, acc)


@pytest.mark.parametrize("answer, message", [
    (lambda a, acc: percentile_rank_right(a, acc) / 100, "multiply by 100"),
    (lambda a, acc: 100 * np.sum(a < acc) / len(a), "strictly below count"),
    (lambda a, acc: 100 * np.sum(a <= acc) / len(a), "count fully there"),
    (lambda a, acc: 100 - percentile_rank_right(a, acc), "counts the cells above"),
    (lambda a, acc: 100 * (np.sum(a < acc) + 0.5 * np.sum(a == acc)) / (len(a) - 1), "not N − 1"),
    (lambda a, acc: percentile_rank_right(np.unique(a), acc), "distinct accuracies"),
    (lambda a, acc: 100 * (np.sum(a < acc) + (np.sum(a == acc) + 1) / 2) / len(a), "half a cell more"),
    (_sorting_in_place, "changed the array"),
    (lambda a, acc: percentile_rank_right(a, acc) + 0.1, "compare with Eq. (8.5)"),
])
def test_percentile_rank_checker_rejects(answer, message):
    _wrong(checks.check_percentile_rank, answer, message)


def test_chapter_08_checkers_accept_torch_and_list_style_answers():
    assert checks.check_spearman(lambda x, y: torch.tensor(spearman_right(x, y))).passed
    assert checks.check_percentile_rank(lambda a, acc: np.float32(percentile_rank_right(a, acc))).passed
    assert checks.check_conv_macs(lambda *args: float(conv_macs_right(*args))).passed


def test_chapter_08_references_agree_with_scipy():
    """The checkers compute their references with numpy (scipy is no dependency of vnas); scipy agrees."""
    stats = pytest.importorskip("scipy.stats")
    from vnas.checks import imagenet

    for x, y, _ in imagenet._spearman_cases():
        assert math.isclose(spearman_right(x, y), stats.spearmanr(x, y).statistic, rel_tol=1e-12)
        for kind in ("average", "min", "max", "dense"):
            np.testing.assert_array_equal(imagenet._ranks(x, kind), stats.rankdata(x, method=kind))
    for table, acc, _ in imagenet._percentile_cases():
        assert math.isclose(percentile_rank_right(table, acc), stats.percentileofscore(table, acc, kind="mean"))


# --- chapter 06: the best epoch of a run folder, projected hours, a global batch over K processes -----------

def _rows(run_folder):
    import json
    from pathlib import Path

    return [json.loads(line) for line in (Path(run_folder) / "history.jsonl").read_text().splitlines() if line.strip()]


def _best_by(key, pick=min, index=False, last_tie=False, genotype=None):
    """best_epoch with one slip: another column, max instead of min, the row index, the last of ties, or the
    genotype from elsewhere (``genotype(run_folder, row)``)."""
    def best(run_folder):
        rows = _rows(run_folder)
        values = [r[key] if not isinstance(key, tuple) else r[key[0]][key[1]] for r in rows]
        target = pick(values)
        k = max(i for i, v in enumerate(values) if v == target) if last_tie else values.index(target)
        epoch = k if index else rows[k]["epoch"]
        return epoch, rows[k]["genotype"] if genotype is None else genotype(run_folder, rows[k])
    return best


def _final_genotype(run_folder, row):
    from pathlib import Path

    return str(spaces.load_genotype(str(Path(run_folder) / "genotype.json")))


def _writes_into_the_folder(run_folder):
    from pathlib import Path

    (Path(run_folder) / "best.txt").write_text("seen")
    return best_epoch_right(run_folder)


@pytest.mark.parametrize("answer, message", [
    (_best_by("val_loss", index=True), "the row's index, counted from 0"),
    (_best_by("val_acc", pick=max), "highest validation accuracy"),
    (_best_by("train_loss"), "lowest training loss"),
    (_best_by(("architecture", "nll")), "architecture-step NLL"),
    (_best_by("val_loss", last_tie=True), "take the earliest of them"),
    (lambda folder: (_rows(folder)[-1]["epoch"], _rows(folder)[-1]["genotype"]), "that is the last epoch"),
    (_best_by("val_loss", genotype=_final_genotype), "that is genotype.json"),
    (_best_by("val_loss", genotype=lambda folder, row: _rows(folder)[row["epoch"]]["genotype"]),
     "the genotype of epoch 4's row"),
    (lambda folder: best_epoch_right(folder)[0], "return a pair (epoch, genotype)"),
    (_writes_into_the_folder, "changed the files of the run folder"),
    (lambda folder: best_epoch_right(folder + "/"), "raised TypeError"),  # a str only: the chapter passes a Path
])
def test_best_epoch_checker_rejects(answer, message):
    _wrong(checks.check_best_epoch, answer, message)


@pytest.mark.parametrize("answer, message", [
    (lambda t, s, e, ev=0.0: projected_hours_right(t, s, e, ev) * 3600, "that is in seconds"),
    (lambda t, s, e, ev=0.0: projected_hours_right(t, s, e, ev) * 60, "that is in minutes"),
    (lambda t, s, e, ev=0.0: projected_hours_right(t, s, e, ev) / 24, "that is in days"),
    (lambda t, s, e, ev=0.0: e * s * t / 3600, "the per-epoch evaluation is missing"),
    (lambda t, s, e, ev=0.0: e * s * (t + ev) / 3600, "not after every step"),
    (lambda t, s, e, ev=0.0: (e * s * t + ev) / 3600, "not once per run"),
    (lambda t, s, e, ev=0.0: (s * t + ev) / 3600, "multiply by the number of epochs"),
    (lambda t, s, e, ev: projected_hours_right(t, s, e, ev), "give it the default 0.0"),
    (lambda t, s, e, ev=1.0: projected_hours_right(t, s, e, ev), "the default is 0.0"),
    (lambda t, s, e, ev=0.0: (projected_hours_right(t, s, e, ev), "h"), "return a number"),
    (lambda t, s, e, ev=0.0: projected_hours_right(t, s, e, ev) * 1.01, "compare with Eq. (6.2)"),
])
def test_projected_hours_checker_rejects(answer, message):
    _wrong(checks.check_projected_hours, answer, message)


def _shard_with(steps=None, per=None, check=True):
    """shard_plan with one slip: ``steps(N, B, K, drop_last)``, ``per(B, K)``, or no ValueError."""
    def plan(n_images, batch_size, world_size=1, drop_last=True):
        if check and batch_size % world_size:
            raise ValueError("indivisible")
        right = shard_plan_right(n_images, batch_size, 1, drop_last)[0]
        return (right if steps is None else steps(n_images, batch_size, world_size, drop_last),
                batch_size // world_size if per is None else per(batch_size, world_size))
    return plan


@pytest.mark.parametrize("answer, message", [
    (_shard_with(steps=lambda n, b, k, d: -(-n // b)), "keeps only full batches"),
    (_shard_with(steps=lambda n, b, k, d: n // b), "keeps the last partial batch"),
    (_shard_with(steps=lambda n, b, k, d: n // (b * k) if d else -(-n // (b * k))), "do not depend on K"),
    (_shard_with(steps=lambda n, b, k, d: n // (b // k) if d else -(-n // (b // k))), "one global batch"),
    (_shard_with(per=lambda b, k: b), "not the whole batch B"),
    (_shard_with(steps=lambda n, b, k, d: n / b), "not a whole number"),
    (_shard_with(check=False), "raise a ValueError"),
    (lambda n, b, k=1, d=True: shard_plan_right(n, b, k, d)[0], "return a pair"),
    (lambda n, b, k=1, d=True: (*shard_plan_right(n, b, k, d), k), "return a pair"),
    (lambda n, b, k, d: shard_plan_right(n, b, k, d), "give world_size the default 1"),
    (lambda n, b, k=1, d=False: shard_plan_right(n, b, k, d), "with the defaults (world_size=1, drop_last=True)"),
    (_shard_with(per=lambda b, k: b // k + (k > 2)), "images per process should be"),
])
def test_shard_plan_checker_rejects(answer, message):
    _wrong(checks.check_shard_plan, answer, message)


def test_chapter_06_checkers_accept_numpy_torch_and_genotype_objects():
    assert checks.check_projected_hours(lambda t, s, e, ev=0.0: np.float32(projected_hours_right(t, s, e, ev))).passed
    assert checks.check_shard_plan(lambda n, b, k=1, d=True: (shard_plan_right(n, b, k, d)[0], b / k)).passed
    assert checks.check_projected_hours(lambda t, s, e, ev=0.0: torch.tensor(projected_hours_right(t, s, e, ev),
                                                                             dtype=torch.float64)).passed
    assert checks.check_shard_plan(lambda *a: tuple(np.int64(v) for v in shard_plan_right(*a))).passed
    assert checks.check_best_epoch(lambda f: (np.int64(best_epoch_right(f)[0]),
                                              spaces.load_genotype(best_epoch_right(f)[1]))).passed
