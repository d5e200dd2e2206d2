"""One evaluator for every model: accuracy, negative log-likelihood and the predictions.

``evaluate(model, batches, samples=S)`` averages the predictive probabilities of S forward passes: for a
stochastic model (sampled weights or architectures) that is the Monte Carlo posterior predictive
p(y | x, D) ≈ 1/S Σ_s p(y | x, w_s, θ_s); for a deterministic one, S = 1 is all it needs. Models take
pixels in [0, 1] (they normalise inside). Metrics accumulate on the device and are read back once.

Place in the flow: ... -> networks/train -> **metrics** -> attacks -> plots.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, batches, samples: int = 1, max_batches: int | None = None,
             amp: bool = False) -> dict:
    """Accuracy, mean NLL and predictive probabilities of ``model`` on ``batches`` (an iterable of (x, y)).

    - ``samples``: forward passes per batch whose probabilities are averaged (the posterior predictive);
    - ``max_batches``: stop after that many batches (None: all);
    - ``amp``: bf16 autocast on CUDA (the NLL is still computed in float32).
    The model is put in eval mode for the evaluation and returned to its mode afterwards.
    Returns {"acc", "nll", "n", "probs" [n, classes] (CPU), "labels" [n] (CPU)}.
    Introduced in chapters/02_darts.py.
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (forward passes averaged per batch), got {samples!r}.")
    was_training = model.training
    model.eval()
    probs, labels = [], []
    correct = nll_sum = None
    try:
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
            # log of the mean probability over the samples, computed stably
            log_mean = torch.logsumexp(torch.stack(log_p), dim=0) - math.log(samples)
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
    return {"acc": acc / n, "nll": nll / n, "n": n, "probs": probs_t, "labels": labels_t}


__all__ = ["evaluate"]
