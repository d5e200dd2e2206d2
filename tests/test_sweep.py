"""python -m vnas sweep, the results folders it writes, and how a chapter reads them back (stale or not)."""

import datetime
import json
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from vnas import cli, config, results, sweep

TINY = {"layers": 1, "channels": 4, "batch_size": 16, "images_per_class": 10, "epochs": 2, "steps_per_epoch": 2,
        "eval_batches": 1, "image_size": 16}


def write_config(tmp_path, text):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def tiny_sweep(tmp_path, grid='arch_lr = [0.01, 0.1]', methods='["darts", "variational", "random"]', seeds=2):
    base = "\n".join(f"{k} = {v}" for k, v in TINY.items())
    return write_config(tmp_path, f'space = "nb201"\nmode = "smoke"\nmethods = {methods}\nseeds = {seeds}\n'
                                  f'samples = 5\n[base]\n{base}\n"posterior.c0" = 0.5\n[grid]\n{grid}\n')


def test_t_interval_matches_the_definition():
    v = [1.0, 2.0, 4.0]
    mean, half = sweep.mean_interval(v)
    assert mean == pytest.approx(7 / 3)
    assert half == pytest.approx(4.303 * np.std(v, ddof=1) / math.sqrt(3))  # ddof=1 and t, not 1.96
    assert math.isnan(sweep.mean_interval([1.0])[1])
    assert sweep.t975(100) == 1.96 and sweep.t975(11) == sweep.t975(10)


def test_a_sweep_runs_pairs_seeds_resumes_and_writes_a_manifest(tmp_path, monkeypatch):
    cfg = sweep.load_sweep_config(tiny_sweep(tmp_path))
    assert cfg["seeds"] == 2 and len(sweep.grid_points(cfg)) == 2
    # posterior.c0 reaches the variational method only; darts has no such option
    assert sweep.search_config(cfg, {"arch_lr": 0.1}, "variational", 0).posterior == {"c0": 0.5}
    assert sweep.search_config(cfg, {"arch_lr": 0.1}, "darts", 0).posterior == {}
    out = tmp_path / "out"
    found = sweep.run_sweep(cfg, out, log=None)
    assert len(found["runs"]) == 2 * 3 * 2
    rows = {(r["point"], r["method"]): r for r in found["summary"]}
    assert set(rows) == {(p, m) for p in (0, 1) for m in ("darts", "variational", "random")}
    row = rows[(1, "variational")]
    assert row["seeds"] == [0, 1] and len(row["scores"]) == 2 and np.isfinite(row["score_ci95"])
    assert row["movement"]["cell"]["max_weight_start"] == pytest.approx(0.2)
    # the random baseline is one draw per seed, paired with the searches by seed; nothing moves
    assert rows[(0, "random")]["scores"] == rows[(1, "random")]["scores"]
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("command", "config", "git_commit", "mode", "hardware", "started", "finished", "wall_seconds"):
        assert key in manifest
    started, finished = (datetime.datetime.fromisoformat(manifest[k]) for k in ("started", "finished"))
    # "started" is the run's start, not the moment the manifest was written
    assert abs((finished - started).total_seconds() - manifest["wall_seconds"]) <= 1.5
    assert manifest["config"] == cfg and manifest["mode"] == "smoke"
    # a second call finds every run recorded by the same code and runs nothing (this checkout may have
    # uncommitted changes, which would make every record "made by other code": pretend it is clean)
    calls = []
    monkeypatch.setattr(sweep, "run_one", lambda *a: calls.append(a) or {"seconds": 0})
    monkeypatch.setattr(results, "code_changed_since", lambda commit, paths=(): None)
    again = sweep.run_sweep(cfg, out, log=None)
    assert calls == [] and again["summary"] == found["summary"]
    # records made by other code are all run again
    monkeypatch.setattr(results, "code_changed_since", lambda commit, paths=(): "vnas changed")
    monkeypatch.setattr(sweep, "_run_job",
                        lambda job: (job[0], calls.append(job) or json.loads(Path(job[0]).read_text())))
    sweep.run_sweep(cfg, out, log=None)
    assert len(calls) == 12
    # a damaged record is run again, and only that one
    calls.clear()
    monkeypatch.setattr(results, "code_changed_since", lambda commit, paths=(): None)
    victim = next((out / "runs").iterdir())
    good = victim.read_text()
    victim.write_text("{not json")
    monkeypatch.setattr(sweep, "_run_job", lambda job: (job[0], calls.append(job) or json.loads(good)))
    sweep.run_sweep(cfg, out, log=None)
    assert [Path(c[0]) for c in calls] == [victim]


@pytest.mark.parametrize("text, message", [
    ('mode = "quick"\nmethods = ["darts"]', "no `space"),
    ('space = "nb201"\nmethods = []', "names no methods"),
    ('space = "nb201"\nmethods = ["dartz"]', "Did you mean 'darts'"),
    ('space = "nb201"\nmethods = ["darts"]\nseeds = 0', "seeds = 0"),
    ('space = "nb201"\nmethods = ["darts"]\nseed = 3', "Unknown key"),
    ('space = "nb201"\nmethods = ["darts"]\n[grid]\narch_lrr = [0.1]', "arch_lrr"),
    ('space = "nb201"\nmethods = ["variational"]\n[grid]\n"posterior.c1" = [0.1]', "no method has an option"),
    ('space = "nb201"\nmethods = ["variational"]\n[grid]\n"posterior.c0" = [0.0]', "c0"),
    ('space = "nb201"\nmethods = ["variational"]\n[grid]\n"posterior.kl_scale" = [-1.0]', "KL weight"),
    ('space = "nb201"\nmethods = ["darts"]\n[grid]\narch_lr = []', "no values"),
])
def test_bad_sweep_configs_fail_before_anything_runs(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep_config(write_config(tmp_path, text))


def test_cli_sweep_reports_a_bad_config(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_results_load_fresh_and_stale(tmp_path, monkeypatch):
    cfg = {"space": "nb201", "seeds": 3}
    monkeypatch.setattr(results, "code_commit", lambda: "HEAD")  # as if made from this checkout, committed
    results.write(tmp_path / "demo", {"x": 1}, cfg, "quick", 12.0, command="python -m vnas sweep demo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = results.load("demo", expected_config=cfg, root=tmp_path)
    assert fresh.results == {"x": 1} and fresh.stale == [] and "not run by this notebook" in fresh.describe()
    monkeypatch.undo()
    # a different config: warned, shown, never silent
    with pytest.warns(results.StaleResultsWarning, match="seeds"):
        stale = results.load("demo", expected_config={"space": "nb201", "seeds": 5}, root=tmp_path)
    assert "STALE" in stale.describe()
    # made from uncommitted code
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    manifest["git_commit"] = "HEAD+dirty"
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(results.StaleResultsWarning, match="uncommitted"):
        results.load("demo", expected_config=cfg, root=tmp_path)
    # code changed since the commit that made it
    manifest["git_commit"] = "0" * 40
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(results, "_git", lambda *a: " vnas/search.py | 3 ++-\n 1 file changed")
    with pytest.warns(results.StaleResultsWarning, match="changed since"):
        results.load("demo", expected_config=cfg, root=tmp_path)

    def no_git(*args):
        raise subprocess.CalledProcessError(128, "git")

    monkeypatch.setattr(results, "_git", no_git)
    with pytest.warns(results.StaleResultsWarning, match="cannot be compared"):
        results.load("demo", expected_config=cfg, root=tmp_path)
    assert results.load("absent", root=tmp_path) is None


def test_results_folder_that_is_incomplete_or_corrupt(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "results.json").write_text("{}")
    with pytest.raises(Exception, match="no manifest.json"):
        results.load("half", root=tmp_path)
    (tmp_path / "half" / "manifest.json").write_text("{oops")
    with pytest.raises(Exception, match="not valid JSON"):
        results.load("half", root=tmp_path)


def test_the_shipped_sweep_configs_are_valid():
    from vnas import robustness

    kinds = {}
    for path in sorted((config.CONFIG_DIR / "sweeps").glob("*.toml")):
        if robustness.is_robustness_config(path):  # an [attack] table: chapter 07's comparison
            cfg = robustness.load_config(path)
            assert cfg["models"], path
            kinds[path.stem] = "robustness"
        else:
            cfg = sweep.load_sweep_config(path)
            assert cfg["methods"], path
            kinds[path.stem] = "sweep"
    assert kinds["robustness_nb201"] == kinds["robustness_nb201_full"] == "robustness"
    assert kinds["nb201_comparison"] == "sweep"


def test_explicit_points_and_the_retrain_table(tmp_path):
    """Arms that a product cannot express (a prior that needs Bayesian weights), and the derived cells retrained
    under one budget and evaluated clean and shifted."""
    base = "\n".join(f"{k} = {v}" for k, v in TINY.items())
    path = write_config(tmp_path, f'space = "nb201"\nmode = "smoke"\nmethods = ["variational"]\nseeds = 1\n'
                                  f'samples = 3\npoints = [{{weights = "point"}}, {{weights = "gaussian", '
                                  f'weight_prior = "coupled"}}]\n[base]\n{base}\n[retrain]\nepochs = 1\n'
                                  f'shifts = ["noise", "jpeg"]\nseverities = [1, 5]\n')
    cfg = sweep.load_sweep_config(path)
    assert sweep.grid_points(cfg) == [{"weights": "point"}, {"weights": "gaussian", "weight_prior": "coupled"}]
    found = sweep.run_sweep(cfg, tmp_path / "out", log=None)
    coupled = found["runs"][1]
    assert coupled["config"]["weight_prior"] == "coupled" and coupled["history"][-1]["weights"]["weight_kl"] > 0
    shifted = coupled["retrained"]["shifted"]
    assert set(shifted) == {"noise", "jpeg"} and len(shifted["jpeg"]) == 2
    assert {"acc", "nll", "ece", "brier"} <= set(coupled["retrained"]["clean"])
    row = found["summary"][1]
    assert set(row["retrained"]) >= {"acc", "nll", "ece"} and len(row["retrained_shifted"]["noise"]) == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["data"].startswith("bundled tiny subset")


@pytest.mark.parametrize("text, message", [
    ('points = []', "non-empty list of tables"),
    ('points = [1, 2]', "non-empty list of tables"),
    ('[retrain]\nepochz = 3', "Unknown key.*epochz.*retrain"),
    ('[retrain]\nshifts = ["fog"]', "Unknown shift"),
    ('[retrain]\nseverities = [0, 6]', "severities.*1..5"),
    ('points = [{weights = "gaussian", weight_prior = "coupled"}]\nmethods = ["darts"]', "method 'darts' has none"),
])
def test_bad_points_and_retrain_tables_fail_before_anything_runs(tmp_path, text, message):
    head = 'space = "nb201"\nmode = "smoke"\nseeds = 1\n'
    if "methods" not in text:
        head += 'methods = ["variational"]\n'
    with pytest.raises((config.ConfigError, ValueError), match=message):
        sweep.load_sweep_config(write_config(tmp_path, head + text + "\n"))


def test_load_sweep_checks_against_its_config_file_and_missing_says_how_to_make_it(tmp_path):
    assert results.load_sweep("no_such_sweep_here", root=tmp_path) is None
    assert "python -m vnas sweep configs/sweeps/bayes_nb201.toml" in results.missing("bayes_nb201")
    folder = tmp_path / "bayes_nb201"
    cfg = sweep.load_sweep_config(config.CONFIG_DIR / "sweeps" / "bayes_nb201.toml")
    results.write(folder, {"summary": []}, dict(cfg, seeds=1), "quick", 1.0)
    with pytest.warns(results.StaleResultsWarning, match="config differs.*'seeds'"):
        assert results.load_sweep("bayes_nb201", root=tmp_path).stale


def test_added_files_leave_results_fresh_but_changed_ones_make_them_stale(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "vnas").mkdir()
    (tmp_path / "vnas" / "search.py").write_text("x = 1\n")
    (tmp_path / "vnas" / "cli.py").write_text("y = 1\n")
    git("add", ".")
    git("commit", "-qm", "first")
    made = git("rev-parse", "HEAD")
    monkeypatch.setattr(results.config, "ROOT", tmp_path)
    (tmp_path / "vnas" / "attacks.py").write_text("z = 1\n")  # a new module: cannot have changed old results
    (tmp_path / "vnas" / "cli.py").write_text("y = 2\n")  # the command line: the config is recorded instead
    git("add", ".")
    git("commit", "-qm", "second")
    assert results.code_changed_since(made) is None
    (tmp_path / "vnas" / "search.py").write_text("x = 2\n")
    git("commit", "-qam", "third")
    assert "changed since" in results.code_changed_since(made)
