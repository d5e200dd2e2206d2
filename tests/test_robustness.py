"""vnas.robustness: the robustness comparison's config, one small run end to end (retrain, evaluate, attack, save,
resume), its saved models, and its bad inputs."""

import json
import math

import pytest
import torch

from vnas import attacks, cli, config, data, results, robustness, runs

RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
SMALL = f"""
space = "nb201"
mode = "smoke"
seeds = 1
save_models = 1
[train]
epochs = 1
[attack]
images = 20
eps = [2, 8]
steps = 1
eot_samples = 2
predict_samples = 2
batch_size = 10
[models.resnet]
genotype = "{RESNET}"
[models.bayes]
genotype = "{RESNET}"
weights = "gaussian"
weight_sigma_init = 0.05
[models.bma]
from = "nb201_comparison"
method = "variational"
sampled = 2
"""


def _write(tmp_path, text, name="robust.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    path = tmp / "robust.toml"
    path.write_text(SMALL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VNAS_MODE", "smoke")
        cfg = robustness.load_config(path)
        found = robustness.run(cfg, tmp / "out", jobs=1, log=None)
    return cfg, found, tmp / "out"


def test_a_small_comparison_records_every_measure(small_run):
    cfg, found, out = small_run
    by = {r["model"]: r for r in found["runs"]}
    assert set(by) == {"resnet", "bayes", "bma"}
    assert by["bayes"]["stochastic"] and not by["resnet"]["stochastic"] and not by["bma"]["stochastic"]
    assert len(by["bma"]["cells"]) == 2 and len(by["bma"]["members"]) == 2
    for r in by.values():
        a = r["attacked"]
        assert a["eps"] == pytest.approx([0, 2 / 255, 8 / 255], rel=1e-5) and a["eps_255"] == [0, 2, 8]
        assert len(a["pgd"]) == len(a["fgsm"]) == 3 and 0 <= a["pgd_l2"] <= 1
        if not r["stochastic"]:
            assert a["pgd"][0] == a["clean"]  # eps = 0 is the clean accuracy (deterministic: exactly)
        assert a["checks"]["linf"]["not_weaker_than_fgsm"] in (True, False)
        assert 0 <= r["clean"]["acc"] <= 1 and r["clean"]["nll"] > 0 and 0 <= r["clean"]["ece"] <= 1
    assert len(by["bayes"]["attacked"]["eot_pgd"]) == 3 and "eot_pgd_l2" in by["bayes"]["attacked"]
    rows = {row["model"]: row for row in found["summary"]}
    assert rows["bayes"]["values"]["eot_pgd@8"]["per_seed"] == [by["bayes"]["attacked"]["eot_pgd"][-1]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["attack"]["images"] == 20 and manifest["mode"] == "smoke"
    assert "clean" in robustness.format_summary(found)


def test_saved_models_load_back_with_the_same_predictions(small_run):
    cfg, found, out = small_run
    x, y = robustness.attack_images(data.load_cifar10(), 20)
    pixels = data.Batches(x, y, 20, train=False).__iter__().__next__()[0]
    for name in ("resnet", "bma"):
        model = robustness.load_model(out / "models" / f"{name}__seed0.pt", "cpu")
        again = robustness.load_model(out / "models" / f"{name}__seed0.pt", "cpu")
        assert torch.allclose(attacks.predict(model, pixels), attacks.predict(again, pixels))
        accuracy = (attacks.predict(model, pixels).argmax(-1) == torch.as_tensor(y)).float().mean().item()
        record = next(r for r in found["runs"] if r["model"] == name)
        assert accuracy == pytest.approx(record["attacked"]["clean"], abs=1e-6)
    bma = robustness.load_model(out / "models" / "bma__seed0.pt", "cpu")
    assert isinstance(bma, robustness.Ensemble) and len(bma.members) == 2


def test_a_second_run_reuses_the_records(small_run, monkeypatch):
    cfg, found, out = small_run
    monkeypatch.setattr(results, "code_changed_since", lambda *a: None)  # as if committed (a clean clone is)
    lines = []
    again = robustness.run(cfg, out, jobs=1, log=lines.append)
    assert "3 runs recorded, 0 to run" in lines[0]
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in found["runs"]]


def test_a_corrupt_or_missing_model_file_says_what_to_do(tmp_path):
    bad = tmp_path / "x__seed0.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(runs.RunError, match="not a model saved by a robustness sweep .*Delete it and rerun"):
        robustness.load_model(bad)
    with pytest.raises(FileNotFoundError, match="save_models"):
        robustness.load_model(tmp_path / "absent.pt")


def test_ensemble_averages_probabilities():
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x = torch.rand(5, 3)
    want = torch.log((torch.softmax(a(x), -1) + torch.softmax(b(x), -1)) / 2)
    assert torch.allclose(robustness.Ensemble([a, b])(x), want, atol=1e-6)


def test_the_cli_sends_a_config_with_an_attack_table_here(tmp_path, capsys):
    text = SMALL.split("[models.resnet]")[0] + f'[models.resnet]\ngenotype = "{RESNET}"\n'
    path = _write(tmp_path, text)
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "robustness: 0 runs recorded, 1 to run" in out and "resnet" in out
    assert (tmp_path / "out" / "results.json").is_file()


def test_load_sweep_checks_a_robustness_folder_against_its_file(small_run, tmp_path, monkeypatch):
    cfg, found, out = small_run
    sweeps = tmp_path / "configs" / "sweeps"
    sweeps.mkdir(parents=True)
    (sweeps / "robust.toml").write_text(SMALL)
    for name in ("train_nb201.toml", "search_nb201.toml"):
        (tmp_path / "configs" / name).write_text((config.CONFIG_DIR / name).read_text())
    for name in ("nb201_comparison.toml",):  # the source sweep the config reads, checked against its own file
        (sweeps / name).write_text((config.CONFIG_DIR / "sweeps" / name).read_text())
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path / "configs")
    monkeypatch.setattr(results, "code_changed_since", lambda *a: None)
    loaded = results.load_sweep("robust", root=out.parent) if (out.parent / "robust").exists() else None
    assert loaded is None  # the folder is named after its config file: "out" here
    (out.parent / "robust").symlink_to(out, target_is_directory=True)
    loaded = results.load_sweep("robust", root=out.parent)
    assert loaded.stale == [] and loaded.results["summary"]
    (sweeps / "robust.toml").write_text(SMALL.replace("images = 20", "images = 30"))
    with pytest.warns(results.StaleResultsWarning, match="config differs"):
        assert results.load_sweep("robust", root=out.parent).stale


# --- bad configs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, match", [
    (lambda t: "bogus = 1\n" + t, "Unknown key\\(s\\) \\['bogus'\\]"),
    (lambda t: t.replace("steps = 1", "steps = 0"), "steps = 0 .* integer >= 1"),
    (lambda t: t.replace("eps = [2, 8]", "eps = [2, 300]"), "units of 1/255"),
    (lambda t: t.replace("eps = [2, 8]", "eps = [2, 8]\nradius = 3"), "\\['radius'\\] in \\[attack\\]"),
    (lambda t: t.replace('space = "nb201"', 'space = "nb301"'), "space = 'nb301'"),
    (lambda t: t.replace('method = "variational"', 'method = "variational"\ngenotype = "x"'), "exactly one of"),
    (lambda t: t.replace('method = "variational"\n', ''), "say which `method`"),
    (lambda t: t.replace('from = "nb201_comparison"', 'from = "no_such_sweep"'), "no_such_sweep is absent"),
    (lambda t: t.replace("sampled = 2", "sampled = 1000"), "asks for 1000 sampled cells"),
    (lambda t: t.replace('weights = "gaussian"', 'weights = "laplace"'), "models.bayes"),
    (lambda t: t.replace("seeds = 1", "seeds = 99"), "no run of method 'variational'"),
])
def test_bad_robustness_configs_say_what_is_wrong(tmp_path, change, match):
    with pytest.raises(config.ConfigError, match=match):
        robustness.load_config(_write(tmp_path, change(SMALL)))


def test_unknown_model_names_on_the_command_line(tmp_path):
    with pytest.raises(config.ConfigError, match="No model\\(s\\) \\['vgg'\\]"):
        robustness.load_config(_write(tmp_path, SMALL), models=["vgg"])
    cfg = robustness.load_config(_write(tmp_path, SMALL), models=["resnet"])
    assert list(cfg["models"]) == ["resnet"]


def test_attack_images_are_class_balanced_and_nested():
    d = data.load_cifar10()
    x20, y20 = robustness.attack_images(d, 20)
    x40, y40 = robustness.attack_images(d, 40)
    assert torch.bincount(torch.as_tensor(y20), minlength=10).tolist() == [2] * 10
    rows40 = {bytes(img) for img in x40}
    assert all(bytes(img) in rows40 for img in x20)
    assert math.isclose(len(x40), 40)
