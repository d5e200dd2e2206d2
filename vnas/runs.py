"""A run folder: resolved config, manifest, history.jsonl, genotype.json and an atomic checkpoint.

Shared by searches (vnas.search) and final trainings (vnas.train), so that both resume the same way and
nothing already saved is ever overwritten by a failing run.
Introduced in chapters/02_darts.py.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vnas import config

CHECKPOINT = "checkpoint.pt"


class RunError(RuntimeError):
    """A run folder that cannot be created, resumed or read; the message says what to do."""


def git_commit() -> str:
    """The commit of the vnas checkout (with '+dirty' for uncommitted changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=config.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def manifest(kind: str, cfg: dict, run_mode: str) -> dict:
    """Who made this run, how and where (DESIGN section 5)."""
    return {
        "kind": kind,
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
        run.write_json("config.json", {"kind": kind, "mode": run_mode, **cfg})
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
        path = self.path / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_history(self, rows: list[dict]) -> None:
        """Rewrite the history (atomically) so that it always matches the checkpoint's epoch."""
        _atomic_write(self.path / "history.jsonl",
                      lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))

    def update_manifest(self, **fields) -> None:
        self.write_json("manifest.json", {**self.read_json("manifest.json"), **fields})

    # --- checkpoint ---
    def save_checkpoint(self, state: dict) -> None:
        _atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, map_location="cpu") -> dict:
        path = self.path / CHECKPOINT
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a folder; give the --out folder of a run.")
        if not path.is_file():
            raise RunError(f"{self.path} has no {CHECKPOINT}: the run stopped before its first epoch ended. "
                           "Start it again with --overwrite.")
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # torch raises many kinds for a damaged file
            raise RunError(f"{path} is corrupt or unreadable ({type(err).__name__}: {err}). It was left untouched; "
                           "start a new run in another folder.") from err
        if not isinstance(state, dict) or "epoch" not in state:
            raise RunError(f"{path} is not a vnas checkpoint (no 'epoch'); it was left untouched.")
        return state


def rng_state() -> dict:
    """Every random number generator that a run draws from, so a resumed run repeats exactly."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class NonFiniteError(FloatingPointError):
    """A NaN or infinite loss or architecture parameter; the last good checkpoint is kept."""


class EpochLoop:
    """What a search and a final training share: epochs, a history, an optional run folder written after
    every epoch (checkpoint first, then history), bf16 autocast on CUDA, and ``fit()``.

    Subclasses set ``KIND`` and ``CONFIG`` (the config dataclass); their instances set ``cfg`` (with
    ``epochs`` and ``amp``), ``device``, ``run``, ``progress``, ``epoch``, ``history``, ``optimizer`` and
    ``scheduler``, and define ``train_epoch``, ``steps_per_epoch``, ``model_state``/``load_model_state``,
    ``description``, ``summary`` and ``final``.
    Introduced in chapters/02_darts.py.
    """

    KIND: str
    CONFIG: type

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "history": self.history, **self.model_state()}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.load_model_state(state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise RunError(f"The checkpoint does not fit this run's config ({type(err).__name__}: {err}).") from err
        self.epoch, self.history = state["epoch"], list(state["history"])
        set_rng_state(state["rng"])

    @classmethod
    def resume(cls, out: Path, **kw):
        """The run of folder ``out``, restored from its checkpoint, ready to ``fit()`` the remaining epochs."""
        run = RunDir(out)
        if not Path(out).is_dir():
            raise RunError(f"{out} is not a folder; give the --out folder of a {cls.KIND} run.")
        saved = run.read_json("config.json")
        if saved.pop("kind", None) != cls.KIND:
            raise RunError(f"{out} is not a {cls.KIND} run.")
        saved.pop("mode", None)
        state = run.load_checkpoint(map_location=kw.get("device") or config.device())
        job = cls(config.from_dict(cls.CONFIG, saved, str(run.path / "config.json")), run=run, **kw)
        job.load_state_dict(state)
        run.write_history(job.history)  # the checkpoint's history is the truth
        return job

    def _autocast(self):
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _kept(self) -> str:
        where = (f"The last good checkpoint (epoch {self.epoch}) is kept in {self.run.path}; "
                 if self.run is not None and self.epoch else "Nothing was saved; ")
        return where + "lower the learning rates or check the data, then resume or start again."

    def _non_finite(self, what: str, value: float, step: int) -> NonFiniteError:
        return NonFiniteError(f"The {what} loss became {value} at epoch {self.epoch + 1}, step {step}. " + self._kept())

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
        is the truth (resume rewrites history.jsonl from it)."""
        if self.run is not None:
            self.run.save_checkpoint(self.state_dict())
            self.run.write_history(self.history)
