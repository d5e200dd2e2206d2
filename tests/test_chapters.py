"""Every chapter executes top to bottom in smoke mode, in a fresh kernel, one at a time."""

import nbformat
import pytest

from vnas import book

PER_CELL_TIMEOUT = 300  # a stalled headless cell fails here instead of hanging CI


@pytest.mark.slow
@pytest.mark.parametrize("path", book.chapters(), ids=lambda p: p.stem)
def test_chapter_executes_in_smoke_mode(path, chapter_times):
    run = book.execute(path, timeout=PER_CELL_TIMEOUT, env={"VNAS_MODE": "smoke"})
    chapter_times[path.stem] = run.seconds
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
