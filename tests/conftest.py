import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def smoke_mode(monkeypatch):
    """Tests run in smoke mode unless they say otherwise, and never see the user's data settings."""
    monkeypatch.setenv("VNAS_MODE", "smoke")
    for var in ("VNAS_DATA", "VNAS_DEVICE", "VNAS_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def torchattacks():
    """The kept attack library of the cross-checks: `make env` installs it (--no-deps); on CI (CI=true) a missing
    one is a failure, elsewhere a skip that says how to install it."""
    if os.environ.get("CI") == "true":
        import torchattacks

        return torchattacks
    return pytest.importorskip("torchattacks", reason="pip install --no-deps torchattacks==3.5.1 (make env does)")


_CHAPTER_TIMES: dict[str, float] = {}
PER_CELL_TIMEOUT = 300  # a stalled headless cell fails here instead of hanging CI
# Where the chapter tests save the executed notebooks: `python -m vnas book --from-saved` (or `VNAS_MODE=smoke
# make book`, which reuses them) renders the site from them without executing anything again.
SMOKE_NOTEBOOKS = Path(__file__).resolve().parents[1] / "_build" / "notebooks"


@pytest.fixture(scope="session")
def smoke_chapters():
    """``run(path) -> book.ChapterRun``: the chapter executed in smoke mode, once per session whichever test asks
    first (the chapter tests, the site's browser test), and saved into ``_build/notebooks``."""
    from vnas import book

    cache: dict[str, book.ChapterRun] = {}

    def run(path: Path):
        if path.stem not in cache:
            with pytest.MonkeyPatch.context() as mp:  # as the autouse smoke_mode fixture, for any scope
                for var in ("VNAS_DATA", "VNAS_DEVICE", "VNAS_DOWNLOAD"):
                    mp.delenv(var, raising=False)
                cache[path.stem] = book.run(path, SMOKE_NOTEBOOKS, timeout=PER_CELL_TIMEOUT,
                                            env={"VNAS_MODE": "smoke"})
            _CHAPTER_TIMES[path.stem] = cache[path.stem].seconds
        return cache[path.stem]

    return run


def pytest_terminal_summary(terminalreporter):
    if _CHAPTER_TIMES:
        terminalreporter.section("chapter wall times (smoke mode)")
        for name, seconds in sorted(_CHAPTER_TIMES.items()):
            terminalreporter.write_line(f"{name:40s} {seconds:6.1f} s")
