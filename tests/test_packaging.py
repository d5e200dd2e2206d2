"""pyproject.toml and environment.yml must agree, and the torch pair must stay pinned together."""

import re
import tomllib

from vnas import config


def _pip_lines_of_environment_yml():
    lines = (config.ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1:]:
        m = re.match(r"^\s{6,}- (.+)$", line)
        if not m:
            break
        reqs.append(m.group(1).strip())
    return reqs


def _name(req):
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((config.ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = _pip_lines_of_environment_yml()
    assert "-e .[dev,lab]" in env, "environment.yml must install the project itself with its extras"
    listed = {r for r in env if not r.startswith("-e")}
    assert listed == wanted, (f"only in pyproject: {sorted(wanted - listed)}; "
                              f"only in environment.yml: {sorted(listed - wanted)}")
    assert "python=3.11" in (config.ROOT / "environment.yml").read_text()


def test_torch_pair_is_pinned_exactly():
    deps = tomllib.loads((config.ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {_name(d): d for d in deps}
    assert pins["torch"] == "torch==2.14.1" and pins["torchvision"] == "torchvision==0.29.1"


def test_installed_torch_pair_imports():
    import torch
    import torchvision

    assert torch.__version__.startswith("2.14.1") and torchvision.__version__.startswith("0.29.1")
    assert torch.ops.torchvision.nms is not None


def test_no_deps_pin_is_the_same_in_makefile_and_environment_yml():
    # torchattacks is installed with --no-deps (its old `requests` pin breaks JupyterLab): one pin, said twice
    make = re.search(r"^NO_DEPS := (.+)$", (config.ROOT / "Makefile").read_text(), re.M)
    assert make, "the Makefile must name the packages installed with --no-deps in NO_DEPS"
    pins = make.group(1).split()
    assert any(p.startswith("torchattacks==") for p in pins)
    env = (config.ROOT / "environment.yml").read_text()
    for pin in pins:
        assert f"pip install --no-deps {pin}" in env, f"environment.yml must say how to install {pin}"
