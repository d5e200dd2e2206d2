"""The command line, in process (fast) and its error messages."""

import json

import pytest

from vnas import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_nb201_lookup(capsys):
    code, out, _ = run(capsys, "nb201", "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|"
                                        "skip_connect~1|skip_connect~2|")
    assert code == 0 and "54.30" in out and "cifar100" in out


def test_nb201_refuses_a_darts_genotype(capsys):
    code, _, err = run(capsys, "nb201", "DARTS_V2")
    assert code == 2 and "not a NAS-Bench-201 cell" in err


def test_describe_darts_v2_full_protocol(capsys):
    code, out, _ = run(capsys, "describe", "--genotype", "DARTS_V2", "--mode", "full")
    assert code == 0
    millions = float(out.split("parameters: ")[1].split(" M")[0])
    assert 3.2 < millions < 3.45  # the published 3.3M, auxiliary head excluded


def test_search_derive_and_resume_finished(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = run(capsys, "search", "--space", "nb201", "--method", "darts", "--mode", "smoke", "--epochs", "1",
                          "--out", str(out))
    assert code == 0, err
    code, derived, _ = run(capsys, "derive", str(out))
    assert code == 0 and derived.strip() == json.loads((out / "manifest.json").read_text())["genotype"]
    code, again, _ = run(capsys, "resume", str(out))
    assert code == 0 and "after epoch 1 of 1" in again
    code, _, err = run(capsys, "search", "--space", "nb201", "--method", "darts", "--mode", "smoke", "--out", str(out))
    assert code == 2 and "already holds a run" in err


@pytest.mark.parametrize("argv, message", [
    (["search", "--space", "nb202", "--method", "darts", "--out", "x"], "Unknown search space 'nb202'"),
    (["search", "--space", "nb201", "--method", "drnaz", "--out", "x"], "Did you mean 'drnas'"),
    (["search", "--space", "nb201", "--method", "darts", "--mode", "fast", "--out", "x"], "smoke, quick, full"),
    (["derive", "nowhere"], "does not exist"),
    (["resume", "nowhere"], "missing"),
    (["train", "--genotype", "|bogus~0|", "--out", "x"], "op"),
    (["describe", "--genotype", "no_such_file.json"], "no_such_file.json"),
    (["search", "--space", "nb201", "--method", "darts", "--weights", "gaussian", "--weight-prior", "coupled",
      "--out", "x"], "method 'darts' has none"),
    (["search", "--space", "nb201", "--method", "variational", "--weights", "gausian", "--out", "x"],
     "Did you mean 'gaussian'"),
    (["search", "--space", "nb201", "--method", "variational", "--weights", "gaussian", "--weight-prior", "laplace",
      "--out", "x"], "Unknown weight prior 'laplace'"),
    (["search", "--space", "nb201", "--method", "variational", "--weight-prior", "coupled", "--out", "x"],
     "needs Bayesian weights"),
    (["train", "--genotype", "DARTS_V2", "--weights", "gaussian", "--weight-prior", "coupled", "--out", "x"],
     "a final network has one fixed genotype"),
])
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and message in err
    assert not (tmp_path / "x").exists()  # a refused command creates nothing


def test_bad_config_file_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[smoke]\nbatch_sise = 8\n")
    code, _, err = run(capsys, "search", "--space", "nb201", "--method", "darts", "--mode", "smoke", "--config",
                       str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "batch_sise" in err and "Did you mean 'batch_size'" in err


def test_train_smoke_run_and_resume(tmp_path, capsys):
    out = tmp_path / "train"
    code, text, err = run(capsys, "train", "--genotype", "DARTS_V2", "--mode", "smoke", "--out", str(out))
    assert code == 0, err
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and 0 <= hist[0]["test_acc"] <= 1
    code, text, _ = run(capsys, "resume", str(out))
    assert code == 0 and "after epoch 1 of 1" in text


def test_bayesian_search_and_training_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "search"
    code, _, err = run(capsys, "search", "--space", "nb201", "--method", "variational", "--mode", "smoke",
                       "--weights", "gaussian", "--weight-prior", "coupled", "--epochs", "1", "--out", str(out))
    assert code == 0, err
    row = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert row["weights"]["weight_kl"] > 0 and row["architecture"]["weight_kl"] > 0
    assert row["weights"]["structure_kl"] == 0 and row["architecture"]["structure_kl"] > 0
    assert "l2_w" in row["weights"] and row["weight_posterior"]["sigma_mean"] > 0
    out = tmp_path / "train"
    code, _, err = run(capsys, "train", "--genotype", "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|"
                       "none~1|nor_conv_1x1~2|", "--mode", "smoke", "--weights", "gaussian", "--out", str(out))
    assert code == 0, err
    row = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert row["weights"]["weight_kl"] > 0 and 0 <= row["test_ece"] <= 1
