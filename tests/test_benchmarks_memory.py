"""The memory benchmark (benchmarks/memory.py): its --tiny run end to end in a subprocess, and, in-process, that
what it counts behaves as activation memory must: linear in the batch, smaller with partial channels and with
pruned ops, and the same on the meta device as with real tensors."""

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from vnas import config

SCRIPT = config.ROOT / "benchmarks" / "memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_tiny_run_prints_the_table_and_writes_the_json(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--configs", "darts", "drnas_stage2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=config.ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("TINY: numbers are not results", "config", "params MB", "saved MB", "estimate MB", f"wrote {out}"):
        assert line in proc.stdout, line
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["darts", "drnas_stage2"]
    darts, stage2 = rows
    assert (darts["layers"], darts["channels"], darts["batch"]) == (3, 12, 2)
    assert stage2["ops"] == ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    for r in rows:
        assert r["saved_bytes"] > 0 and r["param_bytes"] == 4 * r["parameters"]
        assert r["estimate_bytes"] == r["saved_bytes"] + 3 * r["param_bytes"]
    assert stage2["saved_bytes"] < darts["saved_bytes"]


def test_saved_bytes_scale_with_the_batch_and_shrink_with_partial_channels(bench):
    cfg = bench.MemoryConfig("t", "test", layers=3, channels=8, batch=2)
    small, large = bench.measure(cfg), bench.measure(replace(cfg, batch=4))
    assert small["param_bytes"] == large["param_bytes"]
    # activations are per image; only BN's per-channel saved statistics do not grow with the batch
    assert 1.9 < large["saved_bytes"] / small["saved_bytes"] <= 2.0
    by_k = [bench.measure(replace(cfg, partial_channels=k))["saved_bytes"] for k in (1, 2, 4)]
    assert by_k[0] > by_k[1] > by_k[2]
    assert by_k[2] < 0.6 * by_k[0]  # 1/4 of the channels through the ops: the ops' activations shrink most
    pruned = bench.measure(replace(cfg, partial_channels=2, ops=("skip_connect", "sep_conv_3x3")))
    assert pruned["saved_bytes"] < by_k[1] and pruned["param_bytes"] < small["param_bytes"]


def test_meta_device_counts_what_real_tensors_save(bench):
    cfg = bench.MemoryConfig("t", "test", layers=3, channels=8, batch=2, partial_channels=2,
                             ops=("max_pool_3x3", "skip_connect", "sep_conv_5x5", "dil_conv_3x3"), edge_norm=True)
    meta, cpu = bench.measure(cfg, "meta"), bench.measure(cfg, "cpu", cpu_batch_divisor=1)
    assert cpu["measured_batch"] == 2 and cpu["scaled_by"] == 1
    assert meta["saved_bytes"] == cpu["saved_bytes"] and meta["saved_tensors"] == cpu["saved_tensors"]
    assert meta["param_bytes"] == cpu["param_bytes"]
    scaled = bench.measure(replace(cfg, batch=4), "cpu", cpu_batch_divisor=2)  # measured at 2, scaled x2
    assert scaled["measured_batch"] == 2 and scaled["saved_bytes"] == 2 * cpu["saved_bytes"]


def test_bad_arguments_are_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--configs", "nasnet"], capture_output=True, text=True,
                          timeout=120, cwd=config.ROOT)
    assert proc.returncode == 2 and "invalid choice: 'nasnet'" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-batch-divisor", "0"], capture_output=True, text=True,
                          timeout=120, cwd=config.ROOT)
    assert proc.returncode == 2 and "--cpu-batch-divisor must be >= 1" in proc.stderr
