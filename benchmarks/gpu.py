"""One GPU check of the paper-scale DARTS protocols: speed, memory, projected hours and host syncs, in one call.

    PYTHONPATH=. python benchmarks/gpu.py --data PATH [--out FILE.json] [--budget-s 240] [--device cuda|cpu]
                                          [--parts P ...] [--no-profile] [--dry]

GPU time comes in short slots, so this script checks and times everything at once, within ``--budget-s``
seconds (default 240) of wall time:
- the card's bf16 matmul rate (an 8192^3 matmul, best of several timed rounds): the "peak" the steps are
  compared with;
- the **search**: the first-order DARTS search of configs/search_darts.toml [full] (8 cells, C=16, batch 64, the
  25k/25k split of the CIFAR-10 training set, 50 epochs), read through the library's own config loader, and
  the same search with ``order = "second"`` (``--parts`` picks among search_first, search_second, train);
- the **evaluation training** of configs/train_darts.toml [full] (DARTS_V2, 20 cells, C=36, batch 96, cutout 16,
  auxiliary 0.4, drop-path 0.2, 600 epochs), timed at epoch 300 of 600 so that drop-path is active.
Each part runs the library's own loop, ``Search.train_epoch`` / ``Trainer.train_epoch`` (vnas.search, vnas.train:
data batches augmented on the device, both steps, the per-epoch means, the finite-value watch), on real CIFAR-10,
interrupted from its ``on_step`` hook: warm-up steps first (excluded), then ``torch.cuda.synchronize()``, the
timed steps, ``torch.cuda.synchronize()``. It reports images/s (a first- or second-order search step counts its
two batches, the validation batch and the training batch, as benchmarks/supernet.py does), peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each part is built), the per-epoch evaluation (a few batches
of ``Search.evaluate`` / ``vnas.metrics.evaluate``, timed and scaled to the whole split), the projected hours of
the whole protocol, and the fraction of the matmul rate that the step reaches.

FLOPs convention (useful FLOPs, 2 per multiply-add of ``vnas.networks.count_macs``, conv and linear layers
only: BN, pooling, additions, the auxiliary head (< 0.2% of DARTS_V2's) and the optimiser are not counted): a
forward pass is F = 2 x MACs per image; a backward pass that needs weight gradients costs 2 F, one that needs
only the gradient with respect to the mixing weights θ (the first-order architecture step) costs F. So a
first-order search step is 5 F per image of its batch size (architecture step 2 F on the validation batch,
weight step 3 F on the training batch), a second-order one 13 F (unrolled step 3 F, validation pass 3 F, the two
finite-difference passes 2 F each, weight step 3 F; it runs in float32/TF32 by design, without autocast,
but is still compared with the bf16 rate), an evaluation-training step 3 F.

Host syncs: for a few extra steps of each part, every Python-level read of a tensor on the run device
(``Tensor.item``, ``tolist``, ``cpu``, ``numpy``, ``bool()``, ``float()``, ``int()``, ``__index__``) is counted
with where it came from, and on CUDA ``torch.cuda.set_sync_debug_mode("warn")`` counts every synchronizing CUDA
call (also those made inside C++). On CUDA a ``torch.profiler`` pass over a couple of steps also counts the
kernels per step and the time the GPU is busy with them: a busy fraction well below 1 means the step is bound by
the host (Python and kernel launches), not by the GPU.

The budget: each part gets a share of the time left (weights 0.4, 0.2, 0.4); it times as many steps as its
share allows (at most ``--steps``), and says so when the budget, not ``--steps``, stopped it. A running step is
never interrupted, so the script can overrun by about one step.

``--data``: the compact JPEG CIFAR-10 file (``cifar10_jpeg.npz``: ``train_jpeg``/``train_offsets``/``y_train``,
``test_jpeg``/``test_offsets``/``y_test``; decoded here with Pillow, in parallel processes) or a decoded ``.npz``
(``x_train``/``y_train``/``x_test``/``y_test``) or a ``cifar-10-batches-py`` folder. On a machine without CUDA the
script refuses to run unless ``--device cpu`` is given (CPU numbers say nothing about a GPU), or ``--dry``: a tiny
run on the CPU (3 cells, C=4, batch 8, one thread, 1 warm-up and 2 timed steps, 1 for the second order) that
exercises every code path in seconds; its numbers are not results. ``--out FILE`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import io
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vnas import config, data, metrics, networks, runs, search, train  # noqa: E402
from vnas.hostreads import count_host_reads  # noqa: E402

JPEG_KEYS = ("train_jpeg", "train_offsets", "y_train", "test_jpeg", "test_offsets", "y_test")
FORMATS = ("the compact JPEG CIFAR-10 file (cifar10_jpeg.npz, arrays train_jpeg/train_offsets/y_train/test_jpeg/"
           "test_offsets/y_test), a decoded .npz (x_train/y_train/x_test/y_test, as decode.py writes), or a "
           "cifar-10-batches-py folder")
GOALS = {"search_first": 20 * 60.0, "train": 2 * 3600.0}  # seconds: a full first-order search; a 600-epoch training
WEIGHTS = {"search_first": 0.4, "search_second": 0.2, "train": 0.4}  # shares of the time budget
DRY = dict(layers=3, channels=4, batch_size=8)  # the --dry sizes (the smoke tables' cells, smaller batches)
PASSES = {"search_first": 5, "search_second": 13, "train": 3}  # forward-pass equivalents per image (docstring)
PARTS = ("search_first", "search_second", "train")


class InputError(ValueError):
    """Bad command-line input (a missing or malformed data file): reported as a usage error."""


# --- data ----------------------------------------------------------------------------------------------------

def _decode_chunk(job) -> np.ndarray:
    """JPEG images ``blob[offsets[i]:offsets[i+1]]`` as uint8 (n, 32, 32, 3); errors name the image index."""
    from PIL import Image

    start, blob, offsets = job
    out = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
    for i in range(len(offsets) - 1):
        try:
            img = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]])).convert("RGB"))
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
            raise ValueError(f"image {start + i} is not a readable JPEG ({type(err).__name__}: {err})") from None
        if img.shape != (32, 32, 3):
            raise ValueError(f"image {start + i} has shape {img.shape}, not (32, 32, 3)")
        out[i] = img
    return out


def decode_split(blob: np.ndarray, offsets: np.ndarray, workers: int) -> np.ndarray:
    """All images of one split of the JPEG file, decoded in ``workers`` processes (forked: before CUDA starts)."""
    n = len(offsets) - 1
    chunk = max(500, -(-n // (4 * max(workers, 1))))
    jobs = [(s, blob[offsets[s]:offsets[min(s + chunk, n)]].tobytes(), offsets[s:min(s + chunk, n) + 1] - offsets[s])
            for s in range(0, n, chunk)]
    if workers <= 1 or len(jobs) == 1:
        parts = [_decode_chunk(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_decode_chunk, jobs))
    return np.concatenate(parts) if parts else np.empty((0, 32, 32, 3), np.uint8)


def load_data(path: Path, workers: int) -> tuple[data.Cifar10, dict]:
    """CIFAR-10 from ``--data`` and how it was read; InputError (with what is wrong and what to give) if bad."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--data {path} does not exist. Give {FORMATS}.")
    start = time.perf_counter()
    info = {"path": str(path)}
    if path.is_dir():
        try:
            arrays = data.read_path(path)
        except data.DataError as err:
            raise InputError(f"--data {path}: {err}") from None
        info["format"] = "folder"
    else:
        if not zipfile.is_zipfile(path):
            raise InputError(f"--data {path} is not an .npz file (not a zip archive). Give {FORMATS}.")
        try:
            with np.load(path, allow_pickle=False) as z:
                files = set(z.files)
                jpeg = {k: z[k] for k in JPEG_KEYS} if set(JPEG_KEYS) <= files else None
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"--data {path} is not an .npz file ({type(err).__name__}: {err}). Give {FORMATS}.") \
                from None
        if jpeg is None:
            if not {"x_train", "y_train", "x_test", "y_test"} <= files:
                raise InputError(f"--data {path} holds arrays {sorted(files)}, neither the JPEG file's "
                                 f"{list(JPEG_KEYS)} nor x_train/y_train/x_test/y_test. Give {FORMATS}.")
            try:
                arrays = data.read_npz(path)
            except data.DataError as err:
                raise InputError(f"--data {path}: {err}") from None
            info["format"] = "decoded npz"
        else:
            arrays = {}
            for split in ("train", "test"):
                blob, off, y = jpeg[f"{split}_jpeg"], jpeg[f"{split}_offsets"], jpeg[f"y_{split}"]
                if blob.ndim != 1 or blob.dtype != np.uint8 or off.ndim != 1 \
                        or not np.issubdtype(off.dtype, np.integer) or len(off) != len(y) + 1 or len(y) == 0 \
                        or off[0] != 0 or off[-1] != len(blob) or np.any(np.diff(off) <= 0):
                    raise InputError(f"--data {path}: {split}_jpeg / {split}_offsets / y_{split} do not fit together "
                                     f"(bytes {blob.shape} {blob.dtype}, offsets {off.shape}, labels {y.shape}): the "
                                     f"offsets must run from 0 to the number of bytes, one more than the labels.")
                try:
                    arrays[f"x_{split}"] = decode_split(blob, off.astype(np.int64), workers)
                except ValueError as err:
                    raise InputError(f"--data {path}: {split} {err}.") from None
                arrays[f"y_{split}"] = y
            try:
                arrays = data._check_arrays(arrays, str(path))  # the library's own checks of shapes and labels
            except data.DataError as err:
                raise InputError(f"--data {path}: {err}") from None
            info["format"] = "JPEG npz"
            info["decode_workers"] = workers
    ds = data.Cifar10(**arrays, source=f"{path} ({info['format']})")
    info.update(seconds=time.perf_counter() - start, train_images=len(ds.x_train), test_images=len(ds.x_test))
    return ds, info


# --- the device's rate ---------------------------------------------------------------------------------------

def matmul_rate(dev: torch.device, n: int, dtype: torch.dtype, sync, rounds: int = 5, seconds: float = 0.3) -> dict:
    """The best rate of ``rounds`` timed rounds of n x n @ n x n matmuls, in TFLOP/s (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    c = a @ b  # warm-up: the library picks its kernel
    sync()
    t = time.perf_counter()
    c = a @ b
    sync()
    one = max(time.perf_counter() - t, 1e-6)
    reps = max(1, min(200, int(seconds / one)))
    best = math.inf
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            c = a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / reps)
    del a, b, c
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": 2 * n ** 3 / best / 1e12,
            "seconds_per_matmul": best, "rounds": rounds, "matmuls_per_round": reps}


# --- host reads and syncs: vnas.hostreads.count_host_reads ---------------------------------------------


def _sites(counter: collections.Counter, steps: int) -> list[dict]:
    return [{"what": what, "where": site, "library": lib, "count": n, "per_step": n / steps}
            for (what, site, lib), n in counter.most_common()]


# --- driving the library's own loop --------------------------------------------------------------------------

class _Enough(Exception):
    """Raised from the loop's on_step hook to end an epoch early (nothing of the epoch's end runs)."""


def drive(job, on_step) -> int:
    """Run ``job.train_epoch`` (the library's loop) until ``on_step(i)`` returns True after step i; the steps run."""
    done = 0

    def hook():
        nonlocal done
        stop = on_step(done)
        done += 1
        if stop:
            raise _Enough

    try:
        job.train_epoch(on_step=hook)
    except _Enough:
        pass
    else:
        raise RuntimeError(f"The epoch ended after {done} steps, before the benchmark stopped it: too few batches.")
    return done


def build(kind: str, cfg, ds: data.Cifar10, dev: torch.device):
    if kind == "train":
        job = train.Trainer(cfg, dataset=ds, device=dev, progress=False)
        job.epoch = cfg.epochs // 2  # mid-training: drop-path at half its final rate (the trainer ramps it from 0)
        return job
    return search.Search(cfg, dataset=ds, device=dev, progress=False)


def step_macs(kind: str, job) -> int:
    """Multiply-adds of one forward pass of one image (conv and linear layers, eval mode)."""
    size = job.cfg.image_size if kind != "train" else 32
    if kind == "train":
        model = job.model
    else:
        model = job.supernet.at({k: v.detach() for k, v in job.posterior.mean().items()})
    return networks.count_macs(model, (1, 3, size, size))


def profile_steps(job, steps: int, cuda: bool) -> dict:
    """By torch.profiler over ``steps`` steps: on CUDA (recording the GPU only) the kernels (and copies) per step
    and the GPU's busy time per step, the sum of their durations; on CPU the operators per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        drive(job, lambda i: i + 1 >= steps)
        if cuda:
            torch.cuda.synchronize()
    events = busy_us = 0
    for e in prof.key_averages():
        if not cuda or str(getattr(e, "device_type", "")).endswith("CUDA"):
            events += e.count
            busy_us += (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) if cuda \
                else 0
    del prof
    gc.collect()  # the profile's many event objects would otherwise slow every later garbage collection
    if not cuda:
        return {"steps": steps, "cpu_ops_per_step": events / steps}
    return {"steps": steps, "kernels_per_step": events / steps, "gpu_busy_s_per_step": busy_us / 1e6 / steps}


def run_part(name: str, kind: str, cfg, ds, dev, plan: dict, deadline: float, global_deadline: float) -> dict:
    """Build one part, warm it up, time it, count its host reads, time its per-epoch evaluation, project it."""
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    res = {"kind": kind, "config": config.config_dict(cfg), "notes": []}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    job = build(kind, cfg, ds, dev)
    sync()
    res["build_s"] = time.perf_counter() - t
    per_epoch = job.steps_per_epoch()
    res["steps_per_epoch"], res["epochs"] = per_epoch, cfg.epochs
    res["images_per_step"] = cfg.batch_size * (1 if kind == "train" else 2)
    res["macs_per_image"] = macs = step_macs(kind, job)
    res["flops_per_step"] = 2 * macs * PASSES[name] * cfg.batch_size
    warmup = min(plan["warmup"], per_epoch - 1)
    if warmup < 1:
        raise RuntimeError(f"{name}: {per_epoch} steps per epoch leave no room for a warm-up and a timed step.")

    # warm-up (synchronised per step, for an estimate of a step's time), then the timed steps, in one epoch
    st = {"last": time.perf_counter(), "warm": [], "n": 0, "t0": None, "t1": None}

    def on_step(i):
        if st["t0"] is None:  # still warming up
            sync()
            now = time.perf_counter()
            st["warm"].append(now - st["last"])
            st["last"] = now
            if i + 1 < warmup and now < deadline:
                return False
            est = st["warm"][-1]
            reserve = est * (plan["count_steps"] + plan["eval_batches"] / 2 + 2)  # host-read count, evaluation
            fits = int(max(0.0, deadline - now - reserve) // est)
            n = min(plan["steps"], per_epoch - (i + 1), fits)
            if n < 1 and now + est < global_deadline:
                n = 1
            if 0 < n < min(plan["steps"], per_epoch - (i + 1)):
                res["notes"].append(f"budget: timed {n} of {min(plan['steps'], per_epoch - (i + 1))} steps "
                                    f"(stopped early by the time budget)")
            if i + 1 < warmup:
                res["notes"].append(f"budget: warm-up cut to {i + 1} of {warmup} steps")
            st["n"], st["t0"], st["w"] = n, now, i + 1
            return n == 0
        if i + 1 - st["w"] >= st["n"]:
            sync()
            st["t1"] = time.perf_counter()
            return True
        return False

    drive(job, on_step)
    res["warmup_steps"] = st["w"]
    res["warmup_s"] = st["warm"]
    n = res["timed_steps"] = st["n"]
    if n == 0:
        res["notes"].append("budget: no time left to time a step; nothing measured")
        step_s = None
    else:
        step_s = (st["t1"] - st["t0"]) / n
    res["step_s"] = step_s
    res["images_per_s"] = res["images_per_step"] / step_s if step_s else None
    res["peak_gpu_mem_gib_steps"] = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None

    # host reads and syncs per step, on a few more steps (counting slows them: not timed)
    k = plan["count_steps"]
    res["host_reads"] = None
    if not k:
        res["notes"].append("host reads not counted (--dry counts them in the first part only)")
    elif step_s is not None and time.perf_counter() + 3 * k * step_s < global_deadline:
        try:
            with count_host_reads(dev.type) as found:
                drive(job, lambda i: i + 1 >= k)
            sync()
            res["host_reads"] = {"steps": k, "reads_per_step": sum(found["reads"].values()) / k,
                                 "cuda_syncs_per_step": sum(found["syncs"].values()) / k if cuda else None,
                                 "reads": _sites(found["reads"], k), "cuda_syncs": _sites(found["syncs"], k)}
        except Exception as err:
            traceback.print_exc()
            res["notes"].append(f"counting host reads failed: {type(err).__name__}: {err}")
    elif step_s is not None:
        res["notes"].append("budget: host reads not counted")

    # kernels per step and the GPU's busy time (is the step bound by the host or by the GPU?)
    res["profile"] = None
    p = plan["profile_steps"]
    if p and step_s is not None and time.perf_counter() + 10 * p * step_s + 5 < global_deadline:
        try:
            res["profile"] = prof = profile_steps(job, p, cuda)
            if cuda and prof["kernels_per_step"]:
                prof["gpu_busy_fraction"] = min(1.0, prof["gpu_busy_s_per_step"] / step_s)
            elif cuda:
                prof["gpu_busy_fraction"] = None
                res["notes"].append("the profiler recorded no kernels (CUPTI unavailable?): GPU busy time unknown")
        except Exception as err:  # a profiler that fails must not cost the rest of the run
            traceback.print_exc()
            res["notes"].append(f"profiler failed: {type(err).__name__}: {err}")
    elif p and step_s is not None:
        res["notes"].append("budget: not profiled")

    # the per-epoch evaluation: a few batches, scaled to the whole split
    res["eval_epoch_s"] = None
    if kind == "train":
        total = len(job.test_batches)

        def evaluate(b):
            return metrics.evaluate(job.model, job.test_batches, max_batches=b, amp=cfg.amp)
    else:
        total = min(cfg.eval_batches, len(job.val_batches)) if cfg.eval_batches else len(job.val_batches)

        def evaluate(b):
            return job.evaluate(batches=b)
    b = min(plan["eval_batches"], total)
    if step_s is not None and time.perf_counter() + (b + 1) * step_s < global_deadline:
        try:
            evaluate(1)  # warm-up: eval-mode kernels
            sync()
            t = time.perf_counter()
            evaluate(b)
            sync()
            res["eval_batches_timed"], res["eval_batches_per_epoch"] = b, total
            res["eval_epoch_s"] = (time.perf_counter() - t) / b * total
        except Exception as err:
            traceback.print_exc()
            res["notes"].append(f"timing the evaluation failed: {type(err).__name__}: {err}")
    elif step_s is not None:
        res["notes"].append("budget: per-epoch evaluation not timed (projection leaves it out)")
    res["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None

    # projections
    if step_s is not None:
        res["projected_hours_steps"] = cfg.epochs * per_epoch * step_s / 3600
        res["projected_hours"] = res["projected_hours_steps"] + cfg.epochs * (res["eval_epoch_s"] or 0.0) / 3600
        res["achieved_tflops"] = res["flops_per_step"] / step_s / 1e12
    return res


# --- reporting -----------------------------------------------------------------------------------------------

def describe_config(kind: str, cfg) -> str:
    keys = (("genotype", "layers", "channels", "batch_size", "epochs", "cutout", "auxiliary", "auxiliary_weight",
             "drop_path", "lr", "weight_decay", "amp", "channels_last") if kind == "train" else
            ("method", "layers", "channels", "batch_size", "epochs", "order", "images_per_class", "partial_channels",
             "lr", "arch_lr", "weight_decay", "amp", "channels_last"))
    return " ".join(f"{k}={getattr(cfg, k)}" for k in keys)


def report_part(title: str, res: dict, peak: dict, log) -> None:
    if res.get("step_s") is None:
        if res.get("warmup_s"):
            log(f"  build {res['build_s']:.1f} s; warm-up {res['warmup_steps']} steps (first "
                f"{res['warmup_s'][0]:.3f} s); {res['macs_per_image'] / 1e6:.1f} M multiply-adds per image forward")
        log(f"  not timed: {'; '.join(res['notes'])}")
        return
    mem = ("n/a on CPU" if res["peak_gpu_mem_gib"] is None else
           f"{res['peak_gpu_mem_gib_steps']:.2f} GiB in the steps, {res['peak_gpu_mem_gib']:.2f} GiB with evaluation")
    log(f"  build {res['build_s']:.1f} s; warm-up {res['warmup_steps']} steps (first {res['warmup_s'][0]:.3f} s, "
        f"last {res['warmup_s'][-1]:.3f} s); timed {res['timed_steps']} steps")
    log(f"  {res['step_s']:.4f} s/step, {res['images_per_s']:.1f} images/s ({res['images_per_step']} images per "
        f"step); peak GPU memory: {mem}")
    log(f"  {res['macs_per_image'] / 1e6:.1f} M multiply-adds per image forward; {PASSES[res['name']]} F per image "
        f"-> {res['flops_per_step'] / 1e12:.4f} TFLOP per step, {res['achieved_tflops']:.3f} TFLOP/s = "
        f"{res['fraction_of_matmul_peak']:.2%} of the {peak['dtype']} matmul rate ({peak['tflops']:.1f} TFLOP/s)")
    ev = res["eval_epoch_s"]
    eval_text = (f"{ev:.1f} s per epoch ({res['eval_batches_per_epoch']} batches, {res['eval_batches_timed']} timed)"
                 if ev is not None else "not timed")
    log(f"  per-epoch evaluation: {eval_text}")
    log(f"  projected: {res['epochs']} epochs x {res['steps_per_epoch']} steps = {res['projected_hours_steps']:.2f} h "
        f"of steps, {res['projected_hours']:.2f} h with the per-epoch evaluation")
    hr = res["host_reads"]
    if hr is not None:
        syncs = "" if hr["cuda_syncs_per_step"] is None else \
            f"; synchronizing CUDA calls per step (sync debug mode): {hr['cuda_syncs_per_step']:g}"
        log(f"  host reads per step (Python-level reads of {res['device_type']} tensors): {hr['reads_per_step']:g}"
            f"{syncs}")
        for s in hr["reads"] + hr["cuda_syncs"]:
            log(f"    {s['per_step']:g}/step {s['what']} at {s['where']}"
                + (f" via {s['library']}" if s["library"] not in ("-", s["where"]) else ""))
    prof = res.get("profile")
    if prof:
        if prof.get("gpu_busy_fraction") is not None:
            bound = ("the GPU is the bottleneck" if prof["gpu_busy_fraction"] > 0.8
                     else "bound by the host: Python and kernel launches")
            log(f"  profile ({prof['steps']} steps): {prof['kernels_per_step']:.0f} kernels and copies per step, GPU "
                f"busy {prof['gpu_busy_s_per_step']:.4f} s/step = {prof['gpu_busy_fraction']:.0%} of the step's wall "
                f"time ({bound})")
        elif "cpu_ops_per_step" in prof:
            log(f"  profile ({prof['steps']} steps): {prof['cpu_ops_per_step']:.0f} CPU ops/step")
    for note in res["notes"]:
        log(f"  note: {note}")


def diagnosis(res: dict) -> str:
    """What the step's time goes to, in one line: evaluation share, GPU busy fraction, kernels and host syncs."""
    parts = [f"{res['step_s'] * 1e3:.1f} ms/step"]
    if res.get("eval_epoch_s") is not None:
        share = res["epochs"] * res["eval_epoch_s"] / 3600 / res["projected_hours"]
        parts.append(f"evaluation {share:.0%} of the projection")
    prof = res.get("profile") or {}
    if prof.get("gpu_busy_fraction") is not None:
        parts.append(f"GPU busy {prof['gpu_busy_fraction']:.0%} of the step ({prof['kernels_per_step']:.0f} kernels)")
    hr = res.get("host_reads")
    if hr is not None:
        syncs = hr["cuda_syncs_per_step"]
        parts.append(f"{hr['reads_per_step']:g} host reads/step"
                     + ("" if syncs is None else f", {syncs:g} CUDA syncs/step"))
    parts.append(f"{res['fraction_of_matmul_peak']:.1%} of the matmul rate")
    return "; ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="cifar10_jpeg.npz, a decoded .npz, or a batches folder")
    p.add_argument("--out", type=Path, help="write every number as JSON to this file")
    p.add_argument("--budget-s", type=float, default=240.0, help="wall-time cap of the whole script (default 240)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda (refused: CPU, unless given explicitly)")
    p.add_argument("--steps", type=int, default=0, help="most timed steps per part (default: search 100, second "
                   "order 30, training 200; --dry 2)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to time (default: all)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass")
    p.add_argument("--workers", type=int, default=0, help="JPEG decoding processes (default: the CPUs, at most 16)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's; --dry: 1)")
    p.add_argument("--dry", action="store_true", help="tiny sizes on the CPU, seconds: a test of the code paths")
    args = p.parse_args(argv)
    started = time.perf_counter()
    global_deadline = started + args.budget_s
    if args.budget_s <= 0:
        p.error(f"--budget-s {args.budget_s:g} must be > 0 seconds.")

    if args.device is None:
        if not args.dry and not torch.cuda.is_available():
            p.error("torch sees no CUDA device. This script projects GPU hours, which CPU numbers cannot do; run "
                    "it on a GPU, or give --device cpu to time the CPU anyway, or --dry for a tiny test of the code "
                    "paths.")
        dev = torch.device("cpu" if args.dry else "cuda")
    else:
        dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use a GPU machine, or --device cpu / --dry.")
    cuda = dev.type == "cuda"
    workers = args.workers or min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else os.cpu_count() or 1)
    log = functools.partial(print, flush=True)

    # the data first: JPEG decoding forks worker processes, which must happen before CUDA starts
    try:
        ds, data_info = load_data(args.data, workers)
    except InputError as err:
        p.error(str(err))
    if args.threads or args.dry:  # tiny CPU ops: one thread (several spin-wait on a busy machine)
        torch.set_num_threads(args.threads or 1)

    hardware = (torch.cuda.get_device_name(dev) if cuda
                else f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    log(f"vnas GPU check | device: {hardware} | torch {torch.__version__} (CUDA {torch.version.cuda}) | python "
        f"{platform.python_version()} | budget {args.budget_s:g} s")
    if args.dry:
        log("DRY RUN: tiny sizes; the numbers only show that the code runs, they are not results.")
    log(f"data: {ds.describe()}, read in {data_info['seconds']:.1f} s"
        + (f" ({data_info['decode_workers']} decoding processes)" if "decode_workers" in data_info else ""))

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.dry:
        mm = matmul_rate(dev, 256, torch.float32, sync, rounds=2, seconds=0.05)
    elif cuda:
        mm = matmul_rate(dev, 8192, torch.bfloat16, sync)
    else:
        mm = matmul_rate(dev, 1024, torch.float32, sync, rounds=3, seconds=0.5)
    log(f"matmul: {mm['dtype']} {mm['n']}^3, best of {mm['rounds']} rounds of {mm['matmuls_per_round']}: "
        f"{mm['tflops']:.2f} TFLOP/s" + ("" if cuda else " (on CPU the steps run in float32: the rate is float32's)"))

    # the protocols, through the library's own loader ([full] tables), shrunk by --dry
    over = DRY if args.dry else {}
    cfgs = {"search_first": search.load_search_config("darts", run_mode="full", **over),
            "search_second": search.load_search_config("darts", run_mode="full", order="second", **over),
            "train": train.load_train_config("DARTS_V2", run_mode="full", **over)}
    cfgs = {name: cfg for name, cfg in cfgs.items() if name in args.parts}
    titles = {"search_first": "search, first order (configs/search_darts.toml [full])",
              "search_second": "search, second order (configs/search_darts.toml [full], order = 'second')",
              "train": "evaluation training (configs/train_darts.toml [full], DARTS_V2)"}
    default_steps = {"search_first": 100, "search_second": 30, "train": 200}
    plan_common = dict(warmup=1 if not cuda else 5, count_steps=1 if args.dry else (3 if cuda else 1),
                       eval_batches=1 if args.dry else (10 if cuda else 2))

    meta = {
        "dry": args.dry, "device": hardware, "device_type": dev.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "git_commit": runs.git_commit(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "budget_s": args.budget_s, "data": data_info, "matmul": mm,
        "flops_convention": "2 FLOPs per multiply-add of vnas.networks.count_macs (conv + linear, one image, eval "
                            "forward); forward F, backward 2F with weight gradients, F without; per image: first-order "
                            "search step 5F, second-order 13F, training step 3F",
    }

    def save(parts: dict, goals: dict) -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            result = {**meta, "wall_s": time.perf_counter() - started, "parts": parts, "goals": goals,
                      "failed": failed}
            args.out.write_text(json.dumps(result, indent=1))

    parts, failed = {}, []
    for name, cfg in cfgs.items():
        kind = "train" if name == "train" else "search"
        log(f"{titles[name]}:\n  config: {describe_config(kind, cfg)}")
        now = time.perf_counter()
        left = [n for n in cfgs if n not in parts]
        share = (global_deadline - now - 2.0) * WEIGHTS[name] / sum(WEIGHTS[n] for n in left)
        if global_deadline - now < 3.0:
            parts[name] = {"kind": kind, "config": config.config_dict(cfg), "step_s": None,
                           "notes": ["budget: no time left; skipped"]}
            log("  skipped: the time budget is spent")
            continue
        second_dry = args.dry and name == "search_second"  # the slowest tiny step: as few as the paths need
        plan = dict(plan_common, steps=args.steps or ((1 if second_dry else 2) if args.dry else default_steps[name]),
                    count_steps=0 if second_dry else plan_common["count_steps"],
                    # the profiler: 2 steps of each part on CUDA; --dry profiles the (small) training step only
                    profile_steps=0 if args.no_profile or not (cuda or args.dry and name == "train")
                    else (1 if args.dry else 2))
        try:
            res = run_part(name, kind, cfg, ds, dev, plan, now + max(share, 0.0), global_deadline)
        except Exception as err:  # one part that fails (out of memory, say) must not cost the others
            traceback.print_exc()
            res = {"kind": kind, "config": config.config_dict(cfg), "step_s": None,
                   "error": f"{type(err).__name__}: {err}", "notes": [f"failed: {type(err).__name__}: {err}"]}
            failed.append(name)
        gc.collect()  # the part's job is gone: free its memory before the next part measures its own peak
        if cuda:
            torch.cuda.empty_cache()
        res["name"], res["device_type"] = name, dev.type
        if res.get("achieved_tflops") is not None:
            res["fraction_of_matmul_peak"] = res["achieved_tflops"] / mm["tflops"]
        parts[name] = res
        report_part(titles[name], res, mm, log)
        save(parts, {})  # what is measured so far survives a run that is killed later

    goals = {}
    log("goals:")
    for name, limit in GOALS.items():
        res = parts.get(name, {})
        what = "full first-order search (50 epochs)" if name == "search_first" else "600-epoch evaluation training"
        hours = res.get("projected_hours")
        if hours is None:
            goals[name] = {"limit_hours": limit / 3600, "projected_hours": None, "meets": None}
            log(f"  {what} within {limit / 60:g} min: not measured")
            continue
        factor = hours * 3600 / limit
        goals[name] = {"limit_hours": limit / 3600, "projected_hours": hours, "meets": factor <= 1,
                       "speedup_needed": max(1.0, factor)}
        verdict = "meets it" if factor <= 1 else f"misses it: {factor:.1f}x too slow"
        log(f"  {what} within {limit / 60:g} min: projected {hours * 60:.1f} min on {hardware}: {verdict}"
            + (" (dry: not a result)" if args.dry else ""))
        log(f"    {diagnosis(res)}")
        goals[name]["diagnosis"] = diagnosis(res)

    wall = time.perf_counter() - started
    log(f"wall time {wall:.1f} s of the {args.budget_s:g} s budget")
    save(parts, goals)
    if args.out is not None:
        log(f"wrote {args.out}")
    if failed:
        log(f"FAILED parts: {', '.join(failed)} (tracebacks above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
