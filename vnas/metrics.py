"""One evaluator for every model: accuracy, negative log-likelihood, calibration and the predictions.

``evaluate(model, batches, samples=S)`` averages the predictive probabilities of S forward passes: for a
stochastic model (sampled weights or architectures) that is the Monte Carlo posterior predictive
p(y | x, D) ≈ 1/S Σ_s p(y | x, w_s, θ_s); for a deterministic one, S = 1 is all it needs. Models take
pixels in [0, 1] (they normalise inside). Accuracy and NLL accumulate on the device and are read back
once; the calibration metrics (ECE, Brier score, predictive entropy) are small functions of the
predictive probabilities and labels, each usable on its own.

Place in the flow: ... -> networks/train -> **metrics** -> attacks -> plots.
Introduced in chapters/02_darts.py (accuracy, NLL) and chapters/05_bayesian_weights.py (calibration).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from vnas import bayes

__all__ = ["evaluate", "log_average", "nll_of_average", "reliability", "expected_calibration_error",
           "brier_score", "predictive_entropy"]


# --- the posterior predictive ---------------------------------------------------------------------

def log_average(log_probs: torch.Tensor) -> torch.Tensor:
    """log p̄(y | x) = log (1/S Σ_s p_s(y | x)) = logsumexp_s log p_s(y | x) − log S, computed stably.

    ``log_probs``: [S, n, K] log-probabilities of S samples (forward passes); returns [n, K].
    Introduced in chapters/05_bayesian_weights.py.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [S, n, K] (samples, data, classes), got shape {tuple(log_probs.shape)}; "
                         f"stack the samples' log_softmax outputs with torch.stack.")
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


def nll_of_average(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-datum NLL of the Monte Carlo predictive: −log p̄(y_i | x_i), with p̄ the average over S samples
    (``log_average``); ``log_probs`` [S, n, K], ``labels`` [n]; returns [n]. Not the average of the
    samples' NLLs, which is larger (Jensen). Introduced in chapters/05_bayesian_weights.py.
    """
    log_mean = log_average(log_probs)
    labels = torch.as_tensor(labels, device=log_mean.device)
    if labels.shape != log_mean.shape[:1]:
        raise ValueError(f"labels must be [n] = [{log_mean.shape[0]}] class indices, got shape {tuple(labels.shape)}.")
    return -log_mean.gather(1, labels.long()[:, None]).squeeze(1)


# --- calibration ------------------------------------------------------------------------------------

def _check(probs, labels=None):
    """probs as a float tensor [n, K] (n >= 1) and labels as a long tensor [n] on its device."""
    probs = torch.as_tensor(probs)
    if probs.dim() != 2 or len(probs) == 0:
        raise ValueError(f"probs must be a 2-D [n, K] matrix of predictive probabilities (n >= 1), "
                         f"got shape {tuple(probs.shape)}; pass e.g. evaluate(...)['probs'].")
    if not probs.is_floating_point():
        probs = probs.double()
    if labels is None:
        return probs
    labels = torch.as_tensor(labels, device=probs.device)
    if labels.dim() != 1 or len(labels) != len(probs):
        raise ValueError(f"labels must be a 1-D vector of {len(probs)} class indices (one per row of probs), "
                         f"got shape {tuple(labels.shape)}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1} (probs has {probs.shape[1]} classes), "
                         f"got [{labels.min().item()}, {labels.max().item()}].")
    return probs, labels.long()


def reliability(probs, labels, bins: int = 15) -> dict:
    """The reliability diagram's numbers: predictions grouped by confidence into ``bins`` equal-width bins.

    Confidence c_i = max_k p_ik, prediction ŷ_i = argmax_k p_ik. Bin b (b = 0..B−1) holds the c_i in
    (b/B, (b+1)/B]: a confidence on an edge goes to the bin below it, the first bin also holds c = 0, and
    c = 1.0 falls in the last bin (as in Guo et al., 2017). The edges are ``torch.linspace(0, 1, B + 1)`` in
    the dtype of ``probs``. torchmetrics' MulticlassCalibrationError uses [b/B, (b+1)/B) and puts c = 1.0
    into an extra bin, so the two agree except for confidences exactly on an edge (1.0 included).
    Returns {"confidence": mean c per bin, "accuracy": mean 1[ŷ = y] per bin (both nan where empty),
    "count": n_b, "edges": [B + 1]} as CPU tensors.
    Introduced in chapters/05_bayesian_weights.py.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1 (equal-width confidence bins over [0, 1]), got {bins!r}.")
    probs, labels = _check(probs, labels)
    probs, labels = probs.detach().cpu(), labels.cpu()
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == labels).to(probs.dtype)
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)
    b = torch.bucketize(confidence, edges[1:-1], right=False)  # edges[b] < c <= edges[b + 1]
    count = torch.bincount(b, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=probs.dtype).index_add_(0, b, confidence)
    correct_sum = torch.zeros(bins, dtype=probs.dtype).index_add_(0, b, correct)
    return {"confidence": conf_sum / count, "accuracy": correct_sum / count, "count": count, "edges": edges}


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE = Σ_b (n_b / n) |acc_b − conf_b|, over the equal-width confidence bins of ``reliability`` (bin b is
    (b/B, (b+1)/B]; the first bin also holds confidence 0, and confidence 1.0 lands in the last bin).
    Empty bins contribute nothing. Introduced in chapters/05_bayesian_weights.py.
    """
    r = reliability(probs, labels, bins)
    filled = r["count"] > 0
    weight = r["count"][filled] / r["count"].sum()
    return (weight * (r["accuracy"][filled] - r["confidence"][filled]).abs()).sum().item()


def brier_score(probs, labels) -> float:
    """Brier = 1/n Σ_i Σ_k (p_ik − 1[y_i = k])²: 0 for a certain, correct predictor, up to 2 for a certain,
    wrong one. Introduced in chapters/05_bayesian_weights.py.
    """
    probs, labels = _check(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return ((probs - one_hot) ** 2).sum(dim=1).mean().item()


def predictive_entropy(probs) -> torch.Tensor:
    """H[p̄(· | x_i)] = −Σ_k p_ik log p_ik per datum (0 log 0 = 0), in nats: 0 for a one-hot, log K for
    uniform. Returns the vector [n]. Introduced in chapters/05_bayesian_weights.py.
    """
    probs = _check(probs)
    return -torch.special.xlogy(probs, probs).sum(dim=1)


# --- the evaluator ----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, batches, samples: int = 1, max_batches: int | None = None,
             amp: bool = False) -> dict:
    """Accuracy, mean NLL, calibration and predictive probabilities of ``model`` on ``batches`` (an iterable of (x, y)).

    - ``samples``: forward passes per batch whose probabilities are averaged (the posterior predictive). With
      ``samples > 1`` the Bayesian layers of ``vnas.bayes`` sample their weights (with eval-mode BatchNorm);
      with 1 a Bayesian network is its mean network, unless its sampling flag is already on;
    - ``max_batches``: stop after that many batches (None: all);
    - ``amp``: bf16 autocast on CUDA (the NLL is still computed in float32).
    The model is put in eval mode for the evaluation and returned to its mode afterwards.
    Returns {"acc", "nll", "n", "probs" [n, classes] (CPU), "labels" [n] (CPU), "ece" (15 bins), "brier",
    "entropy" (mean predictive entropy, nats)}.
    Introduced in chapters/02_darts.py; calibration in chapters/05_bayesian_weights.py.
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (forward passes averaged per batch), got {samples!r}.")
    was_training = model.training
    model.eval()
    probs, labels = [], []
    correct = nll_sum = None
    sampled = bayes.sampling(model, True) if samples > 1 and bayes.is_bayesian(model) else contextlib.nullcontext()
    try:
        with sampled:
            for i, (x, y) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and x.device.type == "cuda"
                            else contextlib.nullcontext())
                log_p = []
                for _ in range(samples):
                    with autocast:
                        out = model(x)
                    log_p.append(torch.log_softmax(out.float(), dim=-1))
                log_mean = log_average(torch.stack(log_p))
                batch_correct = (log_mean.argmax(-1) == y).sum()
                batch_nll = -log_mean.gather(1, y[:, None]).sum()
                correct = batch_correct if correct is None else correct + batch_correct
                nll_sum = batch_nll if nll_sum is None else nll_sum + batch_nll
                probs.append(log_mean.exp())
                labels.append(y)
    finally:
        model.train(was_training)
    if correct is None:
        raise ValueError("evaluate got no batches: give at least one (x, y) batch.")
    probs_t, labels_t = torch.cat(probs).cpu(), torch.cat(labels).cpu()
    n = len(labels_t)
    acc, nll = torch.stack([correct.float(), nll_sum.float()]).tolist()  # the one read back
    return {"acc": acc / n, "nll": nll / n, "n": n, "probs": probs_t, "labels": labels_t,
            "ece": expected_calibration_error(probs_t, labels_t), "brier": brier_score(probs_t, labels_t),
            "entropy": predictive_entropy(probs_t).mean().item()}
