"""Calibration metrics against hand computations and torchmetrics, the evaluator's new keys, the shifted inputs
and the calibration plots."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from vnas import data, metrics, plots

matplotlib.use("Agg")


def _random_probs(n, k, seed=0, temperature=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=gen, dtype=torch.float64) * 3 / temperature, dim=1)


# --- ECE and the reliability bins -----------------------------------------------------------------------------

def test_ece_matches_torchmetrics_on_random_probabilities():
    tm = pytest.importorskip("torchmetrics.classification")
    for seed, k in [(0, 10), (1, 3), (2, 2)]:
        probs = _random_probs(2000, k, seed).float()
        labels = torch.randint(0, k, (2000,), generator=torch.Generator().manual_seed(seed + 10))
        assert probs.max() < 1
        ours = metrics.expected_calibration_error(probs, labels, bins=15)
        theirs = tm.MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(probs, labels).item()
        assert ours == pytest.approx(theirs, abs=1e-5), (seed, k)
        assert ours > 0.01


def test_ece_by_hand_with_a_confidence_of_exactly_one():
    # B = 4 bins (0, .25], (.25, .5], (.5, .75], (.75, 1]; confidences 0.35 (predicts class 1: wrong),
    # 0.5 (right; on an edge -> bin 1), 0.8 (right), 1.0 (wrong; the last bin, not an extra one)
    probs = torch.tensor([[0.3, 0.35, 0.35], [0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 2])
    r = metrics.reliability(probs, labels, bins=4)
    assert r["count"].tolist() == [0, 2, 0, 2]
    assert torch.isnan(r["confidence"][0]) and torch.isnan(r["accuracy"][2])
    assert r["confidence"][1].item() == pytest.approx((0.35 + 0.5) / 2)
    assert r["confidence"][3].item() == pytest.approx(0.9)
    assert r["accuracy"][[1, 3]].tolist() == [0.5, 0.5]
    assert r["edges"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    expected = 2 / 4 * abs(0.5 - 0.425) + 2 / 4 * abs(0.5 - 0.9)
    assert metrics.expected_calibration_error(probs, labels, bins=4) == pytest.approx(expected)
    # confidence 0 (all-zero row, degenerate but allowed) goes to the first bin
    assert metrics.reliability(torch.zeros(1, 3), torch.tensor([0]), bins=4)["count"].tolist() == [1, 0, 0, 0]


def test_ece_is_small_for_a_calibrated_predictor_and_large_for_an_overconfident_one():
    gen = torch.Generator().manual_seed(3)
    n, k = 20000, 10
    probs = _random_probs(n, k, seed=4)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # y ~ p: calibrated by construction
    assert metrics.expected_calibration_error(probs, labels) < 0.02
    sharpened = torch.softmax(probs.log() * 4, dim=1)  # same argmax, far more confident
    assert metrics.expected_calibration_error(sharpened, labels) > 0.15


# --- Brier, entropy, the Monte Carlo predictive --------------------------------------------------------------

def test_brier_and_entropy_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    brier = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.5 ** 2 + 0.5 ** 2 + 1.0)) / 2
    assert metrics.brier_score(probs, labels) == pytest.approx(brier)
    h = metrics.predictive_entropy(probs)
    assert h.shape == (2,)
    assert h.tolist() == pytest.approx([-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
                                        math.log(2)])
    assert metrics.predictive_entropy(torch.eye(4)).tolist() == [0, 0, 0, 0]
    assert metrics.predictive_entropy(torch.full((1, 7), 1 / 7)).item() == pytest.approx(math.log(7))
    assert metrics.brier_score(torch.eye(3), torch.tensor([0, 1, 2])) == 0
    assert metrics.brier_score(torch.eye(3), torch.tensor([1, 2, 0])) == 2


def test_log_average_and_nll_of_average_against_a_direct_computation():
    gen = torch.Generator().manual_seed(5)
    log_p = torch.log_softmax(torch.randn(4, 6, 3, generator=gen, dtype=torch.float64) * 5, dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mean_p = log_p.exp().mean(0)
    assert torch.allclose(metrics.log_average(log_p), mean_p.log())
    direct = -mean_p[torch.arange(6), labels].log()
    assert torch.allclose(metrics.nll_of_average(log_p, labels), direct)
    # the NLL of the average is at most the average of the samples' NLLs (Jensen)
    assert (direct <= -log_p[:, torch.arange(6), labels].mean(0) + 1e-12).all()


def test_bad_inputs_say_what_to_pass():
    probs, labels = _random_probs(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"2-D \[n, K\]"):
        metrics.expected_calibration_error(probs[0], labels)
    with pytest.raises(ValueError, match="1-D vector of 5 class indices"):
        metrics.brier_score(probs, labels[:4])
    with pytest.raises(ValueError, match="bins must be an integer >= 1"):
        metrics.reliability(probs, labels, bins=0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        metrics.brier_score(probs, labels + 3)
    with pytest.raises(ValueError, match=r"\[S, n, K\]"):
        metrics.log_average(probs.log())


# --- evaluate's new keys ----------------------------------------------------------------------------------------

class _Dropout(nn.Module):
    """A tiny classifier whose dropout stays on in eval mode: a stochastic model."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(12, 4)

    def forward(self, x):
        return self.linear(nn.functional.dropout(x.flatten(1), p=0.5, training=True))


def _batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 3, 2, 2, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(3)]


def test_evaluate_reports_calibration_for_deterministic_and_stochastic_models():
    torch.manual_seed(0)
    det = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    batches = _batches()
    out = metrics.evaluate(det, batches, samples=1)
    assert set(out) >= {"acc", "nll", "n", "probs", "labels", "ece", "brier", "entropy"}
    assert out["ece"] == pytest.approx(metrics.expected_calibration_error(out["probs"], out["labels"]))
    assert out["brier"] == pytest.approx(metrics.brier_score(out["probs"], out["labels"]))
    assert out["entropy"] == pytest.approx(metrics.predictive_entropy(out["probs"]).mean().item())
    assert 0 <= out["ece"] <= 1 and 0 <= out["brier"] <= 2 and 0 <= out["entropy"] <= math.log(4) + 1e-6

    stochastic = _Dropout()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    torch.manual_seed(1)
    out = metrics.evaluate(stochastic, batches, samples=3)
    torch.manual_seed(1)  # the same dropout masks, batch by batch, sample by sample
    log_p = torch.cat([torch.stack([torch.log_softmax(stochastic(xb), -1) for _ in range(3)], 0)
                       for xb, _ in batches], dim=1)
    assert torch.allclose(out["probs"], metrics.log_average(log_p).exp(), atol=1e-6)
    assert out["nll"] == pytest.approx(metrics.nll_of_average(log_p, y).mean().item(), rel=1e-5)
    assert out["n"] == len(x)
    assert out["ece"] == pytest.approx(metrics.expected_calibration_error(out["probs"], y))


# --- shifted inputs ---------------------------------------------------------------------------------------------

def _smooth_images(n=6, size=32, seed=0):
    """Real-looking stand-ins: smooth random colour fields plus a sharp-edged square, uint8 NHWC."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=gen)
    x = nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    x[:, :, size // 4:size // 2, size // 4:size // 2] = torch.rand(n, 3, 1, 1, generator=gen)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@pytest.mark.parametrize("kind", data.SHIFTS)
def test_shift_keeps_type_and_range_grows_with_severity_and_is_deterministic(kind):
    x = _smooth_images()
    distances = []
    for severity in range(1, 6):
        out = data.shift(x, kind, severity, seed=3)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == x.shape
        distances.append(np.abs(out.astype(float) - x).mean())
    assert distances[0] > 0.1, distances  # severity 1 already changes the images
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), (kind, distances)
    assert np.array_equal(data.shift(x, kind, 4, seed=3), data.shift(x, kind, 4, seed=3))
    t = torch.from_numpy(x)
    out_t = data.shift(t, kind, 2, seed=3)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.uint8 and out_t.shape == t.shape
    assert np.array_equal(out_t.numpy(), data.shift(x, kind, 2, seed=3))
    assert np.array_equal(x, _smooth_images()), "the input must not be modified"


def test_shift_noise_depends_on_the_seed_and_contrast_keeps_the_mean():
    x = _smooth_images()
    assert not np.array_equal(data.shift(x, "noise", 3, seed=0), data.shift(x, "noise", 3, seed=1))
    low = data.shift(x, "contrast", 5).astype(float)
    assert np.abs(low.mean(axis=(1, 2)) - x.mean(axis=(1, 2))).max() < 1.0
    assert low.std(axis=(1, 2)).mean() < 0.2 * x.astype(float).std(axis=(1, 2)).mean()


def test_shift_bad_inputs_raise_clearly():
    x = _smooth_images(2)
    with pytest.raises(ValueError, match=r"Unknown shift 'nosie'\. Did you mean 'noise'\?.*noise, blur"):
        data.shift(x, "nosie", 1)
    with pytest.raises(ValueError, match=r"severity must be an integer 1\.\.5"):
        data.shift(x, "blur", 0)
    with pytest.raises(ValueError, match=r"severity must be an integer 1\.\.5"):
        data.shift(x, "blur", 6)
    with pytest.raises(ValueError, match=r"uint8 images \(N, H, W, C\)"):
        data.shift(x.astype(np.float32) / 255, "noise", 1)
    with pytest.raises(ValueError, match=r"uint8 images \(N, H, W, C\)"):
        data.shift(x[0], "noise", 1)


# --- plots draw -------------------------------------------------------------------------------------------------

def test_calibration_plots_draw():
    import matplotlib.pyplot as plt

    probs = _random_probs(300, 10)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    ax = plots.plot_reliability(probs, labels, label="model")
    ece = metrics.expected_calibration_error(probs, labels)
    assert any(f"{100 * ece:.1f}%" in t.get_text() for t in ax.get_legend().get_texts())
    assert plots.plot_reliability(probs.numpy(), labels.numpy(), bins=5, ax=ax) is ax
    assert [line.get_label() for line in ax.get_lines()].count("perfect calibration") == 1
    assert len(ax.containers) == 2
    ax = plots.plot_shift({"a": {"noise": [0.9, 0.8, 0.7], "blur": [0.9, 0.85, 0.8]}, "b": {"noise": [0.8, 0.6, 0.4]}},
                          ylabel="accuracy")
    assert len(ax.get_lines()) == 3
    plt.close("all")


def test_robust_accuracy_plot_marks_every_budget():
    ax = plots.plot_robust_accuracy({"a": ([0, 1 / 255, 8 / 255], [0.5, 0.3, 0.0], [0.02, 0.03, 0.0]),
                                     "b": ([0, 2 / 255], [0.4, 0.2], None)}, reference={"paper": (1 / 255, 0.3)})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "8"]
    assert len(ax.get_lines()) == 3 and len(ax.collections) == 1  # two curves + the reference; one band
