"""Speed of one first-order DARTS search step: the plain reference against vnas.supernet.

    python benchmarks/supernet.py [--device cpu|cuda] [--steps N] [--quick] [--ablation] [--threads T]

One search step = an architecture step (forward + backward w.r.t. the mixing-weight logits, Adam) on a
validation batch, then a weight step (forward + backward, grad clip 5, SGD with momentum) on a training
batch: images/s counts both batches. Configs: the DARTS search supernet (8 cells, C=16, batch 64) and
the NB201 supernet (C=16, N=5, batch 64); ``--quick`` uses small proxies (5 cells, C=8, batch 16, 16x16).

- reference: benchmarks/reference_darts.py, the structure of the original DARTS model_search.py (every op
  of every edge summed in Python, ``none`` as x * 0, alphas inside the model, NCHW float32, and the
  original's ``loss.backward()`` for the architecture step, which also computes weight gradients).
- ours: vnas.supernet with the softmax weights passed from outside; channels_last (and bf16 autocast on
  CUDA); the architecture step asks autograd for the gradient of the logits only, the weight step
  computes the mixing weights without a graph.
Before timing, both are loaded with the same weights and must agree in float64 (logits and the
architecture gradient). Each (config, implementation) runs in its own subprocess, so that peak memory is
its own: on CPU the peak resident set size (ru_maxrss, which includes torch itself) and in brackets its
growth over the RSS after import; on CUDA torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import reference_darts as ref  # noqa: E402

from vnas.supernet import DartsSupernet, NB201Supernet  # noqa: E402

CONFIGS = {  # name: (space, model kwargs, batch, image size)
    "darts": ("darts", dict(C=16, layers=8), 64, 32),
    "nb201": ("nb201", dict(C=16, N=5), 64, 32),
    "darts-quick": ("darts", dict(C=8, layers=5), 16, 16),
    "nb201-quick": ("nb201", dict(C=8, N=2), 16, 16),
}
IMPLS = ("reference", "reference+cl", "ours", "ours-nchw")


def build(space: str, kw: dict, impl: str):
    """The model, its weight parameters, the alpha logits and a function alphas -> mixing weights."""
    if impl.startswith("reference"):
        model = (ref.Network(kw["C"], 10, kw["layers"]) if space == "darts"
                 else ref.NB201Network(kw["C"], kw["N"], 10))
        return model, model.weight_parameters(), model.arch_parameters()
    model = DartsSupernet(**kw) if space == "darts" else NB201Supernet(**kw)
    keys = ("normal", "reduce") if space == "darts" else ("cell",)
    alphas = {k: torch.nn.Parameter(1e-3 * torch.randn(*model.shapes[k])) for k in keys}
    return model, list(model.parameters()), alphas


def ref_to_ours(state: dict) -> dict:
    """Rename the reference's state dict to vnas.supernet's (same tensors, other module names)."""
    out = {}
    for k, v in state.items():
        if k.startswith("alphas"):
            continue
        k = re.sub(r"\.(_ops|edges)\.(\d+)\._ops\.", r".mixed.\2.ops.", k)
        k = re.sub(r"\.op\.(\d+)", lambda m: f".{int(m.group(1)) - 1}", k)  # our ReLU is not a module
        k = re.sub(r"\.(conv_[12])\.", r".0.\1.", k).replace(".bn.", ".1.")  # FactorizedReduce
        out[k.replace("downsample.", "shortcut.")] = v
    return out


def check_same_function(space: str, kw: dict, size: int) -> float:
    """Largest difference of logits and architecture gradients between reference and ours, in float64."""
    torch.manual_seed(0)
    r, _, r_alphas = build(space, kw, "reference")
    o, _, _ = build(space, kw, "ours")
    o.load_state_dict(ref_to_ours(r.state_dict()))
    r.double()
    o.double().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    y = torch.arange(4) % 10
    loss_r = F.cross_entropy(logits_r := r(x), y)
    g_r = torch.autograd.grad(loss_r, r_alphas)
    o_alphas = [a.detach().clone().requires_grad_() for a in r_alphas]
    keys = ("normal", "reduce") if space == "darts" else ("cell",)
    logits_o = o(x, {k: F.softmax(a, -1) for k, a in zip(keys, o_alphas, strict=True)})
    g_o = torch.autograd.grad(F.cross_entropy(logits_o, y), o_alphas)
    diffs = [(logits_r - logits_o).abs().max()]
    diffs += [(a - b).abs().max() / a.abs().max() for a, b in zip(g_r, g_o, strict=True)]
    return max(d.item() for d in diffs)


def _rss_kb() -> int:
    """The current resident set size in KiB (Linux), else the peak so far."""
    try:
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_one(space: str, kw: dict, batch: int, size: int, impl: str, steps: int, device: str) -> dict:
    """Time ``steps`` search steps (after one warm-up step) of one implementation; report speed and memory."""
    rss0 = _rss_kb()
    dev = torch.device(device)
    torch.manual_seed(0)
    model, params, alphas = build(space, kw, impl)
    model.to(dev)
    fast = impl in ("ours", "reference+cl")  # channels_last
    if fast:
        model = model.to(memory_format=torch.channels_last)
    arch = list(alphas.values()) if isinstance(alphas, dict) else alphas
    for a in arch:
        a.data = a.data.to(dev)
    opt_w = torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=3e-4)
    opt_a = torch.optim.Adam(arch, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    data = [(torch.randn(batch, 3, size, size, device=dev), torch.randint(0, 10, (batch,), device=dev))
            for _ in range(2)]
    if fast:
        data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]
    bf16 = dev.type == "cuda" and impl.startswith("ours")
    autocast = torch.autocast("cuda", torch.bfloat16) if bf16 else None

    def forward(x, y, mix=None):
        if autocast is None:
            return F.cross_entropy(model(x) if mix is None else model(x, mix), y)
        with autocast:
            return F.cross_entropy(model(x, mix), y)

    def step():
        (x_t, y_t), (x_v, y_v) = data
        opt_a.zero_grad(set_to_none=True)
        if impl.startswith("reference"):  # the original: one backward for everything
            forward(x_v, y_v).backward()
        else:  # only d loss / d alpha
            loss = forward(x_v, y_v, {k: F.softmax(a, -1) for k, a in alphas.items()})
            for a, g in zip(arch, torch.autograd.grad(loss, arch), strict=True):
                a.grad = g
        opt_a.step()
        if impl.startswith("reference"):
            loss = forward(x_t, y_t)
        else:
            with torch.no_grad():
                mix = {k: F.softmax(a, -1) for k, a in alphas.items()}
            loss = forward(x_t, y_t, mix)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt_w.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: allocator, oneDNN / cuDNN kernel selection
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    t = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else rss / 1024
    return dict(step_s=t, images_per_s=2 * batch / t, peak_mb=mem, growth_mb=(rss - rss0) / 1024,
                times=times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after 1 warm-up)")
    p.add_argument("--quick", action="store_true", help="small proxies instead of the paper configs")
    p.add_argument("--ablation", action="store_true", help="also time reference+channels_last, ours in NCHW")
    p.add_argument("--configs", nargs="*", help="a subset of " + ", ".join(CONFIGS))
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # internal: config impl, in a subprocess
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._one:
        space, kw, batch, size = CONFIGS[args._one[0]]
        print(json.dumps(run_one(space, kw, batch, size, args._one[1], args.steps, args.device)))
        return
    names = args.configs or ([n for n in CONFIGS if n.endswith("-quick")] if args.quick
                             else [n for n in CONFIGS if not n.endswith("-quick")])
    impls = ["reference", "reference+cl", "ours-nchw", "ours"] if args.ablation else ["reference", "ours"]
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.steps} timed steps after 1 warm-up, median step time")
    mem_name = "peak RSS MB (growth)" if args.device == "cpu" else "peak CUDA MB"
    print(f"{'config':12} {'impl':13} {'step s':>7} {'images/s':>9} {'x ref':>6} {mem_name:>22}")
    for name in names:
        space, kw, batch, size = CONFIGS[name]
        err = check_same_function(space, kw, size)
        if err > 1e-9:
            raise SystemExit(f"{name}: reference and ours differ by {err:.2e} in float64")
        base = None
        for impl in impls:
            cmd = [sys.executable, __file__, "--_one", name, impl, "--steps", str(args.steps),
                   "--device", args.device, "--threads", str(torch.get_num_threads())]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            base = base or res["images_per_s"]
            mem = f"{res['peak_mb']:.0f}"
            mem += f" ({res['growth_mb']:.0f})" if args.device == "cpu" else ""
            print(f"{name:12} {impl:13} {res['step_s']:7.2f} {res['images_per_s']:9.1f} "
                  f"{res['images_per_s'] / base:6.2f} {mem:>22}", flush=True)
        print(f"{name:12} same function: max difference {err:.1e} (float64, logits and alpha gradients)")


if __name__ == "__main__":
    main()
