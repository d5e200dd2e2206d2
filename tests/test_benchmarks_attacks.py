"""The PGD benchmark against torchattacks (benchmarks/attacks.py) runs: its --dry mode, in-process."""

import importlib.util

from vnas import config


def test_attacks_benchmark_dry_run_prints_the_ratio(capsys, torchattacks):
    spec = importlib.util.spec_from_file_location("benchmark_attacks", config.ROOT / "benchmarks" / "attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dry", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "ratio ours/torchattacks (throughput): min " in out
    assert "sanity (not a claim)" in out
    assert out.splitlines()[-1].startswith("RESULT {")
