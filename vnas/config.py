"""The one place that reads the environment: mode, device, seeding, paths, config files.

Environment variables (read here and nowhere else):
    VNAS_MODE      smoke | quick | full   (default quick)
    VNAS_DEVICE    cpu | cuda | cuda:1 ... (default: CUDA when available)
    VNAS_DATA      a CIFAR-10 folder (cifar-10-batches-py layout) or an .npz file
    VNAS_DOWNLOAD  1 to allow a torchvision download of CIFAR-10

Introduced in chapters/00_welcome.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import platform
import random
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch

MODES = ("smoke", "quick", "full")

# Paths come from the package location, never from the working directory.
ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
CONFIG_DIR = ROOT / "configs"
RESULTS_DIR = DATA_DIR / "results"


class ConfigError(ValueError):
    """A bad mode, config file or config key; the message says how to fix it."""


def mode() -> str:
    """The run mode from ``VNAS_MODE`` (default ``quick``).

    smoke: CI, 1-2 steps of everything; quick: a CPU laptop, minutes; full: published protocols on a GPU.
    """
    value = os.environ.get("VNAS_MODE", "quick").strip().lower() or "quick"
    if value not in MODES:
        raise ConfigError(
            f"VNAS_MODE={value!r} is not a mode; use one of {', '.join(MODES)} "
            f"(e.g. `VNAS_MODE=smoke make book`)."
        )
    return value


def device() -> torch.device:
    """CUDA when available, else CPU; ``VNAS_DEVICE`` overrides."""
    wanted = os.environ.get("VNAS_DEVICE", "").strip()
    if not wanted:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(wanted)
    except RuntimeError as err:
        raise ConfigError(f"VNAS_DEVICE={wanted!r} is not a torch device; use cpu or cuda[:N].") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"VNAS_DEVICE={wanted!r} but torch sees no CUDA device; unset it or use cpu.")
    return dev


def data_override() -> Path | None:
    """The user's dataset path from ``VNAS_DATA``, if set."""
    value = os.environ.get("VNAS_DATA", "").strip()
    return Path(value).expanduser() if value else None


def download_allowed() -> bool:
    """Whether ``VNAS_DOWNLOAD=1`` allows fetching CIFAR-10 with torchvision."""
    return os.environ.get("VNAS_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def setup(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch so that CPU runs repeat exactly; returns a seeded torch generator.

    Introduced in chapters/00_welcome.py.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def hardware() -> str:
    """A short description of where this runs, for banners and manifests."""
    dev = device()
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.machine()} x {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)"


def banner(data_source: str | None = None) -> str:
    """One line every chapter prints first: mode, device, data source, torch version."""
    parts = [f"vnas | mode: {mode()}", f"device: {hardware()}"]
    if data_source:
        parts.append(f"data: {data_source}")
    parts.append(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    line = " | ".join(parts)
    if mode() == "smoke":
        line += "\nSMOKE MODE: numbers and figures below only show that the code runs; they are not results."
    return line


# --- config files -------------------------------------------------------------------------------

def _check_keys(cls, table: dict, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"Unknown config key {key!r} in {where}.{hint}")


def read_toml(path: Path) -> dict:
    """A TOML file as a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; give a path to a .toml file.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"Config file {path} is not valid TOML: {err}") from err


def load_config(cls, experiment: str | None, file: Path | None = None, run_mode: str | None = None, **overrides):
    """Build the dataclass ``cls`` from defaults <- configs/<experiment>.toml[mode] <- file <- overrides.

    ``experiment=None`` skips the shipped protocol file.
    A config file may be flat (keys at top level) or have [smoke]/[quick]/[full] tables.
    Unknown keys are refused with the closest valid name.
    """
    run_mode = run_mode or mode()
    if run_mode not in MODES:
        raise ConfigError(f"Mode {run_mode!r} is not one of {', '.join(MODES)}.")
    values: dict = {}
    for path in [CONFIG_DIR / f"{experiment}.toml" if experiment else None, file]:
        if path is None:
            continue
        table = read_toml(path)
        if any(m in table for m in MODES):
            table = table.get(run_mode, {})
        _check_keys(cls, table, str(path))
        values.update(table)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _check_keys(cls, overrides, "the command line")
    values.update(overrides)
    return cls(**_check_types(cls, values))


def from_dict(cls, values: dict, where: str):
    """The dataclass ``cls`` from a plain dict (e.g. a run's config.json), with the checks of load_config."""
    _check_keys(cls, values, where)
    return cls(**_check_types(cls, values))


def _check_types(cls, values: dict) -> dict:
    """Coerce int -> float and list -> tuple where the default says so; refuse other type mismatches."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    # a field annotated "float | str" takes a number as well as its string default
    numeric = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type).replace(" ", "").split("|")}
    out = {}
    for key, value in values.items():
        default = defaults[key]
        if default is None or default is dataclasses.MISSING or isinstance(value, type(default)):
            out[key] = value
        elif (isinstance(default, float) or key in numeric) and isinstance(value, int | float) \
                and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(default, tuple) and isinstance(value, list):
            out[key] = tuple(value)
        else:
            raise ConfigError(f"Config key {key!r} = {value!r} should be a {type(default).__name__} "
                              f"(like the default {default!r}).")
    return out


def config_dict(cfg) -> dict:
    """A config dataclass as a plain dict (for run folders and manifests)."""
    return dataclasses.asdict(cfg)
