# %% [markdown]
# # 06 · Full CIFAR-10 searches and evaluation on a GPU
#
# Every search in chapters 02-05 ran a proxy sized for a laptop CPU. The published protocols are larger: the DARTS
# search takes 8 cells with $C = 16$ through 50 epochs of 25,000 + 25,000 images, and the evaluation trains the
# found cell as a 20-cell network with $C = 36$ for 600 epochs. Each takes hours to days on a GPU. This chapter is
# the manual for running them, and it runs the same commands here, on real CIFAR-10, at a size this machine can
# afford:
#
# 1. **The commands**: search, resume, derive, train, sweep, several GPUs with `torchrun`, and the one-call GPU check.
# 2. **A real search, killed and resumed.** The search command runs in a child process; we kill it in the middle of
#    an epoch, `resume` finishes it, and the result is compared number by number with a run nobody interrupted.
# 3. **What the logs mean, and what a run folder holds**: `config.json`, `manifest.json`, `history.jsonl` (every
#    term of both objectives, per epoch), `genotype.json`, `checkpoint.pt`; then a short evaluation training.
# 4. **Projected times**: seconds per step measured here, projected onto the full protocols, beside the published
#    GPU costs.
# 5. **Several GPUs**: how `torchrun` shares a batch among processes.
# 6. **Where full results appear**: only from `data/results/`, with their manifests.

# %%
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import vnas
from vnas import config, data, hostreads, results, runs, search, train
from vnas.plots import plot_edge_summary, plot_objective_terms

vnas.setup(seed=0)
MODE = vnas.mode()
# one thread, here and in the child processes below: when other work shares the cores, several threads wait on
# each other, and with one thread a run repeats bit for bit in another process
torch.set_num_threads(1)
cifar = data.load_cifar10()
DEVICE = vnas.device()
print(vnas.banner(cifar.describe()))
CHAPTER_START = time.perf_counter()
RUNS = Path(tempfile.mkdtemp(prefix="vnas_06_"))  # this chapter's run folders (removed at the end)


def sync():
    """Wait for the GPU before reading the clock (nothing to wait for on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# %% [markdown]
# ## 1. The commands
#
# On the GPU machine, in the repository (after `make env`, or `pip install -e .` in your environment):
#
# ```bash
# python -m vnas search --space darts --method darts --mode full --out runs/darts_s0    # DARTS, first order
# python -m vnas resume runs/darts_s0            # after a kill, a crash or a lost machine: continues exactly
# python -m vnas derive runs/darts_s0            # prints the cell found (runs/darts_s0/genotype.json)
# python -m vnas train --genotype runs/darts_s0/genotype.json --mode full --out runs/darts_s0_eval   # 600 epochs
# python -m vnas resume runs/darts_s0_eval       # a training resumes the same way
# python -m vnas sweep configs/sweeps/full_darts.toml    # DARTS 1st/2nd order: 4 seeds each, each cell evaluated
# python -m vnas sweep configs/sweeps/full_methods.toml  # SNAS, GDAS, variational, random search: the same
# python -m vnas sweep configs/sweeps/full_drnas.toml    # DrNAS, progressive, at 20 cells and C=36: the same
# torchrun --nproc-per-node=4 -m vnas search --space darts --method darts --mode full --out runs/darts_s0_4gpu
# PYTHONPATH=. python benchmarks/gpu.py --data cifar10_jpeg.npz --out gpu.json      # first: about 4 minutes
# ```
#
# - `--mode full` (or `VNAS_MODE=full`) picks the `[full]` table of `configs/search_darts.toml` (and of
#   `configs/train_darts.toml` for `train`): the published protocols. `--config FILE` overrides keys of it (flat, or
#   in the same `[smoke]` / `[quick]` / `[full]` tables), e.g. `order = "second"` for DARTS' second-order search;
#   `--seed N` starts another seed; `--epochs N` changes the length (and with it the cosine schedule); `--overwrite`
#   starts a folder again. `--method snas | gdas | drnas | variational | random_ws` swaps the method, nothing else.
# - `search` writes its run folder after every epoch: a kill loses at most the epoch in progress. `resume` reads the
#   config from the folder, so it takes no other options.
# - `train` trains the final network of a genotype (a `genotype.json`, a genotype string, or `DARTS_V1` /
#   `DARTS_V2`) from scratch and evaluates it on the CIFAR-10 test set after every epoch.
# - `sweep configs/sweeps/full_*.toml`: the published protocols of every method (`full_darts`: DARTS first and
#   second order; `full_methods`: SNAS, GDAS, the variational search and random search with shared weights at the
#   same protocol; `full_drnas`: DrNAS with its progressive schedule), the seeds, and the 600-epoch evaluation of
#   each cell found; the results, with their manifest, land in `data/results/full_darts/` and so on (section 6). A
#   killed sweep resumes where it stopped: every finished run is kept.
# - `torchrun ... -m vnas search` runs one search in $K$ processes, one per GPU (section 5).
# - `benchmarks/gpu.py` checks a GPU in one call before anything long runs on it: it times the full search (first and
#   second order) and the evaluation training through the library's own loops, and prints images per second, peak
#   memory, the share of the card's matmul rate and the projected hours (section 4).
#
# The protocols, read from the configs as every command reads them; the columns are the published protocol and the
# table of this chapter's mode:

# %%
full_cfg = search.load_search_config("darts", method="darts", run_mode="full")
mode_cfg = search.load_search_config("darts", method="darts")  # this mode's table
full_train = train.load_train_config("DARTS_V2", run_mode="full")
KEYS = ("layers", "channels", "partial_channels", "images_per_class", "batch_size", "epochs", "steps_per_epoch",
        "eval_batches", "order", "lr", "arch_lr")
print(f"configs/search_darts.toml {'[full]':>10s} {f'[{MODE}]':>10s}   (0: all images / all steps / all batches)")
for key in KEYS:
    print(f"  {key:23s} {getattr(full_cfg, key)!s:>10s} {getattr(mode_cfg, key)!s:>10s}")
print("configs/train_darts.toml [full]: " + ", ".join(
    f"{k} {getattr(full_train, k)}" for k in ("layers", "channels", "epochs", "batch_size", "cutout", "auxiliary_weight",
                                              "drop_path", "lr", "weight_decay")))

# %% [markdown]
# ## 2. A real search, killed and resumed
#
# The search below is this mode's table of `configs/search_darts.toml`, shortened to a few epochs of a few steps
# (a TOML file passed with `--config`, as you would pass one on a GPU). How much smaller than the published search
# is it? One crude measure multiplies the ratios of what each run processes: images per epoch ($S$ steps of batch
# $B$), epochs $E$, cells $L$ and channels $C$, against the full protocol's (subscript f):
#
# $$\rho = \frac{E\,S\,B}{E_\text{f}\,S_\text{f}\,B_\text{f}} \cdot \frac{L}{L_\text{f}} \cdot \frac{C}{C_\text{f}}.
#   \tag{6.1}$$
#
# It is a size ratio, not a cost ratio (a convolution's cost grows with $C^2$, and partial channels send only
# $1/K$ of the channels through each mixed operation); section 4 measures the cost instead.

# %%
SHORT = {"smoke": dict(images_per_class=20, epochs=3, steps_per_epoch=2, eval_batches=1),
         "quick": dict(epochs=3, steps_per_epoch=8, eval_batches=4),
         "full": dict(epochs=3, steps_per_epoch=50, eval_batches=10)}[MODE]
protocol = RUNS / "short_search.toml"
protocol.write_text("".join(f"{k} = {v}\n" for k, v in SHORT.items()))
cfg = search.load_search_config("darts", protocol, method="darts")  # what `--config short_search.toml` reads

CIFAR10_TRAIN = 50_000  # the published search splits the training set 25,000 / 25,000
S_full = CIFAR10_TRAIN // 2 // full_cfg.batch_size  # full batches only, as vnas.data.Batches draws them
S = search.Search(cfg, dataset=cifar, device=DEVICE, progress=False).steps_per_epoch()  # as the run will count
factors = {"images per epoch (S x B)": S * cfg.batch_size / (S_full * full_cfg.batch_size),
           "epochs": cfg.epochs / full_cfg.epochs, "cells": cfg.layers / full_cfg.layers,
           "channels": cfg.channels / full_cfg.channels}
rho = math.prod(factors.values())
print(f"this run: {cfg.epochs} epochs x {S} steps of {cfg.batch_size} images, {cfg.layers} cells, C={cfg.channels}, "
      f"partial channels 1/{cfg.partial_channels}; full: {full_cfg.epochs} x {S_full} steps of {full_cfg.batch_size}, "
      f"{full_cfg.layers} cells, C={full_cfg.channels}")
for name, f in factors.items():
    print(f"  {name:25s} {f:.4f}")
print(f"rho, Eq. (6.1) = {rho:.2e}: the published search is {1 / rho:,.0f} times this one by this measure")

# %% [markdown]
# Now the command itself, in a child process, exactly as you would type it. We watch `history.jsonl` and kill the
# process with SIGKILL (no chance to clean up, as when a machine is lost) as soon as two epochs are written, that is,
# early in the third epoch. The process's output goes to `search.log`.

# %%
folder = RUNS / "darts_s0"
command = [sys.executable, "-m", "vnas", "search", "--space", "darts", "--method", "darts", "--mode", MODE,
           "--config", str(protocol), "--out", str(folder)]
print("$ python -m vnas " + " ".join(command[3:]))
env = {**os.environ, "OMP_NUM_THREADS": "1", "VNAS_MODE": MODE}
KILL_AFTER = 2  # epochs
history_file = folder / "history.jsonl"
with open(RUNS / "search.log", "w") as out, open(RUNS / "search.err", "w") as err:
    child = subprocess.Popen(command, cwd=config.ROOT, env=env, stdout=out, stderr=err)
    while child.poll() is None:
        if history_file.exists() and len(history_file.read_text().splitlines()) >= KILL_AFTER:
            child.kill()  # SIGKILL, to this process only
            break
        time.sleep(0.02)
    child.wait()
if child.returncode not in (0, -9):
    raise RuntimeError(f"the search failed (exit status {child.returncode}):\n{(RUNS / 'search.err').read_text()[-3000:]}")
print((RUNS / "search.log").read_text())
written = len(runs.RunDir(folder).history())
print(f"exit status {child.returncode} ({'killed by SIGKILL' if child.returncode == -9 else 'it finished first'}); "
      f"the folder holds {written} finished epoch(s) of {cfg.epochs}")

# %% [markdown]
# `python -m vnas resume runs/darts_s0` does what the next cell does: it rebuilds the search from the folder's
# `config.json`, loads `checkpoint.pt` (weights, architecture parameters, both optimisers, the schedule, every random
# number generator, the history) and runs the remaining epochs.

# %%
print(f"$ python -m vnas resume {folder}")
job = search.resume(folder, dataset=cifar, device=DEVICE, progress=False)
print(f"resuming {folder} after epoch {job.epoch} of {job.cfg.epochs}")
resumed_from = job.epoch
job.fit()
print(f"genotype: {job.genotype()}")

# %% [markdown]
# The same search without the kill, in this process. The library's loop (`Search.train_epoch`) calls a hook after
# every step, which we use to time the steps (section 4 needs them); nothing else differs.

# %%
reference = search.Search(cfg, dataset=cifar, device=DEVICE, progress=False)
step_seconds, eval_seconds = [], []
for _ in range(cfg.epochs):
    sync()
    marks = [time.perf_counter()]
    row = reference.train_epoch(on_step=lambda marks=marks: (sync(), marks.append(time.perf_counter())))
    step_seconds.append(np.diff(marks))
    eval_seconds.append(row["seconds"] - (marks[-1] - marks[0]))  # the rest of the epoch: mostly the evaluation


def numbers(obj, path=""):
    """Every number of a history row by its path ('architecture.nll', 'edges.normal.mean.3.5'), the wall time left
    out; strings (the genotype) as they are."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() if key != "seconds"
                for k, v in numbers(value, f"{path}.{key}" if path else key).items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in numbers(value, f"{path}.{i}").items()}
    return {path: obj}


killed_rows, straight_rows = runs.RunDir(folder).history(), reference.history
pairs = [(numbers(a), numbers(b)) for a, b in zip(killed_rows, straight_rows, strict=True)]
same_keys = all(a.keys() == b.keys() for a, b in pairs)
diffs = [abs(a[k] - b[k]) for a, b in pairs for k in a if isinstance(a[k], float | int) and a[k] is not None]
texts_equal = all(a[k] == b[k] for a, b in pairs for k in a if not isinstance(a[k], float | int))
max_diff = max(diffs)
print(f"killed after {written} epochs, resumed from epoch {resumed_from}; {len(diffs):,} numbers in {len(pairs)} "
      f"history rows compared with the uninterrupted run")
print(f"same keys in every row: {same_keys}; genotypes and other strings equal: {texts_equal}; "
      f"largest |difference| of a number: {max_diff:.1e}")
print("the resumed run IS the uninterrupted run, bit for bit" if max_diff == 0 and texts_equal and same_keys else
      f"the runs differ (by up to {max_diff:.1e})" + (": GPU kernels are not bitwise deterministic" if
                                                      DEVICE.type == "cuda" else ": on a CPU they should not"))

# %% [markdown]
# ## 3. What the logs mean
#
# Each finished epoch prints two lines. Taking the first epoch of the run above apart, field by field (every number
# below is read from the same epoch's row of `history.jsonl`):

# %%
first = killed_rows[0]
print(search.Search.summary(first))
print(f"""
- epoch {first['epoch']}: epochs are counted from 1; the line appears once the epoch's checkpoint is written.
- train loss {first['train_loss']:.3f} acc {first['train_acc']:.3f}: the means over the epoch's {first['steps']} weight steps
  of the NLL and the accuracy on the search-train batches, at the θ each step drew (for DARTS, the softmax
  itself); in the history, train_loss is weights.nll = {first['weights']['nll']:.3f}.
- val loss {first['val_loss']:.3f} acc {first['val_acc']:.3f}: measured after the epoch, on {cfg.eval_batches or 'all the'} batch(es)
  of the search-val half, with the supernet at the distribution's mean θ: how good the supernet is now.
- {first['seconds']:.1f}s: the epoch's wall time, evaluation included.
- the second line: the cell derived from θ now (chapter 02's rule, Eq. (2.2) and after).""")
changes = [r["epoch"] for r, prev in zip(killed_rows[1:], killed_rows, strict=False) if r["genotype"] != prev["genotype"]]
print(f"  Here the derived cell changed at epoch(s) {changes or 'none'} of {len(killed_rows)}: "
      + ("it has not settled yet, as expected this early." if changes and changes[-1] == len(killed_rows) else
         "it was stable over the last epoch(s)."))

# %% [markdown]
# A progress bar (steps done, steps per second) goes to stderr while an epoch runs; a run that produces NaN stops at
# once with the step and the term that went wrong, and keeps the last good checkpoint.
#
# ### What a run folder holds

# %%
for path in sorted(folder.iterdir()):
    print(f"  {path.name:15s} {path.stat().st_size / 1e3:9.1f} kB")
saved = json.loads((folder / "config.json").read_text())
defaults = vnas.config.config_dict(search.SearchConfig())  # the dataclass defaults: the published protocol
changed = {k: v for k, v in saved.items() if k in defaults and v != json.loads(json.dumps(defaults[k]))}
print(f"\nconfig.json: kind {saved['kind']!r}, mode {saved['mode']!r}, layout {saved['layout']}, and all "
      f"{len(defaults)} keys of SearchConfig; those that differ from the published protocol:\n  {changed}")
manifest = json.loads((folder / "manifest.json").read_text())
print("\nmanifest.json:")
for key in ("command", "git_commit", "mode", "hardware", "torch", "python", "started", "finished", "wall_seconds",
            "epochs_done", "genotype"):
    value = manifest.get(key)
    print(f"  {key:13s} {f'{value:.1f}' if isinstance(value, float) else value}")
same_config = manifest["config"] == {k: v for k, v in saved.items() if k not in ("kind", "mode", "layout")}
print(f"  config        the {len(manifest['config'])} keys of config.json ({'the same' if same_config else 'DIFFERENT'})")

# %% [markdown]
# The manifest says who made the run and how: the command (of the first process, `python -m vnas` recording itself as
# `__main__.py`; a resume adds its finish time, its epochs and its wall time), the git commit of the code (`+dirty`
# when the checkout had uncommitted changes), the mode, the hardware, the versions, the dates. This is
# what makes a number traceable, and `data/results/` folders carry the same fields (section 6).
#
# `history.jsonl` holds one row per finished epoch. Every term of both objectives (Eq. (2.8)) is logged as its mean
# over the epoch's steps: the architecture objective (the NLL on search-val batches, DARTS' L2 on α, their sum
# `penalty` of everything but the NLL, and the `objective`) and the weight objective (the NLL on search-train
# batches, the L2 on w, `penalty`, `objective`). `structure_kl` and `weight_kl` are there for every method and are
# zero for DARTS, which has no prior on θ (chapter 04) and point weights (chapter 05).

# %%
def columns(rows):
    """(header, value of a row) for every logged term of both objectives, then the validation numbers."""
    cols = [("epoch", lambda r: r["epoch"]), ("lr", lambda r: r["lr"])]
    for group, short in (("architecture", "arch"), ("weights", "w")):
        for term in rows[0][group]:
            cols.append((f"{short}.{term}", lambda r, g=group, t=term: r[g][t]))
    return cols + [("val_loss", lambda r: r["val_loss"]), ("val_acc", lambda r: r["val_acc"]),
                   ("seconds", lambda r: r["seconds"])]


cols = columns(killed_rows)
widths = [max(len(h), 8) for h, _ in cols]
print(" ".join(f"{h:>{w}s}" for (h, _), w in zip(cols, widths, strict=True)))
for r in killed_rows:
    print(" ".join(f"{get(r):>{w}.4g}" for (_, get), w in zip(cols, widths, strict=True)))
gap = max(abs(r[g]["objective"] - r[g]["nll"] - r[g]["penalty"]) for r in killed_rows for g in ("architecture", "weights"))
print(f"\nobjective = nll + penalty in every row, to {gap:.1e}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
plot_objective_terms(killed_rows, "architecture", ax=axes[0])
plot_objective_terms(killed_rows, "weights", ax=axes[1])
plt.show()

# %% [markdown]
# Each row also records, per cell type and edge, the distribution's mean mixing weights θ (`edges.normal.mean`,
# edges × operations), their entropy, and, for the Dirichlet methods, their total concentration; the genotype; the
# share of parameter-free operations in it; and the root mean square of each operation's weights
# (`op_weight_rms`). How far each edge has moved from uniform:

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 5.8), layout="constrained")
for row_axes, cell_type in zip(axes, ("normal", "reduce"), strict=True):
    plot_edge_summary(killed_rows, cell_type, axes=row_axes)
plt.show()
last = killed_rows[-1]["edges"]["normal"]
top, ent = np.max(last["mean"], axis=1), np.asarray(last["entropy"])
n_ops = len(last["mean"][0])
print(f"after {len(killed_rows)} epochs the largest mixing weight of a normal-cell edge is {top.max():.4f} (uniform: "
      f"1/{n_ops} = {1 / n_ops:.4f}); the mean entropy is {ent.mean():.4f} nats of at most ln {n_ops} = "
      f"{math.log(n_ops):.4f} ({100 * (1 - ent.mean() / math.log(n_ops)):.2f}% below it): "
      + ("θ has barely left uniform in so few steps, so the derived cell rests on small differences."
         if top.max() < 2 / n_ops else "some edges have clearly picked an operation."))

# %% [markdown]
# `genotype.json` holds the cell derived at the last finished epoch, in a form `load_genotype` and `train --genotype`
# read; `checkpoint.pt` holds everything a resume needs, as tensors and plain data only, so that loading a checkpoint
# someone shared cannot run code (`RunDir.load_checkpoint` refuses anything else):

# %%
print("genotype.json:", json.loads((folder / "genotype.json").read_text()))
print(f"the same as the last history row's genotype: "
      f"{vnas.spaces.load_genotype(str(folder / 'genotype.json')) == vnas.spaces.load_genotype(killed_rows[-1]['genotype'])}")
state = runs.RunDir(folder).load_checkpoint()
WHAT = {"layout": "the run-folder layout version", "epoch": "epochs finished",
        "optimizer": "SGD on the weights (momentum buffers)", "scheduler": "the cosine schedule's position",
        "rng": "every random number generator (Python, NumPy, torch)", "history": "the history rows (the truth "
        "when history.jsonl is behind)", "supernet": "the supernet's weights and BN statistics",
        "posterior": "the architecture parameters α", "arch_optimizer": "Adam on α (moments, step count)"}


def tensors(obj):
    if torch.is_tensor(obj):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list | tuple) else []
    return [t for item in items for t in tensors(item)]


print(f"\ncheckpoint.pt ({(folder / 'checkpoint.pt').stat().st_size / 1e6:.2f} MB):")
for key, value in state.items():
    found = tensors(value)
    size = (f"{len(found)} tensors, {sum(t.numel() for t in found):,} numbers" if found else
            f"{len(value)} rows" if isinstance(value, list) else
            "keys " + ", ".join(value)[:40] if isinstance(value, dict) else repr(value))
    print(f"  {key:15s} {WHAT.get(key, '(not described here)'):58s} {size}")

# %% [markdown]
# **Exercise.** Which epoch of a run had the lowest validation loss, and which cell did the search derive then?
# Write `best_epoch(run_folder)`: read `history.jsonl` of the folder (a `str` or a `Path`) and return
# `(epoch, genotype)`, the epoch as `history.jsonl` numbers it and the genotype string of that same row; if several
# epochs tie, the earliest. Only read the folder.

# %%
def best_epoch(run_folder):
    ### BEGIN SOLUTION
    lines = (Path(run_folder) / "history.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    best = min(rows, key=lambda r: r["val_loss"])  # min keeps the first of equal values
    return best["epoch"], best["genotype"]
    ### END SOLUTION


# %%
vnas.checks.check_best_epoch(best_epoch)

# %%
def pairs_of(genotype):
    """The 16 (operation, input) pairs of a DARTS cell, normal then reduce."""
    g = vnas.spaces.load_genotype(genotype)
    return list(g.normal) + list(g.reduce)


epoch, cell = best_epoch(folder)
differ = sum(a != b for a, b in zip(pairs_of(cell), pairs_of(killed_rows[-1]["genotype"]), strict=True))
print(f"lowest validation loss at epoch {epoch} of {len(killed_rows)} ({killed_rows[epoch - 1]['val_loss']:.4f}; last "
      f"epoch {killed_rows[-1]['val_loss']:.4f}); "
      + ("it is the last epoch, so its cell is genotype.json's." if epoch == len(killed_rows) else
         f"the cell derived then differs from the final one (genotype.json) in {differ} of its 16 (operation, input) "
         "pairs."))

# %% [markdown]
# ### The evaluation training
#
# `train` builds the final network of a cell and trains it from scratch; its run folder has the same files, with
# `kind = "train"`. Here a few steps of this mode's `configs/train_darts.toml` table on the cell just found, again
# through a `--config` file (the `[full]` table is the 600-epoch protocol printed in section 1):

# %%
TRAIN_SHORT = {"smoke": dict(epochs=1, steps_per_epoch=2), "quick": dict(epochs=1, steps_per_epoch=8),
               "full": dict(epochs=1, steps_per_epoch=50)}[MODE]
train_protocol = RUNS / "short_train.toml"
train_protocol.write_text("".join(f"{k} = {v}\n" for k, v in TRAIN_SHORT.items()))
eval_folder = RUNS / "darts_s0_eval"
print(f"$ python -m vnas train --genotype {folder / 'genotype.json'} --mode {MODE} --config {train_protocol} "
      f"--out {eval_folder}")
tcfg = train.load_train_config(str(folder / "genotype.json"), train_protocol)
trainer = train.start(tcfg, eval_folder, dataset=cifar, device=DEVICE, progress=False)
print(f"train: {tcfg.layers} cells, C={tcfg.channels}, batch {tcfg.batch_size}, cutout {tcfg.cutout}, auxiliary "
      f"{tcfg.auxiliary}, drop-path {tcfg.drop_path}")
trainer.fit()
trow = trainer.history[-1]
print(f"test loss / acc / ECE: on {len(trainer.test_batches.y):,} CIFAR-10 test images after the epoch "
      f"(history: test_loss {trow['test_loss']:.3f}, test_acc {trow['test_acc']:.3f}, test_ece {trow['test_ece']:.3f}); "
      f"files: {', '.join(sorted(p.name for p in eval_folder.iterdir()))}")

# %% [markdown]
# ## 4. Projected times
#
# A run's wall time is its epochs, each of $S$ steps of $t_\text{step}$ seconds, plus one evaluation of
# $t_\text{eval}$ seconds per epoch:
#
# $$T = \frac{E\,(S\,t_\text{step} + t_\text{eval})}{3600}\ \text{hours}. \tag{6.2}$$
#
# **Exercise.** Write Eq. (6.2).

# %%
def projected_hours(seconds_per_step, steps_per_epoch, epochs, eval_seconds_per_epoch=0.0):
    ### BEGIN SOLUTION
    return epochs * (steps_per_epoch * seconds_per_step + eval_seconds_per_epoch) / 3600
    ### END SOLUTION


# %%
vnas.checks.check_projected_hours(projected_hours)

# %% [markdown]
# First on the run above, whose steps were timed: the median step after the first (which pays for one-time setup),
# and the rest of each epoch as $t_\text{eval}$. Does (6.2) give back the run's own wall time?

# %%
t_step = float(np.median(np.concatenate(step_seconds)[1:]))
t_eval = float(np.mean(eval_seconds))
wall = sum(r["seconds"] for r in reference.history)
proj = projected_hours(t_step, S, cfg.epochs, t_eval) * 3600
print(f"this run on {config.hardware()}: t_step {t_step:.3f} s (median of {sum(map(len, step_seconds)) - 1}), "
      f"t_eval {t_eval:.2f} s per epoch")
print(f"Eq. (6.2): {proj:.1f} s; measured: {wall:.1f} s ({100 * (proj / wall - 1):+.1f}%: "
      f"{'the first step setup' if proj < wall else 'slower steps than the median'} makes the difference)")

# %% [markdown]
# The full protocol's step is far larger than this proxy's, so we time it directly: the `[full]` supernet (8 cells,
# $C = 16$, batch 64, first order) for a warm-up step and two timed steps through the same loop, and two batches of
# its per-epoch evaluation (which covers the whole 25,000-image search-val half, $S_\text{f}$ batches). Only a few
# hundred images are loaded: the step costs the same.

# %%
class Enough(Exception):
    """Stops an epoch once the steps we time are done."""


def time_steps(job, warmup=1, timed=2):
    """Seconds per step of ``job.train_epoch`` (the library's loop) after ``warmup`` steps."""
    marks = []

    def tick():
        sync()
        marks.append(time.perf_counter())
        if len(marks) == warmup + timed:
            raise Enough

    try:
        job.train_epoch(on_step=tick)
    except Enough:
        pass
    return (marks[-1] - marks[warmup - 1]) / timed


size = dict(layers=full_cfg.layers, channels=full_cfg.channels, batch_size=full_cfg.batch_size)
if MODE == "smoke":  # a full-size step takes tens of seconds on a CPU: smoke mode times its own small one
    size = dict(layers=mode_cfg.layers, channels=mode_cfg.channels, batch_size=mode_cfg.batch_size)
timing_cfg = search.load_search_config("darts", method="darts", run_mode="full", images_per_class=100,
                                       steps_per_epoch=0, eval_batches=0, **size)
big = search.Search(timing_cfg, dataset=cifar, device=DEVICE, progress=False)
t_full = time_steps(big)
sync()
start = time.perf_counter()
big.evaluate(batches=2)
sync()
t_eval_full = (time.perf_counter() - start) / 2 * S_full  # per batch, times the search-val half's batches
del big
print(f"{size['layers']} cells, C={size['channels']}, batch {size['batch_size']}"
      f"{' (SMOKE: the small table, not the full one)' if MODE == 'smoke' else ''}: {t_full:.2f} s per step, "
      f"evaluation of {S_full} batches {t_eval_full:.0f} s, on {config.hardware()}")

# %%
hours = projected_hours(t_full, S_full, full_cfg.epochs, t_eval_full)
naive = projected_hours(t_step, S_full, full_cfg.epochs)
where = "GPU" if DEVICE.type == "cuda" else "CPU"
print(f"the full first-order DARTS search ({full_cfg.epochs} epochs x {S_full} steps), projected on this {where}: "
      f"{hours:.1f} hours = {hours / 24:.2f} days (steps {projected_hours(t_full, S_full, full_cfg.epochs):.1f} h, "
      f"evaluations {hours - projected_hours(t_full, S_full, full_cfg.epochs):.1f} h)")
print(f"(had a full-size step cost what the proxy's does, {naive:.2f} h: the full step measured {t_full / t_step:.1f} "
      f"times the proxy's, for {(size['layers'] * size['channels'] * size['batch_size']) / (cfg.layers * cfg.channels * cfg.batch_size):.1f} "
      f"times its cells x channels x batch)")
if where == "CPU":
    print(f"This is a CPU projection from {config.hardware()}; it says nothing about a GPU.")

# %% [markdown]
# GPU figures come only from a GPU: `benchmarks/gpu.py` measures them in one call and writes everything (images/s,
# peak memory, projected hours of each part, the share of the card's matmul rate) to JSON. When a run of it is
# stored, with its manifest, in `data/results/gpu_benchmark/`, this cell reads it:

# %%
gpu = results.load("gpu_benchmark")
if gpu is None:
    print("data/results/gpu_benchmark is absent: not measured on a GPU yet; run "
          "`PYTHONPATH=. python benchmarks/gpu.py --data cifar10_jpeg.npz --out gpu.json` on one.")
else:
    print(gpu.describe())
    for name, part in (gpu.results.get("parts") or {}).items():
        fields = {k: part.get(k) for k in ("step_s", "images_per_s", "projected_hours", "peak_memory_gb")}
        print(f"  {name:14s} " + ", ".join(f"{k} {v:.3g}" for k, v in fields.items() if isinstance(v, int | float)))

# %% [markdown]
# What stands between a GPU and its peak is often not arithmetic but the host: every read of a tensor's value
# (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`) makes Python wait until the GPU has finished all the work queued
# before it, so a read per step leaves the GPU idle while Python catches up. `vnas.hostreads.count_host_reads`
# counts the reads of a block, with the line that made each; `reads_per_step` gives the reads *per step*: the
# difference between an epoch of 3 steps and one of 1, halved (an epoch's own reads, its evaluation and its one read
# of the logged means, cancel):

# %%
probe = search.Search(search.load_search_config("darts", method="darts", run_mode="smoke", epochs=4), dataset=cifar,
                      device=DEVICE, progress=False)
per_step = hostreads.reads_per_step(probe, DEVICE.type)
print(f"host reads per search step on this {DEVICE.type.upper()}: {sum(per_step.values()):g}")
for (what, site, _), n in sorted(per_step.items(), key=lambda kv: -kv[1]):
    print(f"  {n:g} x {what:9s} at {site}")
if DEVICE.type == "cpu":
    print("On the CPU these reads cost nothing (there is no queue to drain). On CUDA the same loop reads its "
          "non-finite watch once per epoch, and the fused Adam keeps its step count on the GPU: no read per step "
          "(tests/test_search.py runs that configuration on the CPU and counts zero; benchmarks/gpu.py counts on "
          "a GPU, with torch's own sync detector).")
del probe

# %% [markdown]
# The published costs, for scale (GPU-days as reported, on other hardware): DARTS reports 1.5 GPU-days for 4
# first-order searches and 4 GPU-days for 4 second-order searches on a GTX 1080Ti, and one 600-epoch evaluation run of
# 1.5 days on a 1080Ti (Liu, Simonyan & Yang, ICLR 2019). The searches of the other methods, as reported: SNAS 1.5
# (Xie et al., ICLR 2019), GDAS about 0.2-0.3 (Dong & Yang, CVPR 2019), PC-DARTS 0.1 (Xu et al., ICLR 2020), DrNAS 0.6
# GPU-days (Chen et al., ICLR 2021).

# %%
PUBLISHED = {"DARTS search, 1st order (1.5 GPU-days / 4 searches)": 1.5 / 4 * 24,
             "DARTS search, 2nd order (4 GPU-days / 4 searches)": 4 / 4 * 24,
             "DARTS evaluation, 600 epochs (1.5 days)": 1.5 * 24}
print(f"{'':55s} {'hours':>8s}")
for name, h in PUBLISHED.items():
    print(f"{name:55s} {h:8.1f}   published, GTX 1080Ti")
print(f"{'our first-order search, projected here':55s} {hours:8.1f}   {config.hardware()}"
      + ("   (smoke: not a result)" if MODE == "smoke" else ""))
first_order = PUBLISHED["DARTS search, 1st order (1.5 GPU-days / 4 searches)"]
print(f"this {where} would need {hours / first_order:.0f} times the published GPU time of one first-order search.")

# %% [markdown]
# ## 5. Several GPUs
#
# `torchrun --nproc-per-node=K -m vnas search ...` starts $K$ processes, one per GPU, that run one search together
# (`vnas.distributed`). The global batch stays $B$: at every step each process takes its own $B/K$ images of the same
# batch (every process draws the same permutation and augmentation, seeded by seed and epoch), computes its
# gradients, and the processes average them. `DistributedDataParallel` is not used, because two of the search's
# gradients lie outside what its hooks see: the architecture parameters sit outside the supernet, and the
# architecture step takes the NLL's gradient with respect to θ with `torch.autograd.grad`. So the library averages
# them by hand, with one all-reduce per objective and step: the weights' gradient before it is clipped (the clip sees
# the gradient the whole batch gives), the architecture parameters' after their backward pass. Each process reseeds
# its random numbers after the model is built (the same initial weights, its own samples of θ), rank 0 alone writes
# the run folder, with every process's random state in the checkpoint, and a run made by $K$ processes resumes with
# `torchrun --nproc-per-node=K -m vnas resume DIR`. One difference from one process remains: batch norm sees $B/K$
# images per process.
#
# The arithmetic of sharing, with $N$ images in the search-train half:
#
# $$S = \left\lfloor \frac{N}{B} \right\rfloor \ \big(\text{or } \lceil N/B \rceil \text{ when the last, partial
#   batch is kept}\big), \qquad b = \frac{B}{K} \ \text{images per process and step},\ K \mid B. \tag{6.3}$$
#
# vnas keeps only full batches in training (`vnas.data.Batches`), so the full search has $\lfloor 25000/64 \rfloor =
# 390$ steps per epoch; DARTS' own code keeps the last 40 images as a short batch: 391.
#
# **Exercise.** Write Eq. (6.3): return `(steps_per_epoch, per_process)`, and raise a `ValueError` when the $K$
# processes cannot share the batch equally.

# %%
def shard_plan(n_images, batch_size, world_size=1, drop_last=True):
    ### BEGIN SOLUTION
    if batch_size % world_size:
        raise ValueError(f"{world_size} processes cannot share a batch of {batch_size} images equally")
    steps = n_images // batch_size if drop_last else math.ceil(n_images / batch_size)
    return steps, batch_size // world_size
    ### END SOLUTION


# %%
vnas.checks.check_shard_plan(shard_plan)

# %%
N_half = CIFAR10_TRAIN // 2
print(f"the full search ({N_half:,} images, batch {full_cfg.batch_size}), vnas (full batches) / DARTS' loader (ceil):")
for k in (1, 2, 3, 4, 8):
    try:
        steps, b = shard_plan(N_half, full_cfg.batch_size, k)
    except ValueError as err:
        print(f"  K = {k}: ValueError: {err}")
        continue
    steps_ceil = shard_plan(N_half, full_cfg.batch_size, k, drop_last=False)[0]
    ideal = projected_hours(t_full / k, steps, full_cfg.epochs, t_eval_full / k)  # every step and evaluation shared
    print(f"  K = {k}: {steps} / {steps_ceil} steps per epoch, {b} images per process and step; "
          + (f"{ideal:.1f} h on one {where}, as projected above" if k == 1 else
             f"at best {ideal:.1f} h on {k} such {where}s (the work of each step split perfectly)"))

# %% [markdown]
# Perfect sharing is an upper bound on the gain: the all-reduces cost time, and a small per-process batch uses a GPU
# less well. `benchmarks/gpu.py` measures one GPU; measure $K$ before a long run.
#
# ## 6. Where full results appear
#
# A number from a full protocol appears in this course only from a folder under `data/results/` with a manifest
# written by the code that produced it (command, config, git commit, mode, hardware, dates, wall time), never typed
# in. `python -m vnas sweep configs/sweeps/full_darts.toml` writes `data/results/full_darts/` (and likewise
# `full_methods`, `full_drnas`). What is stored now:

# %%
stored = {}
for path in (sorted(config.RESULTS_DIR.iterdir()) if config.RESULTS_DIR.is_dir() else []):
    if (path / "manifest.json").is_file():
        manifest_i = json.loads((path / "manifest.json").read_text())
        stored[path.name] = manifest_i
        print(f"  {path.name:20s} mode {manifest_i.get('mode')!s:6s} {manifest_i.get('hardware')}, "
              f"{manifest_i.get('compute_seconds', manifest_i.get('wall_seconds', float('nan'))) / 60:.0f} min")
full_runs = [name for name, m in stored.items() if m.get("mode") == "full"]
full_sweeps = sorted(p.stem for p in (config.CONFIG_DIR / "sweeps").glob("full_*.toml"))
print(f"\n{len(stored)} stored results; made in full mode: {', '.join(full_runs) if full_runs else 'none'}. "
      f"Full-protocol sweep configs: {', '.join(full_sweeps) or 'none'}.")
for name in full_runs:
    loaded = results.load(name)
    print(loaded.describe())

# %% [markdown]
# ## 7. What this chapter shows, and what it cannot
#
# Computed from the numbers above.

# %%
summary = [
    f"- The search command ran for real ({MODE} mode, {cfg.epochs} epochs x {S} steps, rho = {rho:.1e} of the published "
    f"search by Eq. (6.1)); killed after {written} epochs and resumed, its history matches an uninterrupted run's to "
    f"{max_diff:.1e} over {len(diffs):,} numbers" + (" (bit for bit)." if max_diff == 0 else "."),
    f"- Its history logs every term of both objectives per epoch; after {len(killed_rows)} epochs θ's largest mixing "
    f"weight is {top.max():.4f} against a uniform {1 / n_ops:.4f}: the proxy is far too short to show where a search "
    "ends, only how to read one.",
    f"- Projected on this {where} ({config.hardware()}): {hours:.1f} h for the full first-order search, from a measured "
    f"{t_full:.2f} s per full-size step; the published figure is {first_order:.0f} GPU-hours per search on a 1080Ti. "
    + ("GPU figures: " + gpu.describe() if gpu is not None else "No GPU figures are stored yet (benchmarks/gpu.py)."),
    f"- Full-mode results stored in data/results/: {', '.join(full_runs) if full_runs else 'none'}"
    + ("" if full_runs else ": nothing in this course is a full-protocol result yet."),
    "- Not shown: a full search or evaluation (GPU-days), multi-GPU speed (described, not run here), second-order "
    "step times.",
]
if MODE == "smoke":
    summary.append("- SMOKE MODE: tiny data and sizes; the numbers above only show that the code runs, they are not "
                   "results.")
print("\n".join(summary))
shutil.rmtree(RUNS)  # the run folders of this chapter (set a breakpoint before this line to keep them)
print(f"\nchapter 06 ran in {time.perf_counter() - CHAPTER_START:.0f} s ({MODE} mode on {config.hardware()})")
