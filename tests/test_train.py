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
