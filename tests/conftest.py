import pytest


@pytest.fixture(autouse=True)
def smoke_mode(monkeypatch):
    """Tests run in smoke mode unless they say otherwise, and never see the user's data settings."""
    monkeypatch.setenv("VNAS_MODE", "smoke")
    for var in ("VNAS_DATA", "VNAS_DEVICE", "VNAS_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)


_CHAPTER_TIMES: dict[str, float] = {}


@pytest.fixture
def chapter_times():
    return _CHAPTER_TIMES


def pytest_terminal_summary(terminalreporter):
    if _CHAPTER_TIMES:
        terminalreporter.section("chapter wall times (smoke mode)")
        for name, seconds in sorted(_CHAPTER_TIMES.items()):
            terminalreporter.write_line(f"{name:40s} {seconds:6.1f} s")
