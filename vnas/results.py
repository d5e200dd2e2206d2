"""Results of runs longer than a chapter can afford, kept in ``data/results/NAME/`` with a manifest written
by the code that produced them, and read back by the chapters with a visible warning when they are stale.

A results folder holds ``results.json`` (what the run found) and ``manifest.json`` (who made it, how, where
and how long: command, config, git commit, mode, hardware, date, wall time). It is **stale** when the
config a chapter expects differs from the manifest's, when it was made from uncommitted changes, or when
``git diff <its commit> HEAD -- vnas configs`` is not empty: the code that made it has changed since.
A stale result is still shown, never silently: ``load`` warns and the chapter prints why.

Place in the flow: beside ``runs`` (run folders of one search); this module keeps finished experiments.
Introduced in chapters/04_bayesian_structure_posterior.py.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from vnas import config, runs


class StaleResultsWarning(UserWarning):
    """A results folder whose code or config has changed since it was made."""


warnings.simplefilter("always", StaleResultsWarning)  # every use of a stale result is shown, not only the first


CODE = ("vnas", "configs", ":(exclude)vnas/checks", ":(exclude)vnas/plots", ":(exclude)vnas/widgets.py",
        ":(exclude)vnas/book.py", ":(exclude)vnas/bridge.py", ":(exclude)vnas/results.py", ":(exclude)vnas/cli.py",
        ":(exclude)configs/sweeps")
"""What a result depends on (git pathspecs): a change here since its commit makes it stale. Left out: the
exercise checkers, plots, widgets, the book builder, chapter 04's exact bridge and this module, which no search
or training runs; the command line, which only parses arguments into the config that each result records (and
that is compared with its file); and the sweep configs, for the same reason."""


def code_commit() -> str:
    """The commit results are made from, with '+dirty' when the code they depend on (``CODE``) has uncommitted
    changes."""
    return runs.git_commit(CODE)


def code_changed_since(commit: str, paths: tuple[str, ...] = CODE) -> str | None:
    """Why ``paths`` (default ``CODE``: what searches and trainings run) may differ from those of ``commit``
    (None when the same).

    Files added since ``commit`` do not count: code that did not exist cannot have run, and for it to run now an
    existing file (which does count) must have changed to call it. So a new module (``vnas/attacks.py``) leaves
    the results made before it fresh."""
    if commit.endswith("+dirty"):
        return "it was made from uncommitted changes"
    try:
        changed = _git("diff", "--stat", "--diff-filter=a", commit, "HEAD", "--", *paths).strip()
    except (OSError, subprocess.SubprocessError):
        return f"its commit {commit[:12]} cannot be compared with this checkout (no git, or not in it)"
    if changed:
        return f"vnas/ or configs/ changed since its commit {commit[:12]} ({changed.splitlines()[-1].strip()})"
    return None


def write(folder: Path, results: dict, cfg: dict, run_mode: str, wall_seconds: float, command: str | None = None,
          compute_seconds: float | None = None, data: str | None = None) -> dict:
    """Write ``results.json`` and ``manifest.json`` into ``folder`` (created if needed); returns the manifest.
    ``wall_seconds`` is this call's; ``compute_seconds`` the run time of everything in the results, when
    some of it was computed by an earlier call (a resumed sweep).

    Introduced in chapters/04_bayesian_structure_posterior.py."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = runs.manifest("results", cfg, run_mode)
    if command is not None:
        manifest["command"] = command
    now = datetime.datetime.now(datetime.UTC)
    manifest["finished"] = now.isoformat(timespec="seconds")
    # this call's start, not the moment of writing (which runs.manifest would give)
    manifest["started"] = (now - datetime.timedelta(seconds=float(wall_seconds))).isoformat(timespec="seconds")
    manifest["git_commit"] = code_commit()
    manifest["wall_seconds"] = round(float(wall_seconds), 1)
    if compute_seconds is not None:
        manifest["compute_seconds"] = round(float(compute_seconds), 1)
    if data is not None:
        manifest["data"] = data  # which images: the full CIFAR-10 or the bundled tiny subset
    # results compact (they can hold every epoch of dozens of runs), the manifest for people to read
    runs._atomic_write(folder / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results)))
    runs.RunDir(folder).write_json("manifest.json", manifest)
    return manifest


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=config.ROOT, capture_output=True, text=True, timeout=30,
                          check=True).stdout


def stale_reasons(manifest: dict, expected_config: dict | None = None) -> list[str]:
    """Why the results of ``manifest`` may no longer be what the code and config would produce ([] if fresh).

    Introduced in chapters/04_bayesian_structure_posterior.py."""
    reasons = []
    if expected_config is not None and manifest.get("config") != expected_config:
        made = manifest.get("config") or {}
        keys = sorted(k for k in set(made) | set(expected_config) if made.get(k) != expected_config.get(k))
        reasons.append("its config differs from the one expected here in " + ", ".join(map(repr, keys)))
    changed = code_changed_since(str(manifest.get("git_commit", "unknown")))
    if changed:
        reasons.append(changed)
    return reasons


@dataclass
class Loaded:
    """A results folder as read back: its results, its manifest, and why it is stale (empty if fresh)."""

    name: str
    results: dict
    manifest: dict
    stale: list[str]

    def describe(self) -> str:
        """One paragraph saying where these numbers come from (never presented as the reader's own run)."""
        m = self.manifest
        minutes = m.get("compute_seconds", m.get("wall_seconds", float("nan"))) / 60
        text = (f"loaded data/results/{self.name}: made by `{m.get('command')}` in {m.get('mode')} mode on "
                f"{m.get('hardware')}, commit {str(m.get('git_commit'))[:12]}, finished {m.get('finished')}, "
                f"{minutes:.1f} min of run time; data: {m.get('data', 'not recorded')}; not run by this notebook.")
        if self.stale:
            text += " STALE: " + "; ".join(self.stale) + ". Rerun its command to refresh it."
        return text


def load(name: str, expected_config: dict | None = None, root: Path | None = None) -> Loaded | None:
    """The results folder ``root/name`` (default root: data/results), or None when it does not exist.

    Warns (StaleResultsWarning) when it is stale; a folder without both files is an error that says so.
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    folder = Path(root or config.RESULTS_DIR) / name
    if not folder.exists():
        return None
    found = {}
    for part in ("results", "manifest"):
        path = folder / f"{part}.json"
        if not path.is_file():
            raise runs.RunError(f"{folder} has no {part}.json: it is not a complete results folder. Rerun the "
                                f"command that makes it, or delete the folder.")
        try:
            found[part] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise runs.RunError(f"{path} is not valid JSON ({err}); rerun the command that makes it.") from None
    loaded = Loaded(name, found["results"], found["manifest"], stale_reasons(found["manifest"], expected_config))
    if loaded.stale:
        warnings.warn(f"data/results/{name} is stale: " + "; ".join(loaded.stale), StaleResultsWarning, stacklevel=2)
    return loaded


def load_sweep(name: str, root: Path | None = None) -> Loaded | None:
    """The results folder ``name`` that ``python -m vnas sweep configs/sweeps/<name>.toml`` makes, checked against
    that file (stale when its config differs), or None when absent (``missing(name)`` says how to make it).
    Introduced in chapters/04_bayesian_structure_posterior.py."""
    from vnas import robustness, sweep  # here, not at the top: these modules write results

    if not (Path(root or config.RESULTS_DIR) / name).exists():
        return None
    path = config.CONFIG_DIR / "sweeps" / f"{name}.toml"
    expected = robustness.load_config(path) if robustness.is_robustness_config(path) else sweep.load_sweep_config(path)
    return load(name, expected_config=expected, root=root)


def missing(name: str) -> str:
    """What to say when the results folder of sweep ``name`` is absent. Introduced in
    chapters/04_bayesian_structure_posterior.py."""
    return f"data/results/{name} is absent: `python -m vnas sweep configs/sweeps/{name}.toml --jobs 2` makes it."


__all__ = ["CODE", "Loaded", "StaleResultsWarning", "code_changed_since", "code_commit", "load", "load_sweep",
           "missing", "stale_reasons", "write"]
