"""The grader (vnas.grade) and nbgrader's metadata.

Kept cheap: the exercise functions of every chapter are gathered into one "combined" reference chapter
(their cells and the chapters' imports, no training), and each case is one student folder graded in one
kernel: the reference scores full marks, the stubs are "not attempted", the broken ones score 0 with the
reason, and the others' rows are untouched. Checkers against wrong answers, with no kernel, are in
tests/test_checks.py.
"""

import ast
import csv
import re

import pytest

from vnas import book, checks, cli, grade

COMBINED = "90_combined"


def _def_source(text: str, node: ast.FunctionDef) -> str:
    """A function's source with the ``### END SOLUTION`` comment that the syntax tree leaves out."""
    lines = text.splitlines()
    end = node.end_lineno
    for i in range(node.end_lineno, len(lines)):
        if lines[i].strip() == book.SOLUTION_END:
            end = i + 1
        if lines[i].strip():
            break
    return "\n".join(lines[node.lineno - 1:end]).rstrip()


def _combined_source() -> str:
    """Every chapter's exercises (answer cell + check cell) after every chapter's top-level imports."""
    imports, cells = {}, []
    for path in book.chapters():
        text = path.read_text()
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                imports.setdefault(ast.get_source_segment(text, node), None)
        defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for e in grade.exercises(path):
            cells.append(_def_source(text, defs[e.function]))
            cells.append(f"vnas.checks.{e.checker}({e.function})")
    header = "\n".join(["import vnas", "import vnas.checks", *imports])
    return "\n\n".join(f"# %%\n{c}\n" for c in [header, *cells])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A chapters folder holding the combined reference chapter."""
    folder = tmp_path_factory.mktemp("chapters")
    (folder / f"{COMBINED}.py").write_text(_combined_source())
    return folder


def _exercise_def(text: str, function: str) -> str:
    tree = ast.parse(text)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return _def_source(text, node)


def _student(root, name, text, suffix=".py"):
    (root / name).mkdir(parents=True)
    (root / name / f"{COMBINED}{suffix}").write_text(text)


# --- no kernel ---------------------------------------------------------------------------------------------


def test_every_chapter_exercise_has_a_checker_the_grader_can_call():
    for path in book.chapters():
        found = grade.exercises(path)
        assert found, f"{path.name} has no exercise"
        for e in found:
            assert callable(getattr(checks, e.checker, None)), f"{path.name}: {e.checker} is not in vnas.checks"
            assert e.points == 1 and not e.hidden


def test_bad_submission_folders_get_clear_errors(tmp_path):
    with pytest.raises(grade.GradeError, match="does not exist"):
        grade.students(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(grade.GradeError, match="is a file"):
        grade.students(tmp_path / "file.txt")
    with pytest.raises(grade.GradeError, match="holds no student folders"):
        grade.students(tmp_path)
    (tmp_path / "ada").mkdir()
    (tmp_path / "ada" / "notes.txt").write_text("no chapter here")
    with pytest.raises(grade.GradeError, match="no chapter files in any student folder"):
        grade.grade(tmp_path)
    with pytest.raises(grade.GradeError, match="matches no chapter"):
        grade.grade(tmp_path, only=["99_nothing"])
    assert cli.main(["grade", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.csv")]) == 2
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.parametrize("text, message", [
    ("def check_x(\n", "line 1"),
    ("from vnas.checks import checker\n@checker\ndef check_x():\n    return 'ok'\n", "takes no argument"),
    ("def check_x(split_in_two):\n    return 'ok'\n", "decorate check_x with @vnas.checks.checker"),
    ("x = 1\n", "defines no check_"),
    ("from vnas.checks import checker\nPOINTS = {'x': -1}\n@checker\ndef check_x(f):\n    return 'ok'\n", "POINTS"),
    ("from vnas.checks import checker\nPOINTS = {'nope': 2}\n@checker\ndef check_x(f):\n    return 'ok'\n",
     "does not have"),
    ("from vnas.checks import checker\n@checker\ndef check_stratified_split(f):\n    return 'ok'\n", "reuse the names"),
])
def test_malformed_hidden_checks_are_refused_before_any_kernel_starts(tmp_path, text, message):
    (tmp_path / "00_welcome.py").write_text(text)
    with pytest.raises(grade.GradeError, match=message):
        grade.graded(book.CHAPTERS_DIR / "00_welcome.py", tmp_path)


def test_hidden_checks_for_no_chapter_are_refused(tmp_path):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    (tmp_path / "subs" / "ada" / "00_welcome.py").write_text("x = 1\n")
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "00_welcom.py").write_text("x = 1\n")
    with pytest.raises(grade.GradeError, match="name no chapter"):
        grade.grade(tmp_path / "subs", tmp_path / "hidden")
    with pytest.raises(grade.GradeError, match="is not a folder"):
        grade.grade(tmp_path / "subs", tmp_path / "hidden" / "00_welcom.py")


def test_csv_has_the_columns_and_replaces_a_file_only_when_complete(tmp_path):
    out = tmp_path / "grades.csv"
    out.write_text("old grades\n")
    rows = [grade.Row("ada", "00_welcome", "stratified_split", 1.0, "passed", "fine, with a comma")]
    grade.write_csv(rows, out)
    with open(out) as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == list(grade.COLUMNS) and got[0]["reason"] == "fine, with a comma"
    assert got[0]["points"] == "1" and not (tmp_path / "grades.csv.part").exists()


# --- nbgrader ----------------------------------------------------------------------------------------------


def _nbgrader_cells(notebook):
    return [(c, c.metadata["nbgrader"]) for c in notebook.cells if "nbgrader" in c.metadata]


@pytest.mark.parametrize("path", book.chapters(), ids=lambda p: p.stem)
def test_nbgrader_metadata_has_the_structure_nbgrader_validates(path):
    """What nbgrader's schema (v3) and ClearSolutions(enforce_metadata=True) require: every cell holding a
    solution region is a solution cell; each exercise's check cell is a locked grade cell with points; the
    required keys, types and unique grade ids."""
    notebook = grade.nbgrader_notebook(path)
    ids = []
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader")
        has_solution = any(line.strip() == book.SOLUTION_BEGIN for line in cell.source.splitlines())
        assert has_solution == bool(meta and meta["solution"]), f"{path.name}: {cell.source[:80]}"
        if meta is None:
            continue
        assert meta["schema_version"] == 3
        assert {"grade", "solution", "locked", "task", "grade_id"} <= set(meta)
        assert all(isinstance(meta[k], bool) for k in ("grade", "solution", "locked", "task"))
        assert set(meta) <= {"schema_version", "grade", "solution", "locked", "task", "grade_id", "points"}
        assert meta["grade_id"] and all(ch.isalnum() or ch in "_-" for ch in meta["grade_id"])
        ids.append(meta["grade_id"])
        assert cell.cell_type == "code" and not meta["task"]
        if meta["grade"]:
            assert meta["locked"] and not meta["solution"] and meta["points"] > 0
            assert "check_" in cell.source and book.SOLUTION_BEGIN not in cell.source
        else:
            assert "points" not in meta and not meta["locked"]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate grade ids {ids}"
    graded = [m for _, m in _nbgrader_cells(notebook) if m["grade"]]
    answers = [m for _, m in _nbgrader_cells(notebook) if m["solution"]]
    assert len(graded) == len(answers) == len(grade.exercises(path))


def test_nbgrader_hidden_checks_sit_in_hidden_test_blocks_and_count(tmp_path):
    (tmp_path / "00_welcome.py").write_text(
        "from vnas.checks import checker, require\nPOINTS = {'halves_are_equal': 2}\n\n"
        "@checker\ndef check_halves_are_equal(split_in_two):\n"
        "    a, b = split_in_two(__import__('numpy').arange(10) % 2)\n"
        "    require(len(a) == len(b), 'the halves differ in size')\n    return 'equal halves'\n")
    notebook = grade.nbgrader_notebook(book.CHAPTERS_DIR / "00_welcome.py", tmp_path)
    cell, meta = next((c, m) for c, m in _nbgrader_cells(notebook) if m["grade_id"] == "test_split_in_two")
    block = cell.source.split("### BEGIN HIDDEN TESTS", 1)[1]
    assert "### END HIDDEN TESTS" in block and "check_halves_are_equal(split_in_two)" in block
    assert cell.source.index("check_stratified_split") < cell.source.index("### BEGIN HIDDEN TESTS")
    assert meta["points"] == 3  # the visible check's 1 + the hidden one's 2


def test_assignments_nbgrader_writes_the_course_layout(tmp_path, capsys):
    import nbformat

    assert cli.main(["assignments", "--nbgrader", "--out", str(tmp_path)]) == 0
    for path in book.chapters():
        written = tmp_path / "source" / path.stem / f"{path.stem}.ipynb"
        notebook = nbformat.read(written, as_version=4)
        assert any(book.SOLUTION_BEGIN in c.source for c in notebook.cells)  # nbgrader strips them, not us
    assert cli.main(["assignments", "--hidden", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "--hidden goes with --nbgrader" in capsys.readouterr().err


# --- in a kernel -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_class_is_graded_row_by_row_whatever_the_submissions_do(tmp_path, reference):
    """One grade() call over one folder per case; each case is one kernel."""
    text = (reference / f"{COMBINED}.py").read_text()
    todo = grade.exercises(reference / f"{COMBINED}.py")
    sources = {e.function: _exercise_def(text, e.function) for e in todo}
    # break exercises that no other exercise's answer calls (chapter 01's ELBO estimator calls its Gaussian KL)
    alone = [e for e in todo if not any(re.search(rf"\b{e.function}\b", src) for f, src in sources.items()
                                        if f != e.function)]
    first, second = alone[0], alone[-1]
    others = [e.name for e in todo if e not in (first, second)]
    subs = tmp_path / "subs"
    _student(subs, "reference", text)
    _student(subs, "stubs", book.strip_solutions(text))
    # a wrong answer whose own check call is deleted and whose checkers are patched to pass: still wrong
    right = _exercise_def(text, first.function)
    wrong = right.replace(f"def {first.function}(", f"def _right_{first.function}(") + (
        f"\n\ndef {first.function}(*args, **kwargs):\n    return 0\n")
    tampered = text.replace(right, wrong).replace(f"vnas.checks.{first.checker}({first.function})",
                                                  "vnas.checks.__dict__.update({k: (lambda *a, **k: None) for k in "
                                                  "dir(vnas.checks) if k.startswith('check_')})")
    _student(subs, "tampered", tampered)
    # a syntax error in the first exercise's cell; the second exercise deleted
    broken = text.replace(right, right + "\n    return (")  # an unclosed parenthesis
    broken = broken.replace(_exercise_def(text, second.function), "")
    _student(subs, "broken", broken)
    # an infinite loop in the second exercise (its own check call deleted): that row times out, the rest count
    loop = _exercise_def(text, second.function)
    head, body = loop.split(book.SOLUTION_BEGIN, 1)
    indent = head.splitlines()[-1]
    looping = text.replace(loop, f"{head}{book.SOLUTION_BEGIN}\n{indent}while True:\n{indent}    pass{body}")
    _student(subs, "looping", looping.replace(f"vnas.checks.{second.checker}({second.function})", "pass"))
    # the kernel dies in the header cell
    _student(subs, "crash", text.replace("import vnas\n", "import os\nos._exit(3)\n", 1))
    _student(subs, "not_json", '{"cells": [', suffix=".ipynb")
    _student(subs, "misnamed", text)
    (subs / "misnamed" / f"{COMBINED}.py").rename(subs / "misnamed" / f"{COMBINED}_ada.py")
    (subs / "absent").mkdir()
    (subs / "absent" / "notes.txt").write_text("no file handed in")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / f"{COMBINED}.py").write_text(
        "from vnas import config\nfrom vnas.checks import checker, require\nPOINTS = {'checker_bug': 2}\n\n"
        f"@checker\ndef check_checker_bug({first.function}):\n    raise RuntimeError('a bug in the hidden check')\n\n"
        f"@checker\ndef check_smoke_mode({first.function}):\n"
        "    require(config.mode() == 'smoke', f'graded in {config.mode()} mode')\n    return 'smoke mode'\n")

    rows = grade.grade(subs, hidden, timeout=12, chapters_dir=reference)
    out = grade.write_csv(rows, tmp_path / "grades.csv")
    by = {}
    for r in rows:
        by.setdefault(r.student, {})[r.exercise] = r
    names = [e.name for e in todo]

    assert all(by["reference"][n].status == "passed" and by["reference"][n].points == 1 for n in names)
    assert sum(r.points for r in by["reference"].values()) == len(names) + 1  # + the hidden smoke_mode
    assert all(by["stubs"][n].status == "not attempted" and "not written yet" in by["stubs"][n].reason for n in names)
    for student in ("reference", "stubs"):  # a checker that raises is an error with its message, worth 0
        bug = by[student]["checker_bug"]
        assert (bug.status, bug.points) == ("error", 0) and "RuntimeError: a bug in the hidden check" in bug.reason
        assert by[student]["smoke_mode"].status == "passed", by[student]["smoke_mode"].reason  # hidden, 1 point

    assert by["tampered"][first.name].status == "wrong" and by["tampered"][first.name].points == 0
    assert all(by["tampered"][n].status == "passed" for n in names if n != first.name)

    assert by["broken"][first.name].status == "error" and "SyntaxError" in by["broken"][first.name].reason
    assert by["broken"][second.name].status == "not attempted"
    assert f"no function `{second.function}`" in by["broken"][second.name].reason
    assert all(by["broken"][n].status == "passed" for n in others)

    assert by["looping"][second.name].status == "error" and "timeout" in by["looping"][second.name].reason
    assert all(by["looping"][n].status == "passed" for n in names if n != second.name)

    assert all(r.status == "error" and "kernel died" in r.reason for r in by["crash"].values())
    assert all(r.status == "error" and "not valid JSON" in r.reason for r in by["not_json"].values())
    assert by["misnamed"][""].status == "error" and "90_combined_ada.py names no chapter" in by["misnamed"][""].reason
    assert "Did you mean 90_combined?" in by["misnamed"][""].reason
    assert all(r.status == "not attempted" and "no 90_combined.py" in r.reason
               for n, r in by["misnamed"].items() if n)
    assert all(r.status == "not attempted" for r in by["absent"].values())
    assert all((r.points > 0) == (r.status == "passed") for r in rows)
    with open(out) as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == len(rows)


@pytest.mark.slow
def test_grade_command_on_a_real_chapter(tmp_path, capsys):
    """The command as a teacher runs it, on chapter 00 itself saved as a notebook (the stubs' "not attempted" is
    the combined test's)."""
    import jupytext

    path = book.CHAPTERS_DIR / "00_welcome.py"
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    jupytext.write(jupytext.read(path), tmp_path / "subs" / "ada" / "00_welcome.ipynb")
    assert cli.main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "grades.csv")]) == 0
    with open(tmp_path / "grades.csv") as fh:
        rows = list(csv.DictReader(fh))
    n = len(grade.exercises(path))
    assert n >= 3 and [(r["student"], r["status"], r["points"]) for r in rows] == [("ada", "passed", "1")] * n
    assert f"ada: {n} points" in capsys.readouterr().out


def test_the_readme_hidden_check_example_is_valid_and_grades(tmp_path):
    """The README's hidden-check example: accepted by the grader's validation, passes the chapter's answer and
    rejects a mixture that forgets the weights."""
    from vnas import config

    readme = (config.ROOT / "README.md").read_text()
    section = readme.split("## Teaching with vnas", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "02_darts.py").write_text(example)
    found, points, _ = grade.hidden_exercises(tmp_path, "02_darts")
    assert [(e.function, e.checker) for e in found] == [("mixed_op", "check_mixed_op_many_ops")]
    assert points == {"mixed_op_many_ops": 2}
    namespace = {}
    exec(compile(example, "README", "exec"), namespace)
    check = namespace["check_mixed_op_many_ops"]
    assert check(lambda x, ops, theta: sum(t * op(x) for t, op in zip(theta, ops, strict=True)), stop=False).passed
    result = check(lambda x, ops, theta: sum(op(x) for op in ops), stop=False)
    assert result.status == "wrong" and "average" in result.reason
