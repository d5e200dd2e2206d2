"""The one-call GPU check (benchmarks/gpu.py): its --dry mode end to end in a subprocess (every code path, tiny
sizes, on the CPU), and its refusals of bad input, in-process."""

import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vnas import config

SCRIPT = config.ROOT / "benchmarks" / "gpu.py"


def jpeg_cifar(path, n_train=60, n_test=20, corrupt=None):
    """A tiny file in the format of the shared cifar10_jpeg.npz: JPEG bytes, offsets, labels (balanced)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        blob = np.concatenate(blobs)
        if corrupt is not None and split == "train":
            blob[offsets[corrupt]:offsets[corrupt + 1]] = 0  # not a JPEG any more
        arrays.update({f"{split}_jpeg": blob, f"{split}_offsets": offsets,
                       f"y_{split}": (np.arange(n) % 10).astype(np.uint8)})
    np.savez(path, **arrays)
    return path


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_times_every_part_and_writes_the_json(tmp_path):
    data = jpeg_cifar(tmp_path / "cifar10_jpeg.npz")
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--data", str(data), "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=config.ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for line in ("DRY RUN", "60 train / 20 test images", "matmul: float32", "search, first order",
                 "search, second order", "evaluation training", "images/s", "of the float32 matmul rate",
                 "projected: 50 epochs", "projected: 600 epochs", "host reads per step", "goals:",
                 "full first-order search (50 epochs) within 20 min: projected",
                 "600-epoch evaluation training within 120 min: projected", f"wrote {out}"):
        assert line in text, line
    r = json.loads(out.read_text())
    assert r["dry"] is True and r["device_type"] == "cpu" and r["torch"] == torch.__version__
    assert r["data"]["format"] == "JPEG npz" and r["data"]["train_images"] == 60
    assert r["matmul"]["tflops"] > 0
    assert set(r["parts"]) == {"search_first", "search_second", "train"}
    for name, part in r["parts"].items():
        assert part["timed_steps"] == (1 if name == "search_second" else 2), name
        assert part["step_s"] > 0 and part["images_per_s"] > 0
        assert part["projected_hours"] >= part["projected_hours_steps"] > 0
        assert 0 < part["fraction_of_matmul_peak"] <= 1
        assert part["flops_per_step"] > 0 and part["macs_per_image"] > 0
        assert part["eval_epoch_s"] > 0
        assert part["peak_gpu_mem_gib"] is None  # CPU
        # the protocols come from the [full] tables, shrunk by --dry
        assert part["config"]["layers"] == 3 and part["config"]["channels"] == 4 and part["config"]["batch_size"] == 8
    first, second, trained = r["parts"]["search_first"], r["parts"]["search_second"], r["parts"]["train"]
    assert first["config"]["epochs"] == 50 and first["config"]["order"] == "first"
    assert second["config"]["order"] == "second"
    assert trained["config"]["epochs"] == 600 and trained["config"]["cutout"] == 16
    assert trained["config"]["auxiliary_weight"] == 0.4 and trained["config"]["drop_path"] == 0.2
    assert first["images_per_step"] == 16 and trained["images_per_step"] == 8
    # on the CPU, FiniteWatch reads its flag back every step: the counter must see it
    for part in (first, trained):
        reads = part["host_reads"]
        assert reads["reads_per_step"] >= 1 and reads["cuda_syncs_per_step"] is None
        assert all(s["where"] and s["per_step"] > 0 for s in reads["reads"])
    assert trained["profile"]["cpu_ops_per_step"] > 0
    for goal in r["goals"].values():
        assert goal["projected_hours"] > 0 and goal["meets"] in (True, False)


def text_file(folder):
    (folder / "notes.txt").write_text("not data")
    return folder / "notes.txt"


def other_npz(folder):
    np.savez(folder / "other.npz", foo=np.zeros(3))
    return folder / "other.npz"


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder / "missing.npz", "does not exist"),
    (text_file, "is not an .npz file"),
    (other_npz, "holds arrays ['foo']"),
    (lambda folder: jpeg_cifar(folder / "broken.npz", corrupt=3), "train image 3 is not a readable JPEG"),
])
def test_bad_data_is_a_clear_usage_error(tmp_path, capsys, make, message):
    gpu = load_script()
    with pytest.raises(SystemExit) as exc:
        gpu.main(["--dry", "--data", str(make(tmp_path))])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cpu_without_dry_or_device_cpu_is_refused(tmp_path, capsys):
    gpu = load_script()
    with pytest.raises(SystemExit) as exc:
        gpu.main(["--data", str(tmp_path / "whatever.npz")])
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
