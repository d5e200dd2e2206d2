"""Grading a class: run every student's chapter in a fresh kernel and call each exercise's checker ourselves.

    python -m vnas grade SUBMISSIONS/ --out grades.csv [--hidden HIDDEN/] [--timeout 120] [--only 00 02]
    python -m vnas assignments --nbgrader [--hidden HIDDEN/] --out course/

Layout (what the README's "Teaching with vnas" describes):
- ``SUBMISSIONS/<student>/<NN_slug>.py`` or ``.ipynb``: one folder per student, chapter files named as the
  chapters are.
- ``HIDDEN/<NN_slug>.py`` (optional): checks the students never see. Each is a ``@vnas.checks.checker``
  function named ``check_...``; its first parameter is named after the student's function it grades. A
  ``POINTS = {"exercise": 2}`` dict sets points (exercise = checker name without ``check_``); the chapter's
  own exercises are worth 1 point unless ``POINTS`` says otherwise.

Why the grader calls the checkers itself: a submission may delete or edit its own ``check_...(fn)`` call, or
replace ``vnas.checks`` in its namespace. After the submission has run, the grader imports the checkers
afresh in the same kernel and calls each on the function the submission defined, one cell per exercise
(so one infinite loop costs one exercise), and reads the structured ``CheckResult`` from a file only the
grader knows. A submission that cannot run (not JSON, kernel crash, timeout) scores 0 with the reason for
what it affects, never stopping the other rows.

Introduced in chapters/00_welcome.py.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vnas import book

COLUMNS = ("student", "chapter", "exercise", "points", "status", "reason")
STATUSES = ("passed", "wrong", "not attempted", "error")
CELL_TIMEOUT = 120  # seconds per cell: a smoke-mode chapter cell takes a few seconds
CHAPTER_FILE = re.compile(r"^(\d\d)_[\w-]+$")


class GradeError(ValueError):
    """Grading cannot start (no submissions, a malformed hidden check); the message says what to do."""


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: ``checker`` (its name in vnas.checks, or in the hidden file) called on the
    student's ``function``."""

    chapter: str
    function: str
    checker: str
    points: float = 1.0
    hidden: bool = False

    @property
    def name(self) -> str:
        return self.checker.removeprefix("check_")


@dataclass
class Row:
    student: str
    chapter: str
    exercise: str
    points: float
    status: str
    reason: str


# --- what is graded -------------------------------------------------------------------------------------------


def _check_calls(tree: ast.AST) -> list[tuple[str, str]]:
    """(checker, function) for every ``...check_X(fn)`` call whose first argument is a name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name.startswith("check_"):
                found.append((name, node.args[0].id))
    return found


def exercises(path: Path) -> list[Exercise]:
    """A reference chapter's exercises, in order: each top-level function whose body holds a solution block,
    with the checker that the chapter calls on it."""
    text = Path(path).read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    solved = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
              and any(line.strip() == book.SOLUTION_BEGIN for line in lines[node.lineno - 1:node.end_lineno])]
    calls = _check_calls(tree)
    found = []
    for function in solved:
        checkers = [c for c, fn in calls if fn == function]
        if not checkers:
            raise GradeError(f"{Path(path).name}: exercise {function} has no vnas.checks call to grade it with.")
        found.append(Exercise(Path(path).stem, function, checkers[0]))
    return found


def hidden_exercises(hidden: Path | None, chapter: str) -> tuple[list[Exercise], dict, str]:
    """The hidden checks for ``chapter`` (``HIDDEN/<chapter>.py``), its POINTS and its source; validated here,
    before any kernel starts, so a teacher's typo is one clear error instead of a column of zeros."""
    if hidden is None or not (Path(hidden) / f"{chapter}.py").is_file():
        return [], {}, ""
    path = Path(hidden) / f"{chapter}.py"
    source = path.read_text()
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as err:
        raise GradeError(f"hidden checks {path}, line {err.lineno}: {err.msg}. Fix the file and grade again.") from err
    points: dict = {}
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "POINTS" for t in node.targets):
            try:
                points = ast.literal_eval(node.value)
            except ValueError as err:
                raise GradeError(f"{path}: POINTS must be a literal dict {{'exercise': points}}.") from err
            if not isinstance(points, dict) or not all(isinstance(v, int | float) and v >= 0 for v in points.values()):
                raise GradeError(f"{path}: POINTS must map exercise names to points >= 0, got {points!r}.")
        if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):
            if not node.args.args:
                raise GradeError(f"{path}: {node.name} takes no argument; its first parameter must be named after "
                                 "the student's function it grades, e.g. `def check_x(mixed_op):`.")
            if not any(_decorator_name(d) == "checker" for d in node.decorator_list):
                raise GradeError(f"{path}: decorate {node.name} with @vnas.checks.checker so that it returns a "
                                 "CheckResult (passed / wrong / not attempted).")
            found.append(Exercise(chapter, node.args.args[0].arg, node.name, hidden=True))
    if not found:
        raise GradeError(f"{path} defines no check_... function; see `python -m vnas grade --help` for the layout.")
    return found, points, source


def _parse(source: str) -> ast.AST:
    """A cell's syntax tree; an empty module for a cell Python cannot parse (an IPython magic)."""
    try:
        return ast.parse(source)
    except SyntaxError:
        return ast.Module([], [])


def _decorator_name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def graded(chapter: Path, hidden: Path | None = None) -> tuple[list[Exercise], str]:
    """Every exercise of a chapter, its own and the hidden ones, with points; and the hidden source."""
    own = exercises(chapter)
    extra, points, source = hidden_exercises(hidden, chapter.stem)
    everything = own + extra
    unknown = set(points) - {e.name for e in everything}
    if unknown:
        raise GradeError(f"{Path(hidden) / (chapter.stem + '.py')}: POINTS names {sorted(unknown)}, which "
                         f"{chapter.stem} does not have; its exercises are {[e.name for e in everything]}.")
    clash = {e.name for e in own} & {e.name for e in extra}
    if clash:
        raise GradeError(f"hidden checks for {chapter.stem} reuse the names {sorted(clash)} of its own exercises: "
                         "rename them.")
    return [Exercise(e.chapter, e.function, e.checker, float(points.get(e.name, 1)), e.hidden)
            for e in everything], source


# --- running one submission ------------------------------------------------------------------------------------

_PRELUDE = """\
# vnas grader: fresh checkers, so that nothing the submission did to vnas.checks counts
import importlib as _vg_importlib, json as _vg_json, sys as _vg_sys
for _vg_m in [m for m in _vg_sys.modules if m == "vnas.checks" or m.startswith("vnas.checks.")]:
    del _vg_sys.modules[_vg_m]
_vg_checks = _vg_importlib.import_module("vnas.checks")
_vg_hidden = {{}}
try:
    exec(compile({hidden!r}, "hidden checks", "exec"), _vg_hidden)
    _vg_hidden_error = None
except BaseException as _vg_err:
    _vg_hidden_error = f"the hidden checks raised {{type(_vg_err).__name__}}: {{_vg_err}}"
"""

_CALL = """\
# vnas grader: {checker}({function})
def _vg_grade(out={out!r}, function={function!r}, checker={checker!r}, hidden={hidden!r}):
    def write(status, reason):
        with open(out, "w") as fh:
            _vg_json.dump({{"status": status, "reason": reason}}, fh)
    if hidden and _vg_hidden_error:
        return write("error", _vg_hidden_error)
    check = _vg_hidden.get(checker) if hidden else getattr(_vg_checks, checker, None)
    if check is None:
        return write("error", f"the grader has no checker {{checker}}")
    if function not in globals() or not callable(globals()[function]):
        return write("missing", f"no function `{{function}}` was defined when the submission ran")
    try:
        result = check(globals()[function], stop=False)
    except KeyboardInterrupt:  # the grader interrupts a cell at its timeout
        return write("error", f"timeout: checking {{function}} ran past the {timeout} s per-cell timeout "
                              "(an infinite loop?)")
    except BaseException as err:  # the checker itself failed: an error, with its message
        return write("error", f"the checker raised {{type(err).__name__}}: {{err}}")
    write(result.status, result.reason)
_vg_grade()
del _vg_grade
"""


def _read_notebook(path: Path):
    import jupytext
    import nbformat

    if path.suffix == ".ipynb":
        try:
            return nbformat.reads(path.read_text(errors="replace"), as_version=4)
        except (json.JSONDecodeError, nbformat.reader.NotJSONError) as err:
            raise GradeError(f"{path.name} is not a valid notebook (not valid JSON: {err}); open it in Jupyter and "
                             "save it again, or hand in the .py file") from err
        except Exception as err:  # valid JSON that is not a notebook
            raise GradeError(f"{path.name} is not a valid notebook ({type(err).__name__}: {err})") from err
    return jupytext.read(path)


def _why_missing(notebook, before: int, function: str) -> tuple[str, str]:
    """(status, reason) for a function the executed submission does not define: "not attempted" when no cell
    defines it, else "error" with the error of the cell that does (or of the first cell that failed)."""
    defines = re.compile(rf"^\s*def\s+{re.escape(function)}\s*\(", re.MULTILINE)
    number, own, first = 0, None, ""
    for cell in notebook.cells[:before]:
        if cell.cell_type != "code":
            continue
        number += 1
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        said = f"code cell {number} raised {errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else ""
        first = first or said
        if own is None and defines.search(cell.source):
            own = said
    if own is None:
        return "not attempted", f"the submission defines no function `{function}`"
    return "error", f"`{function}` was not defined after the submission ran: {own or first or 'no cell raised'}"


def run_submission(path: Path, graded_exercises: list[Exercise], hidden_source: str = "",
                   timeout: int = CELL_TIMEOUT) -> dict[str, tuple[str, str]]:
    """Execute one submission in a fresh kernel in smoke mode and grade it: {checker: (status, reason)}.

    Never raises for a bad submission: what went wrong becomes the status and reason of what it affects.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    try:
        notebook = _read_notebook(path)
    except GradeError as err:
        return {e.checker: ("error", str(err)) for e in graded_exercises}
    submitted = len(notebook.cells)
    with tempfile.TemporaryDirectory(prefix="vnas-grade-") as work:
        outs = {e.checker: os.path.join(work, f"result-{i}.json") for i, e in enumerate(graded_exercises)}
        notebook.cells.append(nbformat.v4.new_code_cell(_PRELUDE.format(hidden=hidden_source)))
        for e in graded_exercises:
            notebook.cells.append(nbformat.v4.new_code_cell(_CALL.format(
                out=outs[e.checker], function=e.function, checker=e.checker, hidden=e.hidden, timeout=timeout)))
        client = NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran past the {timeout} s per-cell timeout",
                              "traceback": []},
            resources={"metadata": {"path": work}})
        env = {**os.environ, "VNAS_MODE": "smoke"}
        died = ""
        try:
            client.execute(env=env)
        except DeadKernelError as err:
            ran = sum(1 for c in notebook.cells if c.cell_type == "code" and c.get("execution_count"))
            died = f"the kernel died (code cell {ran + 1} or near it: {str(err).strip()[:200]})"
        except Exception as err:  # the kernel could not start, or nbclient failed: this submission only
            died = f"the submission could not be run: {type(err).__name__}: {err}"
        found = {}
        for i, e in enumerate(graded_exercises):
            cell = notebook.cells[submitted + 1 + i]
            if os.path.exists(outs[e.checker]):
                with open(outs[e.checker]) as fh:
                    result = json.load(fh)
                status, reason = result["status"], result["reason"]
                if status == "missing":  # deleted, renamed, or its cell failed
                    status, reason = _why_missing(notebook, submitted, e.function)
            elif died:
                status, reason = "error", died
            else:
                errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
                what = f"{errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else "no result"
                status, reason = "error", f"grading {e.function} failed ({what})"
            found[e.checker] = (status, reason)
    return found


# --- a whole class ---------------------------------------------------------------------------------------------


def students(submissions: Path) -> list[Path]:
    """The student folders of ``submissions``, with clear errors for a missing or empty folder."""
    submissions = Path(submissions)
    if not submissions.exists():
        raise GradeError(f"{submissions} does not exist: give the folder that holds one folder per student.")
    if not submissions.is_dir():
        raise GradeError(f"{submissions} is a file: give the folder that holds one folder per student.")
    found = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise GradeError(f"{submissions} holds no student folders: put each student's chapter files in "
                         f"{submissions}/<student>/ (e.g. {submissions}/ada/00_welcome.ipynb).")
    return found


def _chapter_files(folder: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".py", ".ipynb") and CHAPTER_FILE.match(p.stem):
            files.setdefault(p.stem, []).append(p)
    return files


def grade(submissions: Path, hidden: Path | None = None, only: list[str] | None = None,
          timeout: int = CELL_TIMEOUT, log=print, chapters_dir: Path | None = None) -> list[Row]:
    """Grade every student folder: one Row per student and exercise (plus one per file naming no chapter).

    ``chapters_dir`` holds the reference chapters (default: the course's own).
    """
    book.require_book_modules()
    folders = students(submissions)
    if hidden is not None and not Path(hidden).is_dir():
        raise GradeError(f"--hidden {hidden} is not a folder; it should hold HIDDEN/<NN_slug>.py files.")
    references = sorted(Path(chapters_dir).glob("[0-9][0-9]_*.py")) if chapters_dir else book.chapters()
    chapters = {p.stem: p for p in references}
    if hidden is not None:
        strays = [p.name for p in Path(hidden).glob("*.py") if p.stem not in chapters]
        if strays:
            raise GradeError(f"hidden checks {strays} name no chapter; name them as the chapters: {sorted(chapters)}.")
    files = {s.name: _chapter_files(s) for s in folders}
    handed_in = {c for per in files.values() for c in per if c in chapters}
    selected = [c for c in chapters if (c in handed_in if not only else any(o in c for o in only))]
    if only and not selected:
        raise GradeError(f"--only {only} matches no chapter; chapters: {sorted(chapters)}.")
    if not selected and not any(files.values()):
        raise GradeError(f"no chapter files in any student folder of {submissions}: files must be named as the "
                         f"chapters are, e.g. 00_welcome.py or 00_welcome.ipynb.")
    plan = {c: graded(chapters[c], hidden) for c in selected}
    rows: list[Row] = []
    for folder in folders:
        student, mine = folder.name, files[folder.name]
        for stem, paths in mine.items():
            if stem not in chapters:
                near = [c for c in chapters if c[:2] == stem[:2]]
                hint = f" Did you mean {near[0]}?" if near else ""
                reason = (f"{paths[0].name} names no chapter of this course (chapters: {', '.join(sorted(chapters))}); "
                          f"rename it to the chapter it answers.{hint}")
                rows.append(Row(student, stem, "", 0.0, "error", reason))
        for chapter in selected:
            todo, source = plan[chapter]
            paths = mine.get(chapter, [])
            if not paths:
                rows += [Row(student, chapter, e.name, 0.0, "not attempted",
                             f"no {chapter}.py or {chapter}.ipynb in {student}/") for e in todo]
                continue
            path = next((p for p in paths if p.suffix == ".ipynb"), paths[0])  # what JupyterLab saves
            if len(paths) > 1:
                log(f"[grade] {student}: both {chapter}.py and {chapter}.ipynb; grading the .ipynb")
            start = time.perf_counter()
            results = run_submission(path, todo, source, timeout)
            got = 0.0
            for e in todo:
                status, reason = results[e.checker]
                points = e.points if status == "passed" else 0.0
                got += points
                rows.append(Row(student, chapter, e.name, points, status, reason))
            log(f"[grade] {student}/{path.name}: {got:g} / {sum(e.points for e in todo):g} points "
                f"in {time.perf_counter() - start:.1f} s")
    return rows


def write_csv(rows: list[Row], out: Path) -> Path:
    """Write the grades; an existing file is replaced only once the new one is complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r.student, r.chapter, r.exercise, f"{r.points:g}", r.status, r.reason])
    tmp.replace(out)
    return out


def totals(rows: list[Row]) -> dict[str, float]:
    """Points per student."""
    found: dict[str, float] = {}
    for r in rows:
        found[r.student] = found.get(r.student, 0.0) + r.points
    return found


# --- nbgrader --------------------------------------------------------------------------------------------------


def _nbgrader(grade_id: str, *, solution: bool = False, points: float | None = None) -> dict:
    """nbgrader's cell metadata (schema version 3): an answer cell (solution) or a locked autograded test cell."""
    meta = {"schema_version": 3, "grade": points is not None, "solution": solution, "locked": points is not None,
            "task": False, "grade_id": grade_id}
    if points is not None:
        meta["points"] = points
    return meta


def nbgrader_notebook(chapter: Path, hidden: Path | None = None):
    """The instructor's ("source") notebook of a chapter for nbgrader: solutions kept between our markers, which
    nbgrader's ClearSolutions replaces; each answer cell marked ``solution``; each check cell a locked
    autograded test cell worth the exercise's points, with the hidden checks inside nbgrader's
    ``### BEGIN HIDDEN TESTS`` block (removed from what students get, run when nbgrader autogrades)."""
    import jupytext
    import nbformat

    chapter = Path(chapter)
    todo, source = graded(chapter, hidden)
    own = [e for e in todo if not e.hidden]
    notebook = jupytext.read(chapter)
    by_function = {e.function: e for e in own}
    tested: set[str] = set()
    pending = [source.rstrip()] if source else []  # the hidden file's definitions, in the first hidden block

    def hidden_block(function: str, extra: list[Exercise]) -> str:
        lines = pending + [f"{e.checker}({function})" for e in extra]
        pending.clear()
        return "### BEGIN HIDDEN TESTS\n" + "\n".join(lines) + "\n### END HIDDEN TESTS"

    for number, cell in enumerate(notebook.cells, 1):
        if cell.cell_type != "code":
            continue
        lines = [line.strip() for line in cell.source.splitlines()]
        calls = [(c, f) for c, f in _check_calls(_parse(cell.source)) if f in by_function]
        if book.SOLUTION_BEGIN in lines:
            if calls:
                raise GradeError(f"{chapter.name}, code cell {number}: the answer cell also calls {calls[0][0]}; "
                                 "nbgrader needs the check in its own cell after the answer.")
            defined = [n.name for n in _parse(cell.source).body if isinstance(n, ast.FunctionDef)]
            cell.metadata["nbgrader"] = _nbgrader(f"answer_{defined[0] if defined else number}", solution=True)
        elif calls:
            function = calls[0][1]
            extra = [e for e in todo if e.hidden and e.function == function]
            if extra:
                cell.source += "\n\n" + hidden_block(function, extra)
            points = by_function[function].points + sum(e.points for e in extra)
            cell.metadata["nbgrader"] = _nbgrader(f"test_{function}", points=points)
            tested.add(function)
    missing = set(by_function) - tested
    if missing:
        raise GradeError(f"{chapter.name}: no check cell for {sorted(missing)}.")
    orphans = [e for e in todo if e.hidden and e.function not in by_function]
    for function in dict.fromkeys(e.function for e in orphans):
        extra = [e for e in orphans if e.function == function]
        cell = nbformat.v4.new_code_cell(hidden_block(function, extra))
        cell.metadata["nbgrader"] = _nbgrader(f"hidden_{function}", points=sum(e.points for e in extra))
        notebook.cells.append(cell)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def write_nbgrader(out: Path, hidden: Path | None = None, only: list[str] | None = None) -> list[Path]:
    """nbgrader's course layout: ``OUT/source/<chapter>/<chapter>.ipynb`` for every chapter (or ``only``)."""
    import nbformat

    written = []
    for chapter in book.chapters():
        if only and not any(o in chapter.name for o in only):
            continue
        folder = Path(out) / "source" / chapter.stem
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{chapter.stem}.ipynb"
        nbformat.write(nbgrader_notebook(chapter, hidden), path)
        written.append(path)
    return written
