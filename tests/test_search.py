"""The search loop, its run folder, resuming after a real kill, and its failure cases."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vnas import config, data, runs, search, spaces

TINY = dict(layers=1, channels=4, batch_size=16, images_per_class=10, epochs=2, steps_per_epoch=2, eval_batches=1)


@pytest.fixture(scope="module")
def tiny_data():
    return data.load_cifar10(tiny=True)


def make(method="darts", space="nb201", **kw):
    cfg = {**TINY, **({"layers": 3} if space == "darts" else {}), **kw}
    return search.SearchConfig(space=space, method=method, **cfg)


@pytest.mark.parametrize("method", search.METHODS)
def test_every_method_searches_nb201(method, tiny_data):
    s = search.Search(make(method), dataset=tiny_data, device=torch.device("cpu"), progress=False)
    history = s.fit(log=None)
    genotype = spaces.load_genotype(history[-1]["genotype"]) if history else s.genotype()
    assert isinstance(genotype, spaces.nb201.Genotype)
    if method != "random":
        assert len(history) == 2 and {"train_loss", "val_acc", "nb201", "seconds"} <= set(history[-1])
        assert 0 < history[-1]["nb201"]["cifar10"] <= 94.37 + 0.01
    if method in ("drnas", "variational"):  # the history shows how the Dirichlet concentrates
        edges = history[-1]["edges"]["cell"]
        assert len(edges["concentration"]) == 6 and all(c > 0 for c in edges["concentration"])
        assert len(edges["entropy"]) == 6


def test_darts_space_first_and_second_order(tiny_data):
    for order in ("first", "second"):
        s = search.Search(make("darts", "darts", order=order, epochs=1), dataset=tiny_data,
                          device=torch.device("cpu"), progress=False)
        before = s.posterior.alphas["normal"].detach().clone()
        s.fit(log=None)
        assert not torch.equal(before, s.posterior.alphas["normal"].detach())
        assert isinstance(s.genotype(), spaces.darts.Genotype)


def test_architecture_warm_up_keeps_alpha_fixed(tiny_data):
    s = search.Search(make("drnas", arch_start_epoch=1, epochs=1), dataset=tiny_data,
                      device=torch.device("cpu"), progress=False)
    before = s.posterior.alphas["cell"].detach().clone()
    s.fit(log=None)
    assert torch.equal(before, s.posterior.alphas["cell"].detach())


@pytest.mark.parametrize("bad, message", [
    (dict(method="dartz"), "Did you mean 'darts'"),
    (dict(method="nope"), "valid methods: darts, snas"),
    (dict(space="nb202"), "nb201"),
    (dict(order="third"), "'first' or 'second'"),
    (dict(posterior={"c0": 0.0}, method="variational"), "> 0"),
    (dict(posterior={"tau0": -1.0}, method="snas"), "> 0"),
    (dict(posterior={"c0": 1.0}, method="random_ws"), "no distribution options"),
    (dict(channels=0), "channels=0"),
    (dict(method="random_ws", order="second"), "no architecture step"),
])
def test_bad_search_configs(bad, message, tiny_data):
    with pytest.raises(ValueError, match=message):
        search.Search(make(**{"method": "darts", **bad}), dataset=tiny_data, device=torch.device("cpu"),
                      progress=False)


def test_method_that_does_not_fit_a_space(monkeypatch):
    monkeypatch.setitem(search.METHOD_SPACES, "gdas", ("darts",))
    with pytest.raises(ValueError, match="'gdas' is defined for the spaces"):
        make("gdas", "nb201")


def test_config_files_resolve_for_every_mode():
    for space in ("darts", "nb201"):
        for m in config.MODES:
            cfg = search.load_search_config(space, run_mode=m)
            assert cfg.space == space
    full = search.load_search_config("darts", run_mode="full")
    assert (full.layers, full.channels, full.epochs, full.batch_size, full.lr) == (8, 16, 50, 64, 0.025)


def test_unknown_config_key_suggests(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 0.1\nepocs = 3\n")
    with pytest.raises(config.ConfigError, match="Unknown config key 'learning_rate'"):
        search.load_search_config("nb201", bad)
    bad.write_text("epocs = 3\n")
    with pytest.raises(config.ConfigError, match="Did you mean 'epochs'"):
        search.load_search_config("nb201", bad)


def test_run_folder_contents_and_refusal(tmp_path, tiny_data):
    out = tmp_path / "run"
    s = search.start(make("variational", epochs=1), out, dataset=tiny_data, device=torch.device("cpu"),
                     progress=False)
    s.fit(log=None)
    assert {"config.json", "manifest.json", "history.jsonl", "genotype.json", "checkpoint.pt"} <= {
        p.name for p in out.iterdir()}
    man = json.loads((out / "manifest.json").read_text())
    assert {"command", "config", "git_commit", "mode", "hardware", "torch", "started", "wall_seconds"} <= set(man)
    row = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    assert len(row["edges"]["cell"]["mean"]) == 6 and "genotype" in row
    assert spaces.load_genotype(str(out / "genotype.json")) == s.genotype()
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(runs.RunError, match="already holds a run.*resume"):
        search.start(make("variational"), out, dataset=tiny_data, device=torch.device("cpu"))
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_missing_and_corrupt_checkpoints(tmp_path, tiny_data):
    with pytest.raises(runs.RunError, match="not a folder"):
        search.resume(tmp_path / "nothing")
    out = tmp_path / "run"
    search.start(make("darts", epochs=1), out, dataset=tiny_data, device=torch.device("cpu"))
    with pytest.raises(runs.RunError, match="no checkpoint.pt"):
        search.resume(out, dataset=tiny_data)
    (out / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(runs.RunError, match="corrupt or unreadable.*left untouched"):
        search.resume(out, dataset=tiny_data)
    assert (out / "checkpoint.pt").read_bytes() == b"\x00garbage" * 100


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_data):
    out = tmp_path / "run"
    s = search.start(make("darts", epochs=3), out, dataset=tiny_data, device=torch.device("cpu"), progress=False)
    s.fit(epochs=1, log=None)
    good = (out / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(s.supernet.parameters()).fill_(float("nan"))
    with pytest.raises(search.NonFiniteError, match="loss became nan.*epoch 1\\) is kept"):
        s.fit(log=None)
    assert (out / "checkpoint.pt").read_bytes() == good
    assert len((out / "history.jsonl").read_text().splitlines()) == 1


def test_nan_posterior_names_the_edge(tiny_data):
    s = search.Search(make("variational", epochs=2), dataset=tiny_data, device=torch.device("cpu"), progress=False)
    with torch.no_grad():
        s.posterior.alphas["cell"][4, 2] = float("nan")
    with pytest.raises(search.NonFiniteError, match="edge 4"):
        s.fit(log=None)


def _cli_search(out, epochs, extra=()):
    env = {**os.environ, "VNAS_MODE": "smoke", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vnas", "search", "--space", "nb201", "--method", "variational", "--mode", "smoke",
           "--epochs", str(epochs), "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=config.ROOT)


@pytest.mark.slow
def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tmp_path):
    cfg = tmp_path / "longer.toml"
    cfg.write_text("steps_per_epoch = 6\n")  # slow enough to be killed mid-run
    epochs = 8
    killed = _cli_search(tmp_path / "killed", epochs, ["--config", str(cfg)])
    history = tmp_path / "killed" / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not history.exists() or len(history.read_text().splitlines()) < 2):
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(history.read_text().splitlines())
    assert 2 <= done_before < epochs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "vnas", "resume", str(tmp_path / "killed")], env=env, check=True,
                   capture_output=True, cwd=config.ROOT)
    straight = _cli_search(tmp_path / "straight", epochs, ["--config", str(cfg)])
    assert straight.wait() == 0, straight.stderr.read().decode()
    a = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == epochs
    for key in b["supernet"]:
        assert torch.equal(a["supernet"][key], b["supernet"][key]), key
    for key in b["posterior"]:
        assert torch.equal(a["posterior"][key], b["posterior"][key]), key
    ga = json.loads((tmp_path / "killed" / "genotype.json").read_text())
    gb = json.loads((tmp_path / "straight" / "genotype.json").read_text())
    assert ga == gb
    assert len((tmp_path / "killed" / "history.jsonl").read_text().splitlines()) == epochs


def test_resume_checks_the_saved_config_and_kind(tmp_path, tiny_data):
    from vnas import train

    out = tmp_path / "run"
    search.start(make("darts", epochs=1), out, dataset=tiny_data, device=torch.device("cpu"),
                 progress=False).fit(log=None)
    with pytest.raises(runs.RunError, match="is not a train run"):
        train.resume(out, dataset=tiny_data)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "lrr": 0.1}))
    with pytest.raises(config.ConfigError, match="'lrr' in .*config.json.*Did you mean 'lr'"):
        search.resume(out, dataset=tiny_data)
    (out / "config.json").write_text(json.dumps(saved))
    assert search.resume(out, dataset=tiny_data, device=torch.device("cpu"), progress=False).epoch == 1
