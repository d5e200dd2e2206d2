"""The cost of Gaussian weights against point weights in one search step: a step-time ratio and a peak-memory
ratio, side by side in one run, on the DARTS and NB201 search configs. Target: step time at most 2.5x point weights.

    python benchmarks/bayes.py [--device cpu|cuda] [--steps N] [--quick] [--threads T] [--dry]

One search step = ``Search.architecture_step`` (validation batch) then ``Search.weight_step`` (training batch)
of vnas.search, method ``variational``, on random pixels with the config's batch size and image size; images/s
counts both batches. After 2 warm-up steps (allocator, oneDNN / cuDNN kernel selection), ``--steps`` steps are
timed one by one (on CUDA with a synchronize after each); the table gives the median and the fastest.
Configs: the DARTS search supernet (8 cells, C=16, batch 64, 32x32) and the NB201 supernet (C=16, N=5,
batch 64, 32x32); ``--quick`` uses the small proxies of the quick searches (DARTS 5 cells, C=8, batch 16;
NB201 N=1, C=8, batch 32; both 16x16); ``--dry`` is a smoke run of a few seconds (C=4, batch 4, 8x8, 2 steps)
(DARTS 3 cells) whose numbers are not results.

Variants (SearchConfig keys; the data set behind the Search is a few random images, unused by the step):
- point: ``weights = "point"``, SGD on the NLL plus the L2 term.
- gaussian: ``weights = "gaussian"``, ``weight_prior = "gaussian"``; every conv and linear layer is mean-field
  with local reparameterisation (vnas.bayes, Eq. (5.3)): a second convolution per layer (x² ⋆ σ²), a noise draw
  per output unit, two tensors per weight (μ, ρ) and their gradients and momenta, and the closed-form KL, one
  pass over every weight in the weight step.
- gaussian-direct: as gaussian, but every MeanField layer has ``local_reparameterisation = False``: one weight
  draw w = μ + σ ⊙ ε per layer and forward pass, no second convolution.
- coupled: ``weight_prior = "coupled"``, p(w | θ) (Eq. (5.5)): as gaussian, and the architecture step also
  computes E_q(θ)[KL(q(w) || p(w | θ))], another pass over every weight.
Each (config, variant) runs in its own subprocess, so that its peak memory is its own: on CPU the peak resident
set size (ru_maxrss, which includes torch itself) and its growth over the RSS after import, the memory ratio
being that of the growths; on CUDA torch.cuda.max_memory_allocated and its ratio. The last line is
``RESULT {json}`` with every number, from which a results file can be written.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vnas import bayes, data, search  # noqa: E402

CONFIGS = {  # name: (space, layers (DARTS cells, NB201 cells per stage N), channels C, batch, image side)
    "darts": ("darts", 8, 16, 64, 32),
    "nb201": ("nb201", 5, 16, 64, 32),
    "darts-quick": ("darts", 5, 8, 16, 16),
    "nb201-quick": ("nb201", 1, 8, 32, 16),
    "darts-dry": ("darts", 3, 4, 4, 8),  # 3: the fewest cells a DARTS network has
    "nb201-dry": ("nb201", 1, 4, 4, 8),
}
VARIANTS = {  # name: (SearchConfig keys, local reparameterisation)
    "point": (dict(weights="point"), True),
    "gaussian": (dict(weights="gaussian", weight_prior="gaussian"), True),
    "gaussian-direct": (dict(weights="gaussian", weight_prior="gaussian"), False),
    "coupled": (dict(weights="gaussian", weight_prior="coupled"), True),
}
TARGET = 2.5  # gaussian's median step time / point's
WARMUP = 2


def random_dataset(images_per_class: int = 4, seed: int = 0) -> data.Cifar10:
    """A CIFAR-10-shaped data set of random pixels: what the Search needs to build, not what is timed."""
    rng = np.random.default_rng(seed)
    n = 10 * images_per_class
    x = rng.integers(0, 256, (2 * n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(2 * n, dtype=np.int64) % 10
    return data.Cifar10(x[:n], y[:n], x[n:], y[n:], source="random pixels (benchmarks/bayes.py)")


def build_search(space: str, layers: int, channels: int, batch: int, size: int, variant: str,
                 device: str) -> search.Search:
    """The library's search, method variational, with the variant's weights."""
    keys, local = VARIANTS[variant]
    cfg = search.SearchConfig(space=space, method="variational", layers=layers, channels=channels, batch_size=batch,
                              image_size=size, epochs=1, **keys)
    s = search.Search(cfg, dataset=random_dataset(), device=torch.device(device), progress=False)
    for _, layer in bayes.variational_layers(s.supernet):
        layer.local_reparameterisation = local
    return s


def _rss_kb() -> int:
    """The current resident set size in KiB (Linux), else the peak so far."""
    try:
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_one(config: str, variant: str, steps: int, device: str) -> dict:
    """Time ``steps`` search steps (after WARMUP) of one variant on one config; report speed and memory."""
    rss0 = _rss_kb()
    space, layers, channels, batch, size = CONFIGS[config]
    dev = torch.device(device)
    s = build_search(space, layers, channels, batch, size, variant, device)
    s.supernet.train()
    torch.manual_seed(0)
    (x_t, y_t), (x_v, y_v) = [(torch.rand(batch, 3, size, size, device=dev).contiguous(
        memory_format=torch.channels_last), torch.randint(0, 10, (batch,), device=dev)) for _ in range(2)]

    def step():  # what Search.train_epoch does per step, less the bookkeeping
        arch = s.architecture_step((x_t, y_t), (x_v, y_v), xi=0.0)
        weights, _ = s.weight_step((x_t, y_t))
        return arch["objective"], weights["objective"]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(WARMUP):
        step()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        objectives = step()
        sync()
        times.append(time.perf_counter() - t)
    if not all(bool(torch.isfinite(o)) for o in objectives):
        raise SystemExit(f"{config} {variant}: a non-finite objective {[float(o) for o in objectives]}")
    median = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = dict(step_s=median, min_s=min(times), images_per_s=2 * batch / median, times=times,
               parameters=sum(p.numel() for p in s.supernet.parameters()))
    if dev.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out.update(peak_mb=rss / 1024, growth_mb=(rss - rss0) / 1024)
    return out


def compare(config: str, steps: int, device: str, threads: int) -> dict:
    """Every variant on one config, each in its own subprocess; prints the table and returns the numbers."""
    space, layers, channels, batch, size = CONFIGS[config]
    cells = f"{layers} cells" if space == "darts" else f"N={layers} cells per stage"
    print(f"\n{config}: {space}, {cells}, C={channels}, batch {batch}, {size}x{size}")
    mem_name = "peak RSS MB (growth)" if device == "cpu" else "peak CUDA MB"
    print(f"{'variant':16} {'median s':>9} {'min s':>7} {'images/s':>9} {'time x':>7} {mem_name:>21} {'mem x':>6}")
    results, base = {}, None
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--_one", config, variant, "--steps", str(steps), "--device", device,
               "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{config} {variant} failed:\n{proc.stderr.strip()}")
        res = json.loads(proc.stdout.splitlines()[-1])
        res["memory_mb"] = res.get("growth_mb", res["peak_mb"])  # what the memory ratio compares
        base = base or res
        res["time_ratio"] = res["step_s"] / base["step_s"]
        res["memory_ratio"] = res["memory_mb"] / base["memory_mb"]
        results[variant] = res
        mem = f"{res['peak_mb']:.0f}" + (f" ({res['growth_mb']:.0f})" if "growth_mb" in res else "")
        print(f"{variant:16} {res['step_s']:9.3f} {res['min_s']:7.3f} {res['images_per_s']:9.1f} "
              f"{res['time_ratio']:6.2f}x {mem:>21} {res['memory_ratio']:5.2f}x", flush=True)
    ratio = results["gaussian"]["time_ratio"]
    meets = ratio <= TARGET
    print(f"{config}: gaussian weights take {ratio:.2f}x the step time of point weights: "
          f"{'meets' if meets else 'misses'} the target (<= {TARGET}x)")
    return dict(space=space, layers=layers, channels=channels, batch=batch, image_size=size, variants=results,
                gaussian_time_ratio=ratio, meets_target=meets)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=0, help=f"timed steps per variant after {WARMUP} warm-up "
                   "(default 10; --dry: 2)")
    p.add_argument("--quick", action="store_true", help="small proxies instead of the paper configs")
    p.add_argument("--dry", action="store_true", help="a tiny smoke run of a few seconds (numbers are not results)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # internal: config variant, in a subprocess
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.dry else 10)
    if args._one:
        print(json.dumps(run_one(*args._one, steps, args.device)))
        return
    mode = "dry" if args.dry else "quick" if args.quick else "full"
    suffix = {"dry": "-dry", "quick": "-quick", "full": ""}[mode]
    threads = torch.get_num_threads()
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {threads} torch threads"
    print(f"torch {torch.__version__}, {hardware}, mode {mode}, {steps} timed steps after {WARMUP} warm-up"
          + (" (dry: numbers are not results)" if args.dry else ""))
    configs = {name: compare(name + suffix, steps, args.device, threads) for name in ("darts", "nb201")}
    print("RESULT " + json.dumps(dict(torch=torch.__version__, device=args.device, hardware=hardware,
                                      threads=threads, mode=mode, steps=steps, warmup=WARMUP, target=TARGET,
                                      configs=configs)))


if __name__ == "__main__":
    main()
