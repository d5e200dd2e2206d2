"""Speed of our L∞ PGD (vnas.attacks.pgd) against torchattacks' PGD (torchattacks.PGD 3.5.1), side by side in
one run, on the same model, batch and budget. Target: ours at least as fast (throughput ratio ours/theirs >= 1).

    python benchmarks/attacks.py [--device cpu|cuda] [--steps N] [--repeats R] [--quick] [--threads T] [--dry]

Measured: PGD throughput in images·steps per second (batch size × PGD steps / wall time of one attack call,
random start included), for ours and for torchattacks, and their ratio ours/theirs, from the fastest call of
each (min) and from the median call of each (median). Both attack the same NB201 network (genotype GENOTYPE,
random weights from torch.manual_seed(0), eval mode, float32, NCHW) on the same batch of CIFAR-10 test
images (vnas.data.load_cifar10(): data/ if there, else the bundled tiny subset; pixels in [0, 1], which the
network normalises in its first module) with the same ε = 8/255, step size 2/255 and ``--steps`` steps
(default 10), random start on. Each call is seeded with torch.manual_seed(0). After one warm-up call of each
(allocator, oneDNN / cuDNN kernel selection), ``--repeats`` rounds are timed, each round calling both, in
alternating order (A B, B A, ...: drift in the machine's speed, and any advantage of going first or second,
hits both alike); the per-round ratio (theirs' time / ours, same round) is reported too; on CUDA with a
synchronize after each call. Configs: full size C=16, N=5, batch 128; ``--quick`` C=8, N=1, batch 64;
``--dry`` a smoke run of a few seconds (C=4, N=1, batch 8, 2 steps, 2 repeats, the bundled tiny subset) whose
numbers are not results.

A sanity line follows (not a claim): clean accuracy and both robust accuracies on the batch, with the largest
|δ|∞ of each. The network is untrained, so its accuracies are near chance; the two attacks should agree
within about two binomial standard errors. The last line is ``RESULT {json}`` with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vnas import attacks, config, data, networks, spaces  # noqa: E402

GENOTYPE = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
CONFIGS = {"full": dict(C=16, layers=5, batch=128), "quick": dict(C=8, layers=1, batch=64),
           "dry": dict(C=4, layers=1, batch=8)}  # C channels, layers = N cells per stage, batch size
EPS, STEP_SIZE = 8 / 255, 2 / 255
TARGET = 1.0  # ours' throughput / torchattacks'
WARMUP = 1
INSTALL = "pip install --no-deps torchattacks==3.5.1 (make env does it)"


def import_torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise SystemExit(f"torchattacks is not installed, and this benchmark compares against it: {INSTALL}.") \
            from None
    return torchattacks


def load_batch(batch: int, tiny: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``batch`` CIFAR-10 test images as pixels in [0, 1] (N, 3, 32, 32) and their labels."""
    ds = data.load_cifar10(download=False, tiny=True if tiny else None)
    if len(ds.x_test) < batch:
        raise SystemExit(f"{ds.source} has {len(ds.x_test)} test images, fewer than the batch of {batch}.")
    x = torch.as_tensor(ds.x_test[:batch]).permute(0, 3, 1, 2).float() / 255
    y = torch.as_tensor(ds.y_test[:batch]).long()
    return x.contiguous().to(device), y.to(device), ds.source


def build_model(C: int, layers: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = networks.build_network(spaces.load_genotype(GENOTYPE), C=C, layers=layers, num_classes=10,
                                   auxiliary=False, drop_path=0.0)
    return model.to(device).float().eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: vnas.config.device()")
    p.add_argument("--steps", type=int, default=0, help="PGD steps per attack (default 10; --dry: 2)")
    p.add_argument("--repeats", type=int, default=0, help=f"timed rounds (ours, theirs) after {WARMUP} warm-up "
                   "(default 7; --dry: 2)")
    p.add_argument("--quick", action="store_true", help="a small network instead of the full-size one")
    p.add_argument("--dry", action="store_true", help="a tiny smoke run of a few seconds (numbers are not results)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = p.parse_args(argv)
    ta = import_torchattacks()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = config.device() if args.device is None else torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; use --device cpu.")
    mode = "dry" if args.dry else "quick" if args.quick else "full"
    steps = args.steps or (2 if args.dry else 10)
    repeats = args.repeats or (2 if args.dry else 7)
    cfg = CONFIGS[mode]
    x, y, source = load_batch(cfg["batch"], args.dry, dev)
    model = build_model(cfg["C"], cfg["layers"], dev)
    threads = torch.get_num_threads()
    hardware = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {threads} torch threads"
    print(f"torch {torch.__version__}, torchattacks {ta.__version__}, {hardware}, mode {mode}"
          + (" (dry: numbers are not results)" if args.dry else ""))
    print(f"NB201 network C={cfg['C']}, N={cfg['layers']} ({networks.count_parameters(model):,} parameters, "
          f"untrained, eval, float32); batch {len(x)} of {source}; L∞ PGD eps 8/255, step 2/255, {steps} steps, "
          f"random start; {repeats} timed rounds after {WARMUP} warm-up, in alternating order")

    theirs_attack = ta.PGD(model, eps=EPS, alpha=STEP_SIZE, steps=steps, random_start=True)
    impls = {
        "ours": lambda: attacks.pgd(model, x, y, EPS, STEP_SIZE, steps, norm="linf", random_start=True),
        "torchattacks": lambda: theirs_attack(x, y),
    }

    def call(name: str) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        x_adv = impls[name]()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t, x_adv

    for _ in range(WARMUP):
        for name in impls:
            call(name)
    times = {name: [] for name in impls}
    names = list(impls)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):  # A B, B A, A B, ...: neither always goes first
            times[name].append(call(name)[0])

    work = len(x) * steps  # images·steps per call
    print(f"{'impl':13} {'median s':>9} {'min s':>8} {'median img·steps/s':>19} {'best img·steps/s':>17}")
    results = {}
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        results[name] = dict(median_s=med, min_s=best, median_throughput=work / med, best_throughput=work / best,
                             times=ts)
        print(f"{name:13} {med:9.4f} {best:8.4f} {work / med:19.1f} {work / best:17.1f}")
    ratio_min = results["ours"]["best_throughput"] / results["torchattacks"]["best_throughput"]
    ratio_median = results["ours"]["median_throughput"] / results["torchattacks"]["median_throughput"]
    per_round = sorted(t / o for o, t in zip(times["ours"], times["torchattacks"], strict=True))
    ratio_paired = statistics.median(per_round)  # ours' throughput / theirs, round by round
    meets = min(ratio_min, ratio_median) >= TARGET
    print(f"ratio ours/torchattacks (throughput): min {ratio_min:.3f}x, median {ratio_median:.3f}x: "
          f"{'meets' if meets else 'misses'} the target (>= {TARGET:g}x)")
    print(f"per-round ratio (same round, alternating order): median {ratio_paired:.3f}x, range "
          f"{per_round[0]:.3f}x .. {per_round[-1]:.3f}x over {len(per_round)} rounds")

    # sanity, not a claim: both attacks, seeded alike, reach comparable robust accuracy on this batch
    accuracy = {"clean": (attacks.predict(model, x).argmax(-1) == y).float().mean().item()}
    delta = {}
    for name in impls:
        x_adv = call(name)[1]
        accuracy[name] = (attacks.predict(model, x_adv).argmax(-1) == y).float().mean().item()
        delta[name] = (x_adv - x).abs().max().item()
    noise = 2 * math.sqrt(0.25 / len(x))
    gap = abs(accuracy["ours"] - accuracy["torchattacks"])
    print(f"sanity (not a claim): clean accuracy {accuracy['clean']:.3f}; robust accuracy ours "
          f"{accuracy['ours']:.3f}, torchattacks {accuracy['torchattacks']:.3f} (gap {gap:.3f}, 2 binomial s.e. "
          f"{noise:.3f}: {'comparable' if gap <= noise else 'NOT comparable'}); max |δ|∞ ours "
          f"{delta['ours'] * 255:.2f}/255, torchattacks {delta['torchattacks'] * 255:.2f}/255")
    print("RESULT " + json.dumps(dict(
        torch=torch.__version__, torchattacks=ta.__version__, device=dev.type, hardware=hardware, threads=threads,
        mode=mode, C=cfg["C"], layers=cfg["layers"], batch=len(x), data=source, genotype=GENOTYPE, eps=EPS,
        step_size=STEP_SIZE, steps=steps, repeats=repeats, warmup=WARMUP, impls=results, ratio_min=ratio_min,
        ratio_median=ratio_median, ratio_per_round=per_round, target=TARGET, meets_target=meets, accuracy=accuracy,
        max_delta=delta)))


if __name__ == "__main__":
    main()
