"""Count the host reads of a block of code: every Python-level read of a tensor's value (``Tensor.item``,
``tolist``, ``cpu``, ``numpy``, ``bool()``, ``float()``, ``int()``, ``__index__``) on one device type, with
the line that made it, and on CUDA every synchronizing call that torch's sync debug mode reports.

A read of a CUDA tensor waits for the GPU to finish everything queued before it: a read per step keeps the
GPU idle while Python catches up. The search's inner loop makes none (tests/test_search.py counts them on the
CPU, where the same Python runs); ``benchmarks/gpu.py`` counts them on a GPU.
Introduced in chapters/06_full_search.py.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch

from vnas import config

ROOT = config.ROOT
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

def _short(filename: str) -> str:
    """A source file as vnas/..., torch/... or its name alone."""
    path = Path(filename).resolve()
    parts = path.parts
    if "site-packages" in parts or "dist-packages" in parts:
        top = max(i for i, x in enumerate(parts) if x in ("site-packages", "dist-packages")) + 1
        return "/".join(parts[top:])
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return path.name


def _where(frame) -> str:
    return f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} ({frame.f_code.co_name})"


def _site(frame) -> tuple[str, str]:
    """(the innermost caller outside this file and torch/_tensor.py, the innermost caller inside vnas/)."""
    here, tensor_py = str(Path(__file__).resolve()), os.path.join("torch", "_tensor.py")
    site = lib = None
    while frame is not None:
        name = frame.f_code.co_filename
        if site is None and name != here and not name.endswith(tensor_py):
            site = _where(frame)
        if lib is None and name != here and os.sep + "vnas" + os.sep in name:
            lib = _where(frame)
        if site is not None and lib is not None:
            break
        frame = frame.f_back
    return site or "?", lib or "-"


def _is_sync(w) -> bool:
    return "synchroniz" in str(w.message)  # torch.cuda sync debug mode: "called a synchronizing CUDA operation"


@contextlib.contextmanager
def count_host_reads(device_type: str):
    """Count Python-level reads of tensors on ``device_type`` (and, on CUDA, synchronizing calls) in the block.

    Yields a dict that holds, when the block ends, ``reads`` and ``syncs``: Counters of (what, site, vnas site).
    A sync made by a counted read is listed under the read's site; any other under the Python line that called
    the operation (e.g. a copy or a ``nonzero`` inside C++)."""
    found = {"reads": collections.Counter(), "syncs": collections.Counter()}
    own = {name: torch.Tensor.__dict__.get(name) for name in READS}
    originals = {name: getattr(torch.Tensor, name) for name in READS}
    debug = device_type == "cuda"
    previous = torch.cuda.get_sync_debug_mode() if debug else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def wrap(name, original):
            def read(self, *args, **kwargs):
                if self.device.type != device_type:
                    return original(self, *args, **kwargs)
                site = _site(sys._getframe(1))
                found["reads"][(name, *site)] += 1
                before = len(caught)
                out = original(self, *args, **kwargs)
                syncs = sum(map(_is_sync, caught[before:]))
                if syncs:
                    found["syncs"][(f"sync in {name}", *site)] += syncs
                    caught[before:] = [w for w in caught[before:] if not _is_sync(w)]
                return out
            return read

        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        try:
            if debug:
                torch.cuda.set_sync_debug_mode("warn")
            yield found
        finally:
            if debug:
                torch.cuda.set_sync_debug_mode(previous)
            for name in READS:
                if own[name] is not None:
                    setattr(torch.Tensor, name, own[name])
                else:
                    delattr(torch.Tensor, name)
    for w in filter(_is_sync, caught):
        found["syncs"][("sync", f"{_short(w.filename)}:{w.lineno}", "-")] += 1


def reads_per_step(job, device_type: str) -> dict[tuple[str, str, str], float]:
    """The host reads that each step of ``job.train_epoch()`` makes (a search or a training, whose
    ``cfg.steps_per_epoch`` is set here), by (what, site, vnas site): an epoch of 3 steps less an epoch of 1, halved,
    so that an epoch's own reads (its evaluation, its one read of the logged means) cancel. A first epoch of 1 step,
    not counted, builds the lazily made state (optimiser buffers). Introduced in chapters/06_full_search.py."""
    counts = []
    for steps in (1, 1, 3):
        job.cfg.steps_per_epoch = steps
        with count_host_reads(device_type) as found:
            job.train_epoch()
        counts.append(found["reads"])
    one, three = counts[1], counts[2]
    return {site: (three[site] - one.get(site, 0)) / 2 for site in three if three[site] != one.get(site, 0)}


__all__ = ["READS", "count_host_reads", "reads_per_step"]
