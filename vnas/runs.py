"""A run folder: resolved config, manifest, history.jsonl, genotype.json and an atomic checkpoint.

Shared by searches (vnas.search) and final trainings (vnas.train), so that both resume the same way and
nothing already saved is ever overwritten by a failing run.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vnas import config, distributed

CHECKPOINT = "checkpoint.pt"
# The layout of a run folder (config.json keys, checkpoint contents, history rows). Layout 1 (before the
# "one house" refactor) had no "layout" key, kept the L2 terms in the optimisers and numpy arrays in its
# checkpoints; this version reads only layout 2.
LAYOUT = 2


class RunError(RuntimeError):
    """A run folder that cannot be created, resumed or read; the message says what to do."""


def git_commit(paths: tuple[str, ...] = ()) -> str:
    """The commit of the vnas checkout (with '+dirty' for uncommitted changes, in ``paths`` only when given),
    or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                               cwd=config.ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def manifest(kind: str, cfg: dict, run_mode: str) -> dict:
    """Who made this run, how and where (DESIGN section 5)."""
    return {
        "kind": kind,
        "layout": LAYOUT,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": cfg,
        "git_commit": git_commit(),
        "mode": run_mode,
        "hardware": config.hardware(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename: a kill never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class RunDir:
    """The files of one run. ``RunDir.create`` refuses a folder that already holds a run."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, kind: str, cfg: dict, run_mode: str, overwrite: bool = False) -> RunDir:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file; give a folder for the run.")
        if path.is_dir() and any(path.iterdir()):
            if not (path / "config.json").exists() and not (path / CHECKPOINT).exists():
                raise RunError(f"--out {path} is a non-empty folder that is not a vnas run; choose a new folder.")
            if not overwrite:
                raise RunError(f"--out {path} already holds a run. Continue it with `python -m vnas resume {path}`, "
                               "choose another folder, or pass --overwrite to start it again.")
            for name in ("history.jsonl", "genotype.json", CHECKPOINT, "manifest.json", "config.json"):
                (path / name).unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run.write_json("config.json", {"kind": kind, "mode": run_mode, "layout": LAYOUT, **cfg})
        run.write_json("manifest.json", manifest(kind, cfg, run_mode))
        return run

    # --- plain files ---
    def write_json(self, name: str, obj) -> None:
        _atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))

    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise RunError(f"{path} is missing: {self.path} is not a complete vnas run folder.")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{path} is not valid JSON ({err}); the run folder is damaged.") from err

    def history(self) -> list[dict]:
        """The rows of history.jsonl (one per finished epoch), for plotting a run; a RunError for a folder
        written by an older version of vnas, whose rows have other keys."""
        layout = self.read_json("config.json").get("layout", 1)
        if layout != LAYOUT:
            raise RunError(older_layout(self.path, layout))
        path = self.path / "history.jsonl"
        if not path.exists():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise RunError(f"{path} is not valid JSON lines ({err}); the run folder is damaged.") from err

    def write_history(self, rows: list[dict]) -> None:
        """Rewrite the history (atomically) so that it always matches the checkpoint's epoch."""
        _atomic_write(self.path / "history.jsonl",
                      lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))

    def update_manifest(self, **fields) -> None:
        self.write_json("manifest.json", {**self.read_json("manifest.json"), **fields})

    # --- checkpoint ---
    def save_checkpoint(self, state: dict) -> None:
        _atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, map_location="cpu", trust: bool = False) -> dict:
        """The checkpoint, loaded safely: tensors and plain data only (``torch.load(weights_only=True)``), so
        that a run folder someone shared cannot run code. ``trust=True`` loads any pickle: only for a file
        you wrote yourself (e.g. with an older vnas, whose checkpoints held numpy arrays)."""
        path = self.path / CHECKPOINT
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a folder; give the --out folder of a run.")
        if not path.is_file():
            raise RunError(f"{self.path} has no {CHECKPOINT}: the run stopped before its first epoch ended. "
                           "Start it again with --overwrite.")
        try:
            state = torch.load(path, map_location=map_location, weights_only=not trust)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if found is None:  # not a forbidden object but a damaged file
                raise RunError(f"{path} is corrupt or unreadable ({str(err).splitlines()[-1][:200]}). It was left "
                               "untouched; start a new run in another folder.") from None
            raise RunError(f"{path} holds objects other than tensors and plain data ({found.group(1)}), which safe "
                           "loading refuses. A checkpoint written by this version of vnas never does: this one "
                           "comes from an older vnas (numpy arrays) or from someone else, and loading it could run "
                           "code. It was left untouched. If you wrote it yourself and trust it, load it with "
                           "trust=True (`python -m vnas resume DIR --trust-checkpoint`).") from None
        except Exception as err:  # torch raises many kinds for a damaged file
            raise RunError(f"{path} is corrupt or unreadable ({type(err).__name__}: {err}). It was left untouched; "
                           "start a new run in another folder.") from err
        if not isinstance(state, dict) or "epoch" not in state:
            raise RunError(f"{path} is not a vnas checkpoint (no 'epoch'); it was left untouched.")
        if state.get("layout") != LAYOUT:
            raise RunError(older_layout(self.path, state.get("layout", 1)))
        return state


def older_layout(path: Path, layout) -> str:
    """What to say about a run folder written by an older version of vnas."""
    return (f"{path} was written by an older version of vnas (run-folder layout {layout}; this version reads "
            f"layout {LAYOUT}): its config keys and checkpoint contents differ, so it cannot be resumed here. "
            "Its history.jsonl and genotype.json remain readable as JSON. To continue it, check out the vnas "
            "commit named in its manifest.json (git_commit) and resume there; or start a new run.")


def rng_state() -> dict:
    """Every random number generator that a run draws from, so a resumed run repeats exactly; as tensors,
    tuples and numbers only, which safe loading accepts."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                   cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def optimizer_options(device: torch.device, sparse: bool = False) -> dict:
    """Keyword arguments for the runs' SGD and Adam: the fused kernels on CUDA (one launch per step for all
    the tensors, and Adam's step count kept on the GPU, so no host read); the plain loop elsewhere, whose
    results the stored runs were made with. ``sparse``: some weights get no gradient at some steps (a one-hot
    θ), which torch's fused SGD refuses once their neighbours have momentum; the multi-tensor (foreach) loop
    takes them, also without a host read. Introduced in chapters/06_full_search.py."""
    if torch.device(device).type != "cuda":
        return {}
    return {"foreach": True} if sparse else {"fused": True}


class NonFiniteError(FloatingPointError):
    """A NaN or infinite objective or parameter; the last good checkpoint is kept."""


def first_non_finite(module: torch.nn.Module) -> str | None:
    """The name of the module's first parameter or buffer holding a NaN or an infinity, or None (a scan that
    reads every tensor back: for error messages only)."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


class FiniteWatch:
    """Watches the values each step optimised for NaN or infinity, without a host read per step on CUDA.

    ``watch(step, values, valid)`` records, on the device, the first step whose values are not all finite
    (or whose ``valid`` flag is False) and those values. On CPU there is no queue to stall, so ``watch``
    reads the flag back every step and a run stops at once; on CUDA ``bad()`` is read once, at the end of
    the epoch, before anything is saved. Introduced in chapters/02_darts.py.
    """

    def __init__(self, device: torch.device, every: int | None = None):
        self.device = torch.device(device)
        self.every = (1 if self.device.type == "cpu" else 0) if every is None else every
        self.reset()

    def reset(self) -> None:
        self._step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._values, self._names = None, []

    def watch(self, step: int, values: dict[str, torch.Tensor], valid: torch.Tensor | None = None):
        """Record ``values`` (0-d tensors) of ``step``; returns ``bad()`` when this step is read back, else None."""
        v = torch.stack([t.detach().float().reshape(()) for t in values.values()])
        ok = torch.isfinite(v).all() if valid is None else torch.isfinite(v).all() & valid
        fresh = (self._step < 0) & ~ok
        self._step = torch.where(fresh, step, self._step)
        self._values = v if self._values is None else torch.where(fresh, v, self._values)
        self._names = list(values)
        return self.bad() if self.every and (step + 1) % self.every == 0 else None

    def bad(self) -> tuple[int, dict[str, float]] | None:
        """(the first bad step, its values) or None: one read back to the host."""
        step = int(self._step)
        return None if step < 0 else (step, dict(zip(self._names, self._values.tolist(), strict=True)))


class EpochMeans:
    """Per-step values summed on the device and read back once per epoch as means, grouped by name."""

    def __init__(self):
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, group: str, values: dict[str, torch.Tensor]) -> None:
        """Add one step's values: 0-d tensors, or vectors (e.g. a KL per edge) whose mean is a list."""
        for name, v in values.items():
            key = (group, name)
            v = v.detach().float()
            self.sums[key] = v if key not in self.sums else self.sums[key] + v
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, group: distributed.Group | None = None) -> dict[str, dict[str, float | list]]:
        """The means over the epoch's steps (and over the processes of ``group``: each saw its own shard)."""
        if not self.sums:
            return {}
        flat = torch.cat([v.reshape(-1) for v in self.sums.values()])
        if group is not None:
            group.mean_([flat])
        flat = flat.tolist()  # the one read back
        out: dict[str, dict[str, float | list]] = {}
        i = 0
        for (group, name), total in self.sums.items():
            count, size = self.counts[(group, name)], total.numel()
            values = [x / count for x in flat[i:i + size]]
            out.setdefault(group, {})[name] = values[0] if total.dim() == 0 else values
            i += size
        return out


class EpochLoop:
    """What a search and a final training share: epochs, a history, an optional run folder written after
    every epoch (checkpoint first, then history), bf16 autocast on CUDA, the watch for non-finite values,
    and ``start``, ``resume``, ``fit()``.

    Subclasses set ``KIND`` and ``CONFIG`` (the config dataclass); their instances set ``cfg`` (with
    ``epochs`` and ``amp``), ``device``, ``run``, ``progress``, ``epoch``, ``history``, ``optimizer`` and
    ``scheduler``, and define ``train_epoch``, ``steps_per_epoch``, ``model_state``/``load_model_state``,
    ``description``, ``summary``, ``final`` and ``diagnose``.
    Introduced in chapters/02_darts.py.
    """

    KIND: str
    CONFIG: type
    group = distributed.Group()  # one process; a search under torchrun sets its own (rank 0 writes the folder)

    @classmethod
    def start(cls, cfg, out: Path, overwrite: bool = False, run_mode: str | None = None, **kw):
        """A new run backed by the run folder ``out`` (refused if it already holds a run). Under torchrun
        (``group=`` a ``distributed.Group``) only rank 0 creates and writes the folder."""
        group = kw.get("group") or distributed.Group()
        run = None
        if group.main:
            run = RunDir.create(out, cls.KIND, config.config_dict(cfg), run_mode or config.mode(), overwrite=overwrite)
            if group.world > 1:
                run.update_manifest(processes=group.world)
        job = cls(cfg, run=run, **kw)
        job.started()
        return job

    def started(self) -> None:
        """Called once when a run folder is created (nothing by default)."""

    def state_dict(self) -> dict:
        return {"layout": LAYOUT, "epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "history": self.history,
                **self.model_state()}

    def load_state_dict(self, state: dict) -> None:
        made_by = len(state.get("rng_ranks") or [None])
        if made_by != self.group.world:
            raise RunError(f"This run was made by {made_by} process(es) and is resumed by {self.group.world}: each "
                           "process's batches and random draws depend on the count. Resume it with "
                           + (f"`torchrun --nproc-per-node={made_by} -m vnas resume DIR`." if made_by > 1
                              else "`python -m vnas resume DIR` (one process)."))
        try:
            self.load_model_state(state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise RunError(f"The checkpoint does not fit this run's config ({type(err).__name__}: {err}).") from err
        self.epoch, self.history = state["epoch"], list(state["history"])
        set_rng_state(state["rng_ranks"][self.group.rank] if self.group.world > 1 else state["rng"])

    @classmethod
    def resume(cls, out: Path, trust_checkpoint: bool = False, **kw):
        """The run of folder ``out``, restored from its checkpoint, ready to ``fit()`` the remaining epochs.

        ``trust_checkpoint=True`` loads a checkpoint that safe loading refuses (see ``RunDir.load_checkpoint``)."""
        run = RunDir(out)
        group = kw.get("group") or distributed.Group()
        if not Path(out).is_dir():
            raise RunError(f"{out} is not a folder; give the --out folder of a {cls.KIND} run.")
        saved = run.read_json("config.json")
        if saved.pop("kind", None) != cls.KIND:
            raise RunError(f"{out} is not a {cls.KIND} run.")
        layout = saved.pop("layout", 1)
        if layout != LAYOUT:
            raise RunError(older_layout(run.path, layout))
        saved.pop("mode", None)
        state = run.load_checkpoint(map_location=kw.get("device") or config.device(), trust=trust_checkpoint)
        job = cls(config.from_dict(cls.CONFIG, saved, str(run.path / "config.json")), run=run if group.main else None,
                  **kw)
        job.load_state_dict(state)
        if group.main:
            run.write_history(job.history)  # the checkpoint's history is the truth
        return job

    def _autocast(self):
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _kept(self) -> str:
        where = (f"The last good checkpoint (epoch {self.epoch}) is kept in {self.run.path}; "
                 if self.run is not None and self.epoch else "Nothing was saved; ")
        return where + "lower the learning rates or check the data, then resume or start again."

    def diagnose(self) -> str:
        """Where the non-finite values are (a scan, for the error message); '' when nothing is found."""
        return ""

    def check(self, found) -> None:
        """Raise NonFiniteError for ``found`` = (step, values) from a FiniteWatch; nothing for None."""
        if found is None:
            return
        step, values = found
        bad = [f"the {name} objective became {value}" for name, value in values.items() if not math.isfinite(value)]
        what = "; ".join(bad) if bad else "the parameters became unusable (not finite, or a concentration <= 0)"
        where = self.diagnose()
        raise NonFiniteError(f"At epoch {self.epoch + 1}, step {step}, {what}. {where + ' ' if where else ''}"
                             + self._kept())

    def target_epochs(self) -> int:
        return self.cfg.epochs

    def fit(self, epochs: int | None = None, log=print) -> list[dict]:
        """Train until ``cfg.epochs`` (or ``epochs`` more), saving the run folder after every epoch."""
        target = self.target_epochs() if epochs is None else self.epoch + epochs
        bar = None
        if self.progress and target > self.epoch:
            from tqdm.auto import tqdm

            bar = tqdm(total=(target - self.epoch) * self.steps_per_epoch(), desc=self.description(), leave=False)
        try:
            while self.epoch < target:
                row = self.train_epoch(on_step=bar.update if bar else None)
                self.save_epoch()
                if log:
                    log(self.summary(row))
        finally:
            if bar is not None:
                bar.close()
        if self.run is not None:
            self.run.update_manifest(finished=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                     epochs_done=self.epoch, wall_seconds=sum(r["seconds"] for r in self.history),
                                     **self.final())
        return self.history

    def save_epoch(self) -> None:
        """Checkpoint, then history: a kill between the two leaves a checkpoint whose own copy of the history
        is the truth (resume rewrites history.jsonl from it). Under torchrun every rank's RNG state goes into
        rank 0's checkpoint, so that each rank resumes its own random draws."""
        ranks = self.group.gather(rng_state()) if self.group.world > 1 else None
        if self.run is not None:
            state = self.state_dict()
            if ranks is not None:
                state["rng_ranks"] = ranks
            self.run.save_checkpoint(state)
            self.run.write_history(self.history)
        self.group.barrier()  # no rank runs ahead of a checkpoint that it may have to resume from
