"""Checkers for chapters/06_full_search.py: reading the best epoch out of a run folder, projecting the hours of a
protocol from measured step times, and how a global batch is shared by the processes of a multi-GPU run.

Each runs the reader's function on several cases, compares it with the definition, and names the usual slip
when the answer matches it.
"""

import hashlib
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from vnas import runs, spaces
from vnas.checks._common import ExerciseError, call, checker, require

__all__ = ["check_best_epoch", "check_projected_hours", "check_shard_plan"]


def _number(value, name: str, what: str) -> float:
    """The reader's answer as one float, or a wrong answer that says what came back instead."""
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        require(value.size == 1 if isinstance(value, np.ndarray) else value.numel() == 1,
                f"{name} returned an array of shape {tuple(value.shape)} for the {what}; return one number.")
        value = value.item()
    require(not isinstance(value, bool | str | tuple | list | dict | type(None)),
            f"{name} returned {type(value).__name__} {value!r} for the {what}; return a number.")
    try:
        return float(value)
    except (TypeError, ValueError):
        require(False, f"{name} returned {type(value).__name__} for the {what}; return a number.")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)  # float32 answers are fine


# --- the best epoch of a run folder ----------------------------------------------------------------------------

def _best_epoch_cases():
    """(label, rows): histories whose lowest validation loss, highest validation accuracy, lowest training loss,
    lowest architecture NLL and last epoch fall on different epochs; one with a tie; one with a single row."""
    gen = torch.Generator().manual_seed(6)

    def rows(val_loss, val_acc, train_loss, arch_nll):
        out = []
        for i, (vl, va, tl, an) in enumerate(zip(val_loss, val_acc, train_loss, arch_nll, strict=True)):
            out.append({"epoch": i + 1, "lr": 0.025, "steps": 10, "train_loss": tl, "train_acc": 0.1 + 0.05 * i,
                        "val_loss": vl, "val_acc": va, "architecture": {"nll": an, "objective": an},
                        "weights": {"nll": tl, "objective": tl + 0.4},
                        "genotype": str(spaces.darts.random_genotype(gen)), "seconds": 30.0 + i})
        return out

    # lowest val_loss at epoch 3 (row index 2), highest val_acc at 5, lowest train_loss at 4, lowest
    # architecture NLL at 1, last epoch 6: each slip gives its own epoch
    yield "six epochs", rows([2.30, 2.05, 1.91, 1.97, 2.02, 2.08], [0.12, 0.25, 0.31, 0.33, 0.36, 0.34],
                             [2.28, 2.10, 1.95, 1.70, 1.74, 1.72], [1.85, 1.90, 1.96, 2.00, 2.04, 2.07])
    yield "a tie between epochs 2 and 4", rows([2.20, 1.80, 1.95, 1.80, 1.99], [0.20, 0.30, 0.33, 0.29, 0.34],
                                                 [2.10, 2.00, 1.90, 1.80, 1.70], [2.10, 2.00, 1.70, 1.95, 1.90])
    yield "the first epoch is the best", rows([1.50, 1.70, 1.90], [0.40, 0.45, 0.50], [2.0, 1.9, 1.8],
                                               [1.9, 1.6, 1.8])
    yield "a single epoch", rows([2.10], [0.21], [2.2], [2.0])


def _write_run(folder: Path, history: list[dict]) -> None:
    """A search run folder as vnas writes one: config.json, manifest.json, history.jsonl, genotype.json (the last
    epoch's cell); no checkpoint (nothing here needs one)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": "search", "mode": "quick", "layout": runs.LAYOUT,
                                                    "space": "darts", "method": "darts", "epochs": len(history)},
                                                   indent=2) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"kind": "search", "mode": "quick"}, indent=2) + "\n")
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history) + "\n")  # a blank line too
    final = spaces.load_genotype(history[-1]["genotype"])
    (folder / "genotype.json").write_text(json.dumps(final.to_json(), indent=2) + "\n")


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@checker
def check_best_epoch(fn) -> str:
    """``fn(run_folder)`` must return ``(epoch, genotype)``: the epoch (as numbered in history.jsonl, from 1) whose
    validation loss ``val_loss`` is lowest (the earliest of tied epochs) and the genotype string of that row,
    reading the folder without changing it. Introduced in chapters/06_full_search.py."""
    name = getattr(fn, "__name__", "your function")
    with tempfile.TemporaryDirectory(prefix="vnas_check_") as tmp:
        for i, (label, history) in enumerate(_best_epoch_cases()):
            folder = Path(tmp) / f"run{i}"
            _write_run(folder, history)
            before = _digest(folder)
            for arg in (folder, str(folder)):
                out = call(fn, arg)
                require(_digest(folder) == before, f"{name} changed the files of the run folder; only read them.")
                require(isinstance(out, tuple | list) and len(out) == 2,
                        f"{name} returned {type(out).__name__} {out!r}; return a pair (epoch, genotype).")
                epoch, genotype = out
                epoch = _number(epoch, name, "epoch")
                vl = [r["val_loss"] for r in history]
                best = min(range(len(history)), key=lambda k: (vl[k], k))
                want = history[best]["epoch"]
                if epoch != want:
                    def first(values, pick, history=history):
                        return history[values.index(pick(values))]["epoch"]
                    last_tied = max(k for k in range(len(vl)) if vl[k] == vl[best]) + 1
                    slips = [
                        (best, "that is the row's index, counted from 0; use the row's 'epoch' field (history.jsonl "
                               "numbers epochs from 1, as the log lines do)."),
                        (first([r["val_acc"] for r in history], max),
                         "that is the epoch of the highest validation accuracy (val_acc); the exercise asks for the "
                         "lowest validation loss (val_loss)."),
                        (first([r["train_loss"] for r in history], min),
                         "that is the epoch of the lowest training loss (train_loss, on the search-train half); the "
                         "exercise asks for the validation loss, val_loss."),
                        (first([r["architecture"]["nll"] for r in history], min),
                         "that is the epoch of the lowest architecture-step NLL (architecture.nll: a mean over the "
                         "epoch's steps while the weights moved); use val_loss, measured after the epoch."),
                        (last_tied, "several epochs share the lowest val_loss here: take the earliest of them."),
                        (history[-1]["epoch"], "that is the last epoch; find the epoch whose val_loss is lowest."),
                    ]
                    hint = next((m for wrong, m in slips if wrong != want and epoch == wrong),
                                "look for the row with the lowest val_loss.")
                    require(False, f"Case '{label}' (val_loss per epoch {vl}): the best epoch is {want}, got "
                                   f"{epoch:g}: {hint}")
                text = str(genotype)
                want_g = history[best]["genotype"]
                if text != want_g:
                    final = json.loads((folder / "genotype.json").read_text())
                    same_as_final = (isinstance(genotype, dict) and genotype == final) or \
                        text == str(spaces.load_genotype(history[-1]["genotype"]))
                    other = [r["epoch"] for r in history if r["genotype"] == text]
                    if same_as_final and want_g != history[-1]["genotype"]:
                        hint = ("that is genotype.json, the cell derived at the LAST epoch; the best epoch's cell is "
                                "the 'genotype' of its own history row.")
                    elif other:
                        hint = f"that is the genotype of epoch {other[0]}'s row, not of epoch {want}'s."
                    else:
                        hint = "return the 'genotype' string of that epoch's history row, as it is stored."
                    require(False, f"Case '{label}': the epoch {want} is right, but the genotype is not: {hint}")
    return ("the earliest epoch of lowest val_loss, numbered as in history.jsonl, with its own row's genotype; the "
            "folder left as it was.")


# --- projected hours, Eq. (6.2) --------------------------------------------------------------------------------

def _hours_cases():
    """(seconds per step, steps per epoch, epochs, evaluation seconds per epoch): a quick proxy, the DARTS search on
    a GPU with and without its evaluation, a CPU projection, and a 600-epoch evaluation training."""
    yield 1.5, 31, 6, 4.0
    yield 0.2, 390, 50, 0.0
    yield 0.35, 390, 50, 12.0
    yield 16.0, 390, 50, 600.0
    yield 0.05, 520, 600, 8.0


@checker
def check_projected_hours(fn) -> str:
    """``fn(seconds_per_step, steps_per_epoch, epochs, eval_seconds_per_epoch=0.0)`` must return the hours of a
    run, Eq. (6.2): epochs x (steps_per_epoch x seconds_per_step + eval_seconds_per_epoch) / 3600.

    Introduced in chapters/06_full_search.py, Eq. (6.2)."""
    name = getattr(fn, "__name__", "your function")
    for t, s, e, ev in _hours_cases():
        want = e * (s * t + ev) / 3600
        got = _number(call(fn, t, s, e, ev), name, "hours")
        if _close(got, want):
            continue
        slips = [
            (want * 3600, "that is in seconds: Eq. (6.2) divides by 3600 for hours."),
            (want * 60, "that is in minutes: divide the seconds by 3600 for hours."),
            (want / 24, "that is in days: the exercise asks for hours."),
            (e * s * t / 3600, "the per-epoch evaluation is missing: every epoch ends with one evaluation of "
                               "eval_seconds_per_epoch, Eq. (6.2)."),
            (e * s * (t + ev) / 3600, "the evaluation runs once per epoch, not after every step."),
            ((e * s * t + ev) / 3600, "the evaluation runs once per epoch, not once per run."),
            ((s * t + ev) / 3600, "that is one epoch: multiply by the number of epochs."),
            (e * (s * t + ev) / 3600 / s, "that divides by the steps once too often: an epoch is steps_per_epoch "
                                          "steps of seconds_per_step each."),
        ]
        hint = next((m for wrong, m in slips if not _close(wrong, want) and _close(got, wrong)),
                    "compare with Eq. (6.2).")
        require(False, f"{name}(seconds_per_step={t}, steps_per_epoch={s}, epochs={e}, eval_seconds_per_epoch={ev}) "
                       f"should be {want:.6g} hours, got {got:.6g}: {hint}")
    t, s, e, _ = next(_hours_cases())
    try:
        got = _number(call(fn, t, s, e), name, "hours")
    except ExerciseError as err:
        raise ExerciseError(f"{name} called without eval_seconds_per_epoch failed ({err}): give it the default "
                            "0.0, as the signature says.") from None
    require(_close(got, e * s * t / 3600), f"{name}({t}, {s}, {e}) without eval_seconds_per_epoch should be "
                                           f"{e * s * t / 3600:.6g} hours (the default is 0.0), got {got:.6g}.")
    return "epochs x (steps x seconds per step + the evaluation) / 3600, on every case, the evaluation 0 by default."


# --- a global batch shared by K processes, Eq. (6.3) -----------------------------------------------------------

def _shard_cases():
    """(N, B, K, drop_last): the DARTS search (25,000 images, batch 64) on 1, 4 and 8 processes, both ways of
    treating the last partial batch; a quick proxy; an exact division; the evaluation batch 96 on 3 processes."""
    yield 25_000, 64, 1, True
    yield 25_000, 64, 1, False
    yield 25_000, 64, 4, True
    yield 25_000, 64, 8, False
    yield 1_000, 32, 2, True
    yield 25_600, 64, 4, False
    yield 50_000, 96, 3, True
    yield 50_000, 96, 3, False


def _whole(value, name: str, what: str) -> int:
    v = _number(value, name, what)
    require(v == round(v), f"{name} returned {v:g} for the {what}, not a whole number: a step takes whole batches "
                           "and a process whole images (use // or math.ceil, not /).")
    return int(v)


@checker
def check_shard_plan(fn) -> str:
    """``fn(n_images, batch_size, world_size=1, drop_last=True)`` must return ``(steps_per_epoch, per_process)``,
    Eq. (6.3): the global batch stays ``batch_size``, so an epoch has floor(N / B) steps (ceil with
    ``drop_last=False``) whatever the number K of processes, and each process takes B / K images of every batch;
    a ValueError when K does not divide B. Introduced in chapters/06_full_search.py, Eq. (6.3)."""
    name = getattr(fn, "__name__", "your function")
    for n, b, k, drop in _shard_cases():
        out = call(fn, n, b, k, drop)
        require(isinstance(out, tuple | list) and len(out) == 2,
                f"{name} returned {type(out).__name__} {out!r}; return a pair (steps_per_epoch, per_process).")
        steps, per = _whole(out[0], name, "steps per epoch"), _whole(out[1], name, "images per process")
        want_steps = n // b if drop else -(-n // b)
        where = f"{name}(n_images={n:,}, batch_size={b}, world_size={k}, drop_last={drop})"
        if steps != want_steps:
            slips = [
                (-(-n // b), "drop_last=True keeps only full batches: floor(N / B); the last partial batch is "
                             "dropped."),
                (n // b, "drop_last=False keeps the last partial batch as a short step: ceil(N / B)."),
                (n // (b * k) if drop else -(-n // (b * k)),
                 "that divides the steps by the number of processes, as if each process took B images (a global "
                 "batch of K B); here the global batch stays B, so the steps per epoch do not depend on K."),
                (n // (b // k) if drop else -(-n // (b // k)),
                 "that counts batches of B / K images; one step consumes one global batch of B images, B / K on "
                 "each of the K processes."),
            ]
            hint = next((m for wrong, m in slips if wrong != want_steps and steps == wrong), "compare with Eq. (6.3).")
            require(False, f"{where}: the steps per epoch should be {want_steps:,}, got {steps:,}: {hint}")
        if per != b // k:
            hint = (f"each process takes B / K = {b // k} images of every batch, not the whole batch B."
                    if per == b else f"each process takes B / K = {b} / {k} = {b // k} images.")
            require(False, f"{where}: the images per process should be {b // k}, got {per}: {hint}")
    try:
        plain = call(fn, 25_000, 64)
    except ExerciseError as err:
        raise ExerciseError(f"{name}(25000, 64) failed ({err}): give world_size the default 1 and drop_last the "
                            "default True, as the signature says.") from None
    require(tuple(_whole(v, name, "number") for v in plain) == (390, 64),
            f"{name}(25000, 64) with the defaults (world_size=1, drop_last=True) should be (390, 64).")
    for n, b, k in ((25_000, 64, 3), (50_000, 96, 5), (25_000, 64, 128)):
        try:
            out = fn(n, b, k)
        except ValueError:
            continue
        except NotImplementedError:
            out = call(fn, n, b, k)  # a stub: "not attempted"
        except Exception as err:
            require(False, f"{name}({n:,}, {b}, {k}) raised {type(err).__name__}: {err}; raise a ValueError: {k} "
                           f"processes cannot share a batch of {b} images equally.")
        require(False, f"{name}({n:,}, {b}, world_size={k}) returned {out!r}; {b} images cannot be shared equally by "
                       f"{k} processes ({b} / {k} = {b / k:.3g}): raise a ValueError, as vnas does, instead of "
                       "changing the batch silently.")
    return ("floor(N / B) steps (ceil without drop_last) for any number of processes, B / K images each, and a "
            "ValueError when K does not divide B.")
