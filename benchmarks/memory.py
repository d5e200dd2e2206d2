"""Memory of one search weight step, per search config, measured without a GPU.

    PYTHONPATH=. python benchmarks/memory.py [--configs NAME ...] [--out FILE.json] [--device meta|cpu] [--tiny]

For each config it builds the search supernet as the search would (vnas.spaces; PC-DARTS' edge weights and
DrNAS' pruned ops through vnas.supernet), runs one forward + backward of the weight step (train mode, the fused
path, dense mixing weights: every kept op but ``none`` runs, as for DARTS, PC-DARTS and DrNAS), and reports
- **parameter bytes**: the supernet's weights (the gradients and SGD's momentum take as much again, each);
- **saved activation bytes**: every tensor that autograd keeps for the backward pass, seen by
  ``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage (a view, or a tensor that several
  ops save, is one storage), the parameters left out (they are the parameter bytes). This is the activation
  memory that a batch costs: it is all alive at the end of the forward pass, the peak of the step;
- **estimate** = saved + 3 x parameters (weights, gradients, momentum). A GPU's peak
  (``torch.cuda.max_memory_allocated``) is higher by what this leaves out: the batch itself, the transient
  tensors of the backward pass (one op's input gradients at a time), cuDNN workspaces, allocator rounding.

It runs on PyTorch's ``meta`` device by default: tensors with shapes and dtypes but no data, so no arithmetic
and no memory, and a 20-cell C=36 supernet is measured on a laptop in seconds (each op still runs as Python).
Every op of the search supports it. ``--device cpu`` measures with real tensors instead, at the config's batch
divided by ``--cpu-batch-divisor`` (default 16), and scales the saved bytes linearly back to the config's batch
(saved activations are proportional to the batch; the few per-channel BN statistics that are not are noise at
this scale): slower, and the same count (tests/test_benchmarks_memory.py checks that meta and CPU agree byte for
byte at one batch). On both, the depthwise convolutions take torch's own path, as on CUDA, not
``DepthwiseConv2d``'s CPU shortcut (which saves other tensors), so the saved set is the GPU's.

Float32 throughout. The search's bf16 autocast on CUDA stores most conv and BN inputs in bf16: expect the
activations to shrink by up to half there (``benchmarks/gpu.py`` measures the real peak). ``channels_last``
does not change any byte count.

Configs (``--configs``, default all): darts (the DARTS search: 8 cells, C=16, batch 64, all channels);
pc_darts (8 cells, C=16, batch 256, K=4, edge normalisation: PC-DARTS' search); drnas_stage1 and drnas_stage2
(DrNAS' progressive search run directly on the 20-cell, C=36 network, batch 64: K=6 with 7 ops, then K=4 with 4
ops; which 4 ops an edge keeps depends on the search: drnas_stage2 keeps the four convolutions, the most
memory a stage-2 edge can cost, drnas_stage2_light the pools, skip and sep_conv_3x3); darts_20x36 (that network
searched with all channels and all ops).
``--tiny``: the same configs at 3 cells, C=12 and 1/32 of the batch, in seconds (a test of the code paths;
its numbers are not results). ``--out FILE`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vnas import spaces  # noqa: E402
from vnas.ops import DepthwiseConv2d  # noqa: E402
from vnas.posteriors import edge_normalise  # noqa: E402
from vnas.supernet import edge_key  # noqa: E402

MB = 2**20
CONVS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")  # the heaviest 4 ops an edge can keep
LIGHT = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")  # the lightest 4 with a convolution


@dataclass(frozen=True)
class MemoryConfig:
    """One search's weight step: the DARTS-space supernet (``layers`` cells, ``channels`` C), ``batch`` images
    of 32 x 32, partial channels K, the ops each edge keeps (None: all 8; else their names), PC-DARTS' edge
    normalisation."""

    name: str
    what: str
    layers: int
    channels: int
    batch: int
    partial_channels: int = 1
    ops: tuple[str, ...] | None = None
    edge_norm: bool = False
    image_size: int = 32


ALL_BUT_NONE = tuple(op for op in spaces.darts.PRIMITIVES if op != "none")
CONFIGS = (
    MemoryConfig("darts", "DARTS search", 8, 16, 64),
    MemoryConfig("pc_darts", "PC-DARTS search (edge normalisation)", 8, 16, 256, partial_channels=4, edge_norm=True),
    MemoryConfig("drnas_stage1", "DrNAS progressive, stage 1", 20, 36, 64, partial_channels=6, ops=ALL_BUT_NONE),
    MemoryConfig("drnas_stage2", "DrNAS progressive, stage 2 (4 convs)", 20, 36, 64, partial_channels=4, ops=CONVS),
    MemoryConfig("drnas_stage2_light", "DrNAS progressive, stage 2 (pools, skip, sep_conv_3x3)", 20, 36, 64,
                 partial_channels=4, ops=LIGHT),
    MemoryConfig("darts_20x36", "20-cell C=36 supernet, all channels", 20, 36, 64),
)


def tiny(cfg: MemoryConfig) -> MemoryConfig:
    """The --tiny version of a config: 3 cells, C=12 (divisible by K = 4 and 6), 1/32 of the batch."""
    return replace(cfg, layers=3, channels=12, batch=max(1, cfg.batch // 32))


def build(cfg: MemoryConfig, device: torch.device):
    """The supernet of ``cfg`` on ``device`` (built there: on ``meta`` nothing is initialised) and its dense
    mixing weights: uniform over the kept ops, and uniform edge weights over each node's incoming edges."""
    space = spaces.get_space("darts")
    with device:
        net = space.build_supernet(C=cfg.channels, layers=cfg.layers, num_classes=10,
                                   partial_channels=cfg.partial_channels)
        if cfg.ops is not None:  # DrNAS: the stage's pruning (the bytes do not depend on how K got here)
            unknown = [op for op in cfg.ops if op not in space.ops]
            if unknown:
                raise ValueError(f"config {cfg.name!r}: unknown ops {unknown}; DARTS ops: {', '.join(space.ops)}.")
            row = torch.tensor([op in cfg.ops for op in space.ops], device="cpu")
            net.set_stage({c: row.expand(shape[0], -1).clone() for c, shape in net.shapes.items()},
                          cfg.partial_channels)
    net.train()
    for m in net.modules():  # on the CPU too, torch's own depthwise convolution (what CUDA and meta run), not
        if isinstance(m, DepthwiseConv2d):  # DepthwiseConv2d's CPU shortcut, which saves other tensors
            m._fast = False
    kept = torch.tensor([cfg.ops is None or op in cfg.ops for op in space.ops], dtype=torch.float32)
    theta = {c: (kept / kept.sum()).expand(shape).clone().to(device) for c, shape in net.shapes.items()}
    if cfg.edge_norm:
        for c, shape in net.shapes.items():
            theta[edge_key(c)] = edge_normalise(torch.zeros(shape[0]), space.edges).to(device)
    return net, theta


def measure(cfg: MemoryConfig, device: str = "meta", cpu_batch_divisor: int = 16) -> dict:
    """Parameter bytes and the bytes autograd saves for the backward pass of one weight step of ``cfg``."""
    dev = torch.device(device)
    batch = cfg.batch if dev.type == "meta" else max(1, cfg.batch // cpu_batch_divisor)
    start = time.perf_counter()
    net, theta = build(cfg, dev)
    params = list(net.parameters())
    param_storages = {p.untyped_storage()._cdata for p in params}
    saved: dict[int, int] = {}  # storage (its C++ address: alive, so unique, until the backward frees it) -> bytes

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            saved.setdefault(storage._cdata, storage.nbytes())
        return t

    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=dev)
    y = torch.zeros(batch, dtype=torch.long, device=dev)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(net(x, theta), y)
    loss.backward()
    scale = cfg.batch / batch
    saved_bytes = int(round(sum(saved.values()) * scale))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    return {**asdict(cfg), "device": dev.type, "measured_batch": batch, "scaled_by": scale,
            "parameters": sum(p.numel() for p in params), "param_bytes": param_bytes,
            "saved_bytes": saved_bytes, "saved_tensors": len(saved), "saved_bytes_per_image": saved_bytes / cfg.batch,
            "estimate_bytes": saved_bytes + 3 * param_bytes, "seconds": time.perf_counter() - start}


def table(rows: list[dict]) -> str:
    head = (f"{'config':<18} {'cells':>5} {'C':>3} {'batch':>5} {'K':>2} {'ops':>3} {'params MB':>10} "
            f"{'saved MB':>10} {'MB/image':>9} {'estimate MB':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ops = 8 if r["ops"] is None else len(r["ops"])
        lines.append(f"{r['name']:<18} {r['layers']:>5} {r['channels']:>3} {r['batch']:>5} {r['partial_channels']:>2} "
                     f"{ops:>3} {r['param_bytes'] / MB:>10.1f} {r['saved_bytes'] / MB:>10.1f} "
                     f"{r['saved_bytes_per_image'] / MB:>9.2f} {r['estimate_bytes'] / MB:>12.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    names = [c.name for c in CONFIGS]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", choices=names, default=names, help="which configs (default: all)")
    p.add_argument("--out", type=Path, help="write every number as JSON to this file")
    p.add_argument("--device", choices=("meta", "cpu"), default="meta", help="meta (default: no data, no arithmetic) "
                   "or cpu (real tensors at batch / --cpu-batch-divisor, scaled back)")
    p.add_argument("--cpu-batch-divisor", type=int, default=16,
                   help="--device cpu: measure at batch / this (default 16)")
    p.add_argument("--tiny", action="store_true", help="3 cells, C=12, 1/32 of the batch: seconds (not results)")
    args = p.parse_args(argv)
    if args.cpu_batch_divisor < 1:
        p.error(f"--cpu-batch-divisor must be >= 1, got {args.cpu_batch_divisor}")
    configs = [tiny(c) if args.tiny else c for c in CONFIGS if c.name in args.configs]
    print(f"torch {torch.__version__}, device {args.device}, float32, one weight step (forward + backward), "
          f"train mode, fused path" + (" -- TINY: numbers are not results" if args.tiny else ""))
    rows = []
    for cfg in configs:
        rows.append(measure(cfg, args.device, args.cpu_batch_divisor))
        r = rows[-1]
        scaled = (f", measured at batch {r['measured_batch']} and scaled x{r['scaled_by']:g}"
                  if r["scaled_by"] != 1 else "")
        print(f"  {cfg.name}: {cfg.what}: {r['parameters']:,} parameters, {r['saved_tensors']} saved tensors"
              f"{scaled} ({r['seconds']:.1f} s)", flush=True)
    print()
    print(table(rows))
    print("\nsaved = activations autograd keeps for the backward pass (once per storage, parameters excluded); "
          "estimate = saved + 3 x params (weights, gradients, momentum); MB = 2^20 bytes.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
                "tiny": args.tiny, "dtype": "float32"}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
