"""Execute the chapters (jupytext percent .py files) and render the course as HTML.

Used by ``make book`` (``python -m vnas book``) and by tests/test_chapters.py, so CI and readers run
chapters the same way: one at a time (parallel kernels on 2 cores slow torch 10-50x), each in a fresh
kernel, with a per-cell timeout (a headless cell can stall; nbconvert issues #1921, #2029), failing on
any error output, including one hidden inside an ipywidgets callback.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

from vnas import config

CHAPTERS_DIR = config.ROOT / "chapters"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


class ChapterError(RuntimeError):
    """A chapter that failed to execute; the message names the chapter and the cell."""


# what executing and rendering chapters needs beyond vnas itself: the `dev` extra of pyproject.toml
BOOK_MODULES = ("nbclient", "nbformat", "nbconvert", "ipykernel")


def require_book_modules() -> None:
    """Raise ChapterError saying what to install when a module that executing chapters needs is missing."""
    import importlib.util

    missing = [m for m in BOOK_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ChapterError(f"Executing chapters needs {', '.join(missing)}, which this environment lacks. Install "
                           "the dev extra: `pip install -e '.[dev]'` (or `make book`, which sets it up).")


@dataclass
class ChapterRun:
    path: Path
    notebook: object  # nbformat.NotebookNode
    seconds: float
    cell_seconds: list[float]


def chapters() -> list[Path]:
    """The chapter files ``chapters/NN_slug.py`` in order."""
    return sorted(p for p in CHAPTERS_DIR.glob("[0-9][0-9]_*.py"))


def title(notebook) -> str:
    """The first markdown heading of a notebook, or ''."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def _snippet(source: str, lines: int = 3) -> str:
    head = source.strip().splitlines()[:lines]
    return "\n    ".join(head)


def widget_errors(notebook) -> list[str]:
    """Errors stored in the saved widget state: an exception inside an ``interact`` callback lands in
    an Output widget's state instead of the cell's outputs, and executors report success."""
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    found = []
    for model_id, model in state.items():
        for out in model.get("state", {}).get("outputs", []) or []:
            if out.get("output_type") == "error":
                found.append(f"widget {model_id}: {out.get('ename')}: {out.get('evalue')}")
    return found


def check_outputs(notebook, name: str) -> None:
    """Raise ChapterError for any error output in the cells or in the widget state."""
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for number, cell in enumerate(code_cells, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise ChapterError(f"{name}: code cell {number} raised {out.get('ename')}: {out.get('evalue')}\n"
                                   f"    {_snippet(cell.source)}")
    errors = widget_errors(notebook)
    if errors:
        raise ChapterError(f"{name}: an ipywidgets callback raised: " + "; ".join(errors))


def execute(path: Path, timeout: int = 600, env: dict | None = None) -> ChapterRun:
    """Execute one chapter in a fresh python3 kernel from the chapters folder; raise ChapterError on failure.

    ``env`` entries (e.g. ``{"VNAS_MODE": "smoke"}``) reach the kernel through the environment.
    """
    require_book_modules()
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    if not path.is_file():
        raise ChapterError(f"No chapter at {path}; chapters are chapters/NN_slug.py.")
    notebook = jupytext.read(path)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                            store_widget_state=True, resources={"metadata": {"path": str(path.parent)}})
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    cell_seconds: list[float] = []
    start = time.perf_counter()
    try:
        client.execute()
    except CellTimeoutError as err:
        raise ChapterError(f"{path.name}: a cell ran past the {timeout} s per-cell timeout: {err}") from err
    except (CellExecutionError, DeadKernelError) as err:
        raise ChapterError(f"{path.name}: {err}") from err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            from datetime import datetime
            t0 = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            cell_seconds.append((t1 - t0).total_seconds())
    try:
        check_outputs(notebook, path.name)
    except ChapterError as err:
        err.notebook = notebook  # so the book can still show where it broke
        raise
    return ChapterRun(path, notebook, seconds, cell_seconds)


def build(out: Path, timeout: int = 3600, only: list[str] | None = None) -> list[ChapterRun]:
    """Execute every chapter (or those whose names contain one of ``only``) and write the executed
    notebooks and an HTML site with an index page into ``out``. A failing chapter is still written
    (with its error) before the build stops, so the reader can see where it broke."""
    require_book_modules()
    import nbformat
    from nbconvert import HTMLExporter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    runs, rows = [], []
    selected = [p for p in chapters() if not only or any(s in p.name for s in only)]
    if not selected:
        raise ChapterError(f"No chapter matches {only}; chapters: {[p.name for p in chapters()]}.")
    for path in selected:
        print(f"[book] {path.name} (mode {config.mode()}) ...", flush=True)
        stem = path.stem
        try:
            run = execute(path, timeout=timeout)
        except ChapterError as err:
            if getattr(err, "notebook", None) is not None:
                nbformat.write(err.notebook, out / f"{stem}.ipynb")
                print(f"[book] {path.name} failed; its executed notebook is {out / stem}.ipynb", flush=True)
            raise
        runs.append(run)
        nbformat.write(run.notebook, out / f"{stem}.ipynb")
        body, _ = exporter.from_notebook_node(run.notebook)
        (out / f"{stem}.html").write_text(body)
        rows.append((stem, title(run.notebook) or stem, run.seconds))
        print(f"[book] {path.name}: {run.seconds:.1f} s", flush=True)
    items = "\n".join(f'<li><a href="{s}.html">{html.escape(t)}</a> <small>({sec:.0f} s)</small></li>'
                      for s, t, sec in rows)
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>vnas: Bayesian neural architecture search</title>"
        "<h1>vnas: Bayesian neural architecture search</h1>"
        f"<p>Executed in <b>{config.mode()}</b> mode on {html.escape(config.hardware())}. "
        "Smoke-mode pages only show that the code runs; their numbers are not results.</p>"
        f"<ol>{items}</ol>")
    return runs


SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"


def strip_solutions(text: str) -> str:
    """A chapter's text with every solution block replaced by ``raise NotImplementedError`` at the same
    indentation: the assignment a teacher hands out (the checks then say "not written yet").

    Introduced in chapters/00_welcome.py.
    """
    out, inside = [], False
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        marker = line.strip()
        if marker == SOLUTION_BEGIN:
            if inside:
                raise ValueError(f"line {number}: {SOLUTION_BEGIN} inside another solution block.")
            inside = True
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError\n")
        elif marker == SOLUTION_END:
            if not inside:
                raise ValueError(f"line {number}: {SOLUTION_END} without a {SOLUTION_BEGIN}.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{SOLUTION_BEGIN} is never closed by {SOLUTION_END}.")
    return "".join(out)


def write_assignments(out: Path) -> list[Path]:
    """Every chapter with its solutions stripped, as ``.py`` (jupytext) and ``.ipynb``, into ``out``."""
    import jupytext

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters():
        text = strip_solutions(path.read_text())
        (out / path.name).write_text(text)
        jupytext.write(jupytext.reads(text, fmt="py:percent"), out / f"{path.stem}.ipynb")
        written.append(out / path.name)
    return written
