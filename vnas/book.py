"""Execute the chapters (jupytext percent .py files) and render the course as an offline HTML site.

Used by ``make book`` (``python -m vnas book``) and by the tests, so CI and readers run chapters the same way:
one at a time (parallel kernels on 2 cores slow torch 10-50x), each in a fresh kernel, with a per-cell timeout
(a headless cell can stall; nbconvert issues #1921, #2029), failing on any error output, including one hidden
inside an ipywidgets callback.

Executing and rendering are two steps: ``run`` executes a chapter and saves the executed notebook, stamped with
how it ran (``notebook.metadata["vnas"]``), into ``_build/notebooks/``; ``render`` turns saved notebooks into the
site. So the site can be made from the notebooks the chapter tests executed, and ``build`` re-executes only a
chapter whose source or mode changed.
"""

from __future__ import annotations

import copy
import hashlib
import html
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from vnas import config

CHAPTERS_DIR = config.ROOT / "chapters"
NOTEBOOKS = "notebooks"  # the executed notebooks' folder inside a build folder
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


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
    notebook: object  # nbformat.NotebookNode, with notebook.metadata["vnas"] saying how it ran
    seconds: float
    cell_seconds: list[float] = field(default_factory=list)
    error: str = ""  # why it failed ('' when it ran clean)

    @property
    def ok(self) -> bool:
        return not self.error


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


def source_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def _cell_seconds(notebook) -> list[float]:
    found = []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            t0 = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            found.append((t1 - t0).total_seconds())
    return found


def execute(path: Path, timeout: int = 600, env: dict | None = None) -> ChapterRun:
    """Execute one chapter in a fresh python3 kernel from the chapters folder; raise ChapterError on failure
    (its ``notebook`` attribute holds the notebook as far as it ran).

    ``env`` entries (e.g. ``{"VNAS_MODE": "smoke"}``) reach the kernel through the environment. The notebook's
    metadata ``vnas`` records the mode, hardware, run time, source hash and status.
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
    error = None
    start = time.perf_counter()
    try:
        mode, hardware = config.mode(), config.hardware()  # what the kernel sees, for the page's banner
        client.execute()
    except CellTimeoutError as err:
        error = ChapterError(f"{path.name}: a cell ran past the {timeout} s per-cell timeout: {err}")
    except (CellExecutionError, DeadKernelError) as err:
        error = ChapterError(f"{path.name}: {err}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    if error is None:
        try:
            check_outputs(notebook, path.name)
        except ChapterError as err:
            error = err
    notebook.metadata["vnas"] = {
        "chapter": path.name, "mode": mode, "hardware": hardware, "seconds": round(seconds, 1),
        "executed": datetime.now(UTC).isoformat(timespec="seconds"), "source_sha256": source_sha256(path),
        "status": "failed" if error else "ok", "error": str(error) if error else ""}
    if error:
        error.notebook = notebook  # so the book can still show where it broke
        raise error
    return ChapterRun(path, notebook, seconds, _cell_seconds(notebook))


def run(path: Path, notebook_dir: Path | None = None, timeout: int = 600, env: dict | None = None) -> ChapterRun:
    """``execute`` that records a failure in the returned run instead of raising, and saves the executed
    notebook (failed or not) as ``notebook_dir/NN_slug.ipynb``."""
    import nbformat

    path = Path(path)
    try:
        result = execute(path, timeout=timeout, env=env)
    except ChapterError as err:
        if getattr(err, "notebook", None) is None:  # it never started: nothing to save or show
            raise
        result = ChapterRun(path, err.notebook, err.notebook.metadata["vnas"]["seconds"], error=str(err))
    if notebook_dir is not None:
        Path(notebook_dir).mkdir(parents=True, exist_ok=True)
        nbformat.write(result.notebook, Path(notebook_dir) / f"{path.stem}.ipynb")
    return result


def reusable(path: Path, notebook_dir: Path, mode: str):
    """The saved executed notebook of chapter ``path`` when it ran clean in ``mode`` from the same source, else
    None."""
    import nbformat

    saved = Path(notebook_dir) / f"{Path(path).stem}.ipynb"
    try:
        notebook = nbformat.read(saved, as_version=4)
    except (OSError, ValueError):
        return None
    meta = notebook.metadata.get("vnas", {})
    if meta.get("status") == "ok" and meta.get("mode") == mode and meta.get("source_sha256") == source_sha256(path):
        return notebook
    return None


def build(out: Path, timeout: int = 3600, only: list[str] | None = None, reuse: bool = True,
          saved_only: bool = False) -> list[dict]:
    """Execute every chapter (or those whose names contain one of ``only``) in the current mode, save the executed
    notebooks into ``out/notebooks`` and render the site into ``out``; return the index's entries.

    A saved notebook is reused when it ran clean in this mode from the same source (``reuse``); ``saved_only``
    executes nothing and renders what is saved. A chapter that fails is recorded, not raised: the other chapters
    still run and the index says which cell failed and why (callers check the entries' ``status``)."""
    require_book_modules()
    out = Path(out)
    notebook_dir = out / NOTEBOOKS
    selected = [p for p in chapters() if not only or any(s in p.name for s in only)]
    if not selected:
        raise ChapterError(f"No chapter matches {only}; chapters: {[p.name for p in chapters()]}.")
    mode = config.mode()
    for path in [] if saved_only else selected:
        if reuse and reusable(path, notebook_dir, mode) is not None:
            print(f"[book] {path.name}: reusing {notebook_dir / path.stem}.ipynb (same source, {mode} mode)")
            continue
        print(f"[book] {path.name} (mode {mode}) ...", flush=True)
        result = run(path, notebook_dir, timeout=timeout)
        print(f"[book] {path.name}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s", flush=True)
    return render(notebook_dir, out, names=[p.stem for p in chapters()])


# --- the site ---------------------------------------------------------------------------------------------------

MODE_NOTES = {
    "smoke": "smoke numbers and figures only show that the code runs; they are not results.",
    "quick": "small real runs on a CPU; each chapter says what its proxy cannot show.",
    "full": "the published protocols.",
}

# MathJax 2.7 from the pip package jupyter-server-mathjax (the dev extra), served from the site itself. It ships
# the combined TeX-AMS-MML_HTMLorMML config (every jax the pages use in one file), the HTML-CSS output and the
# STIX-Web fonts only, so the pages ask for exactly those; the files below are what the pages load (measured with
# the browser test: any other request fails it), 2.2 MB in 165 files.
MATHJAX_FILES = ("MathJax.js", "LICENSE", "config/TeX-AMS-MML_HTMLorMML-full.js", "jax/output/HTML-CSS/fonts/STIX-Web",
                 "fonts/HTML-CSS/STIX-Web/woff", "jax/element/mml/optable", "extensions/TeX", "localization/en")
MATHJAX_HEAD = r"""<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  // MathJax 2 typesets \texttt's argument as raw text, so \texttt{expected\_ll} shows its backslash (JupyterLab's
  // MathJax 3 does not); in math mode \_ is an underscore
  TeX: {equationNumbers: {autoNumber: "AMS", useLabelIds: true}, Macros: {texttt: ["\\mathtt{#1}", 1]}},
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null,
               linebreaks: {automatic: true},
               // its font-loading test font is url('about:blank'), which Chromium refuses with a console error;
               // a local() that does not exist falls back the same way, silently
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  "fast-preview": {disabled: true},
  // the hidden MathML copy for screen readers asks for MathJax's TeX fonts, which the package does not ship
  menuSettings: {assistiveMML: false}, AssistiveMML: {disabled: true},
  displayAlign: "center", messageStyle: "none"
});
</script>
<script src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>"""

# The lab template with everything it would fetch from a CDN taken out: require.js and the widget manager (widget
# views are replaced by their saved figures, below), mermaid (no chapter draws one) and MathJax (served locally).
PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock html_head_js_requirejs %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block html_head_js_mathjax %}{{ resources.vnas.mathjax }}{% endblock html_head_js_mathjax %}
{% block extra_css %}<style>{{ resources.vnas.css }}</style>{% endblock extra_css %}
{% block body_header %}{{ super() }}{{ resources.vnas.header }}{% endblock body_header %}
{% block body_footer %}{{ resources.vnas.footer }}{{ super() }}{% endblock body_footer %}
"""

SITE_CSS = """
.vnas-nav { display: flex; gap: 1.5em; padding: 0.5em 0; font-family: var(--jp-ui-font-family, sans-serif); }
.vnas-banner { border: 1px solid #b0bec5; background: #eceff1; padding: 0.6em 1em; margin: 0.5em 0 1em;
               font-family: var(--jp-ui-font-family, sans-serif); }
.vnas-banner.smoke { border-color: #e0b000; background: #fff8e1; }
.vnas-banner.failed, .vnas-failed { border-color: #c62828; background: #ffebee; }
.vnas-widget-note { font-style: italic; color: #555; }
"""


def _mathjax_source() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ChapterError("The HTML book serves MathJax from the pip package jupyter-server-mathjax, which this "
                           "environment lacks. Install the dev extra: `pip install -e '.[dev]'`.")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def copy_mathjax(out: Path) -> int:
    """Copy the MathJax files the pages load into ``out/mathjax``; return their size in bytes."""
    src, dest = _mathjax_source(), Path(out) / "mathjax"
    for rel in MATHJAX_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if (src / rel).is_dir():
            shutil.copytree(src / rel, dest / rel, dirs_exist_ok=True)
        else:
            shutil.copy2(src / rel, dest / rel)
    return sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


def _widget_outputs(state: dict, model_id: str, seen: set | None = None) -> list[dict]:
    """What the Output widgets under widget ``model_id`` last showed (an ``interactive`` is a box whose last child
    is the Output widget holding the figure), from the widget state nbclient saved."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id].get("state", {})
    found = [o for o in model.get("outputs", []) or [] if o.get("output_type") != "error"]
    for child in model.get("children", []) or []:
        found += _widget_outputs(state, str(child).removeprefix("IPY_MODEL_"), seen)
    return found


_CODE = re.compile(r"```.*?```|`[^`]+`", re.S)
_MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.S)


def math_on_one_line(markdown: str) -> str:
    """``markdown`` with each formula outside code joined onto one line. JupyterLab takes the math out before it
    parses the markdown; nbconvert's parser reads a formula's line that starts with '- ' or '1. ' as a list item
    and breaks the formula apart. On one line it renders as in JupyterLab (in TeX a newline is a space)."""
    parts, codes = _CODE.split(markdown), _CODE.findall(markdown) + [""]
    return "".join(_MATH.sub(lambda m: m.group(0).replace("\n", " "), part) + code
                   for part, code in zip(parts, codes, strict=True))


def static_widgets(notebook):
    """A copy of ``notebook`` for a static page: widget views are replaced by the figures their saved state holds,
    with a note (or only the note, when nothing was saved), as a static page has no kernel to drive a widget; and
    formulas are kept on one line (``math_on_one_line``)."""
    import nbformat

    notebook = copy.deepcopy(notebook)
    state = notebook.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = math_on_one_line(cell.source)
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(out)
                continue
            shown = [nbformat.from_dict(o) for o in _widget_outputs(state, view.get("model_id", ""))]
            note = ("Interactive in JupyterLab; here, the figure at the controls' starting values." if shown else
                    "An interactive widget: open this chapter in JupyterLab to use it (no figure was saved).")
            outputs.append(nbformat.v4.new_output("display_data", data={
                "text/html": f'<p class="vnas-widget-note">{note}</p>', "text/plain": note}))
            outputs += shown
        cell.outputs = outputs
    return notebook


def _page_parts(entry: dict, prev: dict | None, nxt: dict | None) -> tuple[str, str]:
    """The navigation and the banner that opens a page, and the navigation that closes it."""
    def link(e, rel, text):
        return f'<a rel="{rel}" href="{e["stem"]}.html">{text.format(html.escape(e["title"]))}</a>' if e else ""

    nav = (f'<nav class="vnas-nav"><a href="index.html">Contents</a>{link(prev, "prev", "&larr; {}")}'
           f'{link(nxt, "next", "{} &rarr;")}</nav>')
    mode = entry["mode"]
    text = (f'Executed in <b>{html.escape(mode)} mode</b> on {html.escape(entry["hardware"])} on '
            f'{html.escape(entry["executed"][:10])} in {entry["seconds"]:.0f} s: {MODE_NOTES.get(mode, "")}')
    if entry["status"] != "ok":
        text += f'<br><b>This chapter failed:</b> <pre>{html.escape(entry["error"])}</pre>'
    kind = "failed" if entry["status"] != "ok" else mode
    return nav + f'<div class="vnas-banner {kind}" role="note">{text}</div>', nav


def _entry(stem: str, notebook) -> dict:
    meta = dict(notebook.metadata.get("vnas", {})) if notebook is not None else {}
    entry = {"stem": stem, "title": (title(notebook) if notebook is not None else "") or stem,
             "mode": meta.get("mode", "?"), "hardware": meta.get("hardware", "unknown hardware"),
             "seconds": float(meta.get("seconds", 0.0)), "executed": meta.get("executed", ""),
             "status": meta.get("status", "not executed") if notebook is not None else "not executed",
             "error": meta.get("error", ""), "stale": False}
    chapter = CHAPTERS_DIR / f"{stem}.py"
    if notebook is not None and chapter.is_file() and meta.get("source_sha256") != source_sha256(chapter):
        entry["stale"] = True  # the chapter changed since this notebook ran: say so on the index
    return entry


def render(notebook_dir: Path, out: Path, names: list[str] | None = None) -> list[dict]:
    """Write the site into ``out`` from the executed notebooks in ``notebook_dir``: one page per notebook
    (``names``, default every ``NN_slug.ipynb`` there) with a banner saying how it was executed and prev/next
    links, MathJax served locally, and ``index.html`` listing every chapter with its mode, run time and status.
    Returns the index's entries (``status`` is 'ok', 'failed' or 'not executed')."""
    require_book_modules()
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook_dir, out = Path(notebook_dir), Path(out)
    if names is None:
        names = sorted(p.stem for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        raise ChapterError(f"No executed notebooks in {notebook_dir}: run `python -m vnas book` (or the chapter "
                           "tests) first.")
    notebooks = {n: nbformat.read(notebook_dir / f"{n}.ipynb", as_version=4)
                 for n in names if (notebook_dir / f"{n}.ipynb").is_file()}
    entries = [_entry(n, notebooks.get(n)) for n in names]
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"vnas.html.j2": PAGE_TEMPLATE})],
                            template_file="vnas.html.j2")
    pages = [e for e in entries if e["stem"] in notebooks]
    for i, entry in enumerate(pages):
        header, footer = _page_parts(entry, pages[i - 1] if i else None, pages[i + 1] if i + 1 < len(pages) else None)
        resources = {"metadata": {"name": entry["title"]},
                     "vnas": {"mathjax": MATHJAX_HEAD, "css": SITE_CSS, "header": header, "footer": footer}}
        body, _ = exporter.from_notebook_node(static_widgets(notebooks[entry["stem"]]), resources=resources)
        (out / f"{entry['stem']}.html").write_text(body)
    (out / "index.html").write_text(_index(entries))
    return entries


def _index(entries: list[dict]) -> str:
    rows = []
    for e in entries:
        name = html.escape(e["title"])
        link = f'<a href="{e["stem"]}.html">{name}</a>' if e["status"] != "not executed" else name
        status = html.escape(e["status"]) + (" (the chapter changed since)" if e["stale"] else "")
        if e["status"] == "failed":
            status = f'<b>failed</b><pre class="vnas-failed">{html.escape(e["error"])}</pre>'
        when = f'{html.escape(e["mode"])}' if e["status"] != "not executed" else "-"
        secs = f'{e["seconds"]:.0f} s' if e["status"] != "not executed" else "-"
        rows.append(f"<tr><td>{e['stem'][:2]}</td><td>{link}</td><td>{when}</td><td>{secs}</td><td>{status}</td></tr>")
    modes = sorted({e["mode"] for e in entries if e["status"] != "not executed"})
    notes = "".join(f"<li><b>{html.escape(m)}</b>: {MODE_NOTES.get(m, '')}</li>" for m in modes)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<title>vnas: Bayesian neural architecture search</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "td,th{padding:.3em .8em;text-align:left;vertical-align:top;border-bottom:1px solid #ddd}"
            "pre{white-space:pre-wrap;margin:.3em 0}.vnas-failed{background:#ffebee;padding:.4em}</style></head><body>"
            "<h1>vnas: Bayesian neural architecture search</h1>"
            "<p>An executable textbook. Each chapter below was executed in the mode shown:</p>"
            f"<ul>{notes}</ul><table><thead><tr><th></th><th>chapter</th><th>mode</th><th>run time</th>"
            f"<th>status</th></tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>")


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
