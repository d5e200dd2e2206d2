import os

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


@pytest.fixture
def chapter_times():
    return _CHAPTER_TIMES


def pytest_terminal_summary(terminalreporter):
    if _CHAPTER_TIMES:
        terminalreporter.section("chapter wall times (smoke mode)")
        for name, seconds in sorted(_CHAPTER_TIMES.items()):
            terminalreporter.write_line(f"{name:40s} {seconds:6.1f} s")
