from dataclasses import dataclass

import pytest
import torch

from vnas import config


def test_mode_default_and_valid(monkeypatch):
    monkeypatch.delenv("VNAS_MODE")
    assert config.mode() == "quick"
    for m in config.MODES:
        monkeypatch.setenv("VNAS_MODE", m.upper())
        assert config.mode() == m


def test_unknown_mode_names_valid_ones(monkeypatch):
    monkeypatch.setenv("VNAS_MODE", "fast")
    with pytest.raises(config.ConfigError, match="smoke, quick, full"):
        config.mode()


def test_setup_makes_runs_repeatable():
    config.setup(3)
    a = torch.randn(5), torch.nn.Linear(4, 2).weight.detach().clone()
    config.setup(3)
    b = torch.randn(5), torch.nn.Linear(4, 2).weight.detach().clone()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    config.setup(4)
    assert not torch.equal(torch.randn(5), a[0])


def test_device_override(monkeypatch):
    monkeypatch.setenv("VNAS_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")
    monkeypatch.setenv("VNAS_DEVICE", "banana")
    with pytest.raises(config.ConfigError, match="not a torch device"):
        config.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("VNAS_DEVICE", "cuda")
        with pytest.raises(config.ConfigError, match="no CUDA"):
            config.device()


def test_paths_do_not_depend_on_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (config.DATA_DIR / "cifar10_tiny.npz").is_file()
    assert config.CONFIG_DIR.parent == config.ROOT


def test_banner_names_mode_device_and_torch(monkeypatch):
    line = config.banner("somewhere")
    assert "mode: smoke" in line and "somewhere" in line and torch.__version__ in line
    assert "not results" in line
    monkeypatch.setenv("VNAS_MODE", "quick")
    assert "not results" not in config.banner()


@dataclass
class Demo:
    lr: float = 0.1
    epochs: int = 2


def test_load_config_layers_and_unknown_key(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text("lr = 0.5\n")
    assert config.load_config(Demo, None, flat, epochs=7) == Demo(0.5, 7)
    moded = tmp_path / "moded.toml"
    moded.write_text("[smoke]\nepochs = 1\n[full]\nepochs = 600\n")
    assert config.load_config(Demo, None, moded, run_mode="full").epochs == 600
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    with pytest.raises(config.ConfigError, match="Did you mean 'epochs'"):
        config.load_config(Demo, None, bad)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load_config(Demo, None, tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 1\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load_config(Demo, None, broken)
    wrong_type = tmp_path / "wrong_type.toml"
    wrong_type.write_text('epochs = "ten"\n')
    with pytest.raises(config.ConfigError, match="epochs"):
        config.load_config(Demo, None, wrong_type)
