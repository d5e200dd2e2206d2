"""Speed of one first-order DARTS search step: the plain reference against vnas.supernet.

    python benchmarks/supernet.py [--device cpu|cuda] [--steps N] [--quick] [--ablation] [--threads T]

One search step = an architecture step (forward + backward w.r.t. the mixing-weight logits, Adam) on a
validation batch, then a weight step (forward + backward, grad clip 5, SGD with momentum) on a training
batch: images/s counts both batches. Configs: the DARTS search supernet (8 cells, C=16, batch 64) and
the NB201 supernet (C=16, N=5, batch 64); ``--quick`` uses small proxies (5 cells, C=8, batch 16, 16x16).

- reference: benchmarks/reference_darts.py, the structure of the original DARTS model_search.py (every op
  of every edge summed in Python, ``none`` as x * 0, alphas inside the model, NCHW float32, and the
  original's ``loss.backward()`` for the architecture step, which also computes weight gradients).
- ours: the search step of the library itself, ``Search.architecture_step`` then ``Search.weight_step``
  (vnas.search) for the method ``darts``: the space's supernet with the mixing weights θ passed from
  outside, every term of both objectives computed and returned (vnas.objectives), the L2 terms as terms;
  channels_last (and bf16 autocast on CUDA); the architecture step asks autograd for the gradient of θ
  only, the weight step samples θ without a graph. Our networks normalise pixels in their first module.
Before timing, both are loaded with the same weights and must agree in float64 (logits and the
architecture gradient; the reference is handed the pixels our first module normalises). Each (config,
implementation) runs in its own subprocess, so that peak memory is its own: on CPU the peak resident set
size (ru_maxrss, which includes torch itself) and in brackets its growth over the RSS after import; on
CUDA torch.cuda.max_memory_allocated.
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

from vnas import data, search, spaces  # noqa: E402
from vnas.ops import Normalise  # noqa: E402

CONFIGS = {  # name: (space, model kwargs: channels C and layers (DARTS cells, NB201 cells per stage N), batch, size)
    "darts": ("darts", dict(C=16, layers=8), 64, 32),
    "nb201": ("nb201", dict(C=16, layers=5), 64, 32),
    "darts-quick": ("darts", dict(C=8, layers=5), 16, 16),
    "nb201-quick": ("nb201", dict(C=8, layers=2), 16, 16),
}
IMPLS = ("reference", "reference+cl", "ours", "ours-nchw")


def build_reference(space: str, kw: dict):
    """The reference model (its alphas inside)."""
    return (ref.Network(kw["C"], 10, kw["layers"]) if space == "darts"
            else ref.NB201Network(kw["C"], kw["layers"], 10))


def build_search(space: str, kw: dict, batch: int, impl: str, device: str) -> search.Search:
    """The library's search for method darts on this config (its data: the bundled tiny set, unused here)."""
    cfg = search.SearchConfig(space=space, method="darts", channels=kw["C"], layers=kw["layers"], batch_size=batch,
                              epochs=1, channels_last=impl == "ours")
    return search.Search(cfg, dataset=data.load_cifar10(tiny=True), device=torch.device(device), progress=False)


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
    r = build_reference(space, kw)
    r_alphas = r.arch_parameters()
    o = spaces.get_space(space).build_supernet(C=kw["C"], layers=kw["layers"], num_classes=10)
    o.load_state_dict(ref_to_ours(r.state_dict()))
    r.double()
    o.double().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, size, size, dtype=torch.float64)  # pixels in [0, 1]
    y = torch.arange(4) % 10
    loss_r = F.cross_entropy(logits_r := r(Normalise().double()(x)), y)
    g_r = torch.autograd.grad(loss_r, r_alphas)
    o_alphas = [a.detach().clone().requires_grad_() for a in r_alphas]
    keys = spaces.get_space(space).cell_types
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
    channels_last = impl in ("ours", "reference+cl")
    batches = [(torch.rand(batch, 3, size, size, device=dev), torch.randint(0, 10, (batch,), device=dev))
               for _ in range(2)]
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    (x_t, y_t), (x_v, y_v) = batches

    if impl.startswith("reference"):
        model = build_reference(space, kw).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        params, arch = model.weight_parameters(), model.arch_parameters()
        for a in arch:
            a.data = a.data.to(dev)
        opt_w = torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=3e-4)
        opt_a = torch.optim.Adam(arch, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

        def step():  # the original: one backward for everything, the L2 terms as the optimisers' weight decay
            opt_a.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_v), y_v).backward()
            opt_a.step()
            opt_w.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_t), y_t).backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt_w.step()
    else:
        s = build_search(space, kw, batch, impl, device)
        s.supernet.train()

        def step():  # what Search.train_epoch does per step, less the per-step finite check
            s.architecture_step((x_t, y_t), (x_v, y_v), xi=0.0)
            s.weight_step((x_t, y_t))

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
