"""The PGD benchmark against torchattacks (benchmarks/attacks.py) runs: its --dry mode, in-process."""

import importlib.util
import os

import pytest

from vnas import config


def _torchattacks():
    if os.environ.get("CI") == "true":  # `make env` installs it; on CI a missing one is a failure, not a skip
        import torchattacks

        return torchattacks
    return pytest.importorskip("torchattacks", reason="pip install --no-deps torchattacks==3.5.1 (make env does)")


def test_attacks_benchmark_dry_run_prints_the_ratio(capsys):
    _torchattacks()
    spec = importlib.util.spec_from_file_location("benchmark_attacks", config.ROOT / "benchmarks" / "attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dry", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "ratio ours/torchattacks (throughput): min " in out
    assert "sanity (not a claim)" in out
    assert out.splitlines()[-1].startswith("RESULT {")
