"""Every chapter executes top to bottom in smoke mode, in a fresh kernel, one at a time."""

import nbformat
import pytest

from vnas import book


@pytest.mark.slow
@pytest.mark.parametrize("path", book.chapters(), ids=lambda p: p.stem)
def test_chapter_executes_in_smoke_mode(path, smoke_chapters):
    run = smoke_chapters(path)  # executed once per session; tests/test_site.py renders the same notebooks
    assert run.ok, run.error
    meta = run.notebook.metadata["vnas"]
    assert meta["mode"] == "smoke" and meta["source_sha256"] == book.source_sha256(path), meta
    outputs = "".join(o.get("text", "") for c in run.notebook.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "mode: smoke" in outputs, f"{path.name} must print vnas.banner() in its first code cell"


def test_chapters_are_numbered_and_present():
    names = [p.stem for p in book.chapters()]
    assert names and names[0] == "00_welcome"
    assert len({n[:2] for n in names}) == len(names), f"two chapters share a number: {names}"


def test_failing_chapter_is_named_with_its_cell(tmp_path):
    bad = tmp_path / "99_broken.py"
    bad.write_text("# %%\nx = 1\n\n# %%\nraise ValueError('boom in cell two')\n")
    with pytest.raises(book.ChapterError, match=r"99_broken.py: code cell 2 raised ValueError: boom in cell two"):
        book.execute(bad, timeout=60)


def test_error_inside_widget_callback_is_caught():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {book.WIDGET_STATE: {"state": {"abc": {"state": {"outputs": [
        {"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": []}]}}}}}
    with pytest.raises(book.ChapterError, match="ipywidgets callback raised.*ZeroDivisionError"):
        book.check_outputs(nb, "demo.py")
    nb.metadata["widgets"][book.WIDGET_STATE]["state"]["abc"]["state"]["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": "fine"}]
    book.check_outputs(nb, "demo.py")


def test_strip_solutions_keeps_the_rest():
    text = "a = 1\n\ndef f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n\ncheck(f)\n"
    stripped = book.strip_solutions(text)
    assert "return 2 * x" not in stripped and "    raise NotImplementedError\n" in stripped
    assert stripped.startswith("a = 1\n") and stripped.endswith("check(f)\n")
    with pytest.raises(ValueError, match="never closed"):
        book.strip_solutions("### BEGIN SOLUTION\nx = 1\n")
    with pytest.raises(ValueError, match="without a"):
        book.strip_solutions("x = 1\n### END SOLUTION\n")


def test_every_chapter_exercise_is_checked_when_stripped(tmp_path):
    """Each stripped chapter still parses, and each stub makes its checker say 'not written yet'."""
    import ast
    import math

    import numpy as np
    import torch

    import vnas.checks
    import vnas.posteriors
    import vnas.spaces

    for path in book.chapters():
        stripped = book.strip_solutions(path.read_text())
        ast.parse(stripped)
        if book.SOLUTION_BEGIN not in path.read_text():
            continue
        tree = ast.parse(stripped)
        stubs = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and any(isinstance(s, ast.Raise) for s in n.body)]
        assert stubs, f"{path.name}: solutions but no stub functions after stripping"
        for stub in stubs:
            namespace = {"np": np, "torch": torch, "math": math, "spaces": vnas.spaces, "posteriors": vnas.posteriors}
            exec(compile(ast.Module([stub], []), path.name, "exec"), namespace)
            checks = [c.func.attr for c in ast.walk(tree) if isinstance(c, ast.Call)
                      and isinstance(c.func, ast.Attribute) and c.func.attr.startswith("check_")
                      and any(isinstance(a, ast.Name) and a.id == stub.name for a in c.args)]
            assert checks, f"{path.name}: exercise {stub.name} has no vnas.checks call"
            with pytest.raises(vnas.checks.ExerciseError, match="not written yet"):
                getattr(vnas.checks, checks[0])(namespace[stub.name])


def _pointers():
    """Every "Introduced in chapters/NN_slug.py[, ... Eq. (k) ...]" of the library, whitespace folded."""
    import re

    from vnas import config

    found = []
    for path in sorted((config.ROOT / "vnas").rglob("*.py")):
        text = " ".join(path.read_text().split())
        for m in re.finditer(r"Introduced in (chapters/[\w.]+?\.py)((?:[^.]|\.\s?\(|\.\d)*)", text):
            found.append((path.name, m.group(1), m.group(2)))
    return found


def test_every_library_pointer_names_a_chapter_and_an_equation_it_tags():
    import re

    from vnas import config

    pointers = _pointers()
    assert len(pointers) > 100  # the library's docstrings end with where they are taught
    problems = []
    for where, chapter, rest in pointers:
        path = config.ROOT / chapter
        if not path.is_file():
            problems.append(f"{where}: {chapter} does not exist")
            continue
        tags = set(re.findall(r"\\tag\{([\d.]+)\}", path.read_text()))
        for eq in re.findall(r"\((\d+\.\d+)\)", rest):
            if eq not in tags:
                problems.append(f"{where}: {chapter} has no \\tag{{{eq}}}")
    assert not problems, problems


def test_chapters_number_equations_only_with_tag():
    import re

    for path in book.chapters():
        display = re.findall(r"\$\$(.*?)\$\$", " ".join(path.read_text().split()))
        untagged = [d for d in display if re.search(r"\(\d+\.\d+\)\s*$", d)]
        assert not untagged, f"{path.name} numbers an equation by hand: {untagged[0][-60:]}"


def test_book_without_its_optional_dependencies_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from vnas import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nbclient" else real(name, *a))
    assert cli.main(["book", "--only", "00"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nbclient" in err and "pip install -e '.[dev]'" in err


def test_book_only_matching_nothing_is_an_error(capsys):
    from vnas import cli

    assert cli.main(["book", "--only", "no-such-chapter"]) == 2
    assert "No chapter matches ['no-such-chapter']" in capsys.readouterr().err


def test_a_saved_notebook_is_reused_only_in_its_mode_from_the_same_source(tmp_path):
    chapter = tmp_path / "00_demo.py"
    chapter.write_text("# %%\nx = 1\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["vnas"] = {"mode": "smoke", "status": "ok", "source_sha256": book.source_sha256(chapter)}
    nbformat.write(nb, tmp_path / "00_demo.ipynb")
    assert book.reusable(chapter, tmp_path, "smoke") is not None
    assert book.reusable(chapter, tmp_path, "quick") is None
    chapter.write_text("# %%\nx = 2\n")
    assert book.reusable(chapter, tmp_path, "smoke") is None
    assert book.reusable(tmp_path / "01_unsaved.py", tmp_path, "smoke") is None
