"""The final-network trainer and its configs."""

import pytest
import torch

from vnas import config, data, spaces, train


def test_configs_resolve_for_both_spaces():
    full = train.load_train_config("DARTS_V2", run_mode="full")
    assert (full.layers, full.channels, full.epochs, full.batch_size, full.cutout, full.auxiliary_weight,
            full.drop_path) == (20, 36, 600, 96, 16, 0.4, 0.2)
    best, _ = spaces.nb201_table.table_best()
    nb = train.load_train_config(str(best), run_mode="full")
    assert (nb.layers, nb.channels) == (5, 16)
    for m in config.MODES:
        train.load_train_config("DARTS_V1", run_mode=m)


def test_training_reduces_loss_on_a_fixed_batch():
    cfg = train.load_train_config("DARTS_V2", run_mode="smoke", epochs=30, steps_per_epoch=1, images_per_class=2,
                                  batch_size=20, cutout=0, lr=0.05)
    d = data.load_cifar10(tiny=True)
    t = train.Trainer(cfg, dataset=d, device=torch.device("cpu"), progress=False)
    history = t.fit(log=None)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert t.model.drop_path_prob == pytest.approx(cfg.drop_path * 29 / 30)


def test_bad_train_config():
    with pytest.raises(ValueError, match="drop_path"):
        train.TrainConfig(drop_path=1.5)
    with pytest.raises(ValueError, match="conv_9x9.*not an NB201 op"):
        train.load_train_config("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_a_bayesian_final_network_trains_and_its_predictive_averages_weight_samples():
    from vnas import bayes, metrics

    cell = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    cfg = train.load_train_config(cell, run_mode="smoke", weights="gaussian", weight_prior="mixture", eval_samples=3,
                                  weight_sigma_init=0.05)
    t = train.Trainer(cfg, dataset=data.load_cifar10(tiny=True), device=torch.device("cpu"), progress=False)
    assert isinstance(t.weight_prior, bayes.ScaleMixturePrior) and bayes.is_bayesian(t.model)
    row = t.fit(log=None)[-1]
    assert row["weights"]["weight_kl"] > 0 and "test_ece" in row
    buffers = {k: v.clone() for k, v in t.model.state_dict().items() if "running" in k}
    mean_net = metrics.evaluate(t.model, t.test_batches)  # S = 1: the mean weights, deterministic
    assert metrics.evaluate(t.model, t.test_batches)["nll"] == mean_net["nll"]
    sampled = [metrics.evaluate(t.model, t.test_batches, samples=3)["nll"] for _ in range(2)]
    assert sampled[0] != sampled[1] and sampled[0] != mean_net["nll"]  # weight samples, drawn afresh
    after = t.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in buffers.items())  # eval-mode BatchNorm: statistics untouched
    assert all(m.sampling is None for _, m in bayes.variational_layers(t.model))  # the flag is restored
    shifted = t.evaluate(shift=("contrast", 5))
    assert shifted["n"] == mean_net["n"] and shifted["acc"] >= 0
