# The README's commands. The environment is set up on first use: a .venv here, unless a virtualenv or
# conda environment is already active (then that one is used).
SHELL := /bin/bash
ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif
STAMP := $(shell $(PYTHON) -c 'import sys; print(sys.prefix)' 2>/dev/null || echo .venv)/.vnas-installed

.PHONY: env browser book test lint lab clean
env: $(STAMP) browser

# Installed without its dependencies: torchattacks pins an old `requests` that conflicts with JupyterLab, and a
# pyproject extra cannot say --no-deps. It needs scipy (a dev dependency) at import. Keep environment.yml in step.
NO_DEPS := torchattacks==3.5.1

$(STAMP): pyproject.toml Makefile
	@if [ ! -x "$(PYTHON)" ] && [ "$(PYTHON)" = ".venv/bin/python" ]; then python3 -m venv .venv; fi
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev,lab]"
	$(PYTHON) -m pip install --no-deps $(NO_DEPS)
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch "$$($(PYTHON) -c 'import sys; print(sys.prefix)')/.vnas-installed"

# The browser tests (tests/test_site.py, tests/test_lab.py) drive Debian's Chromium through Playwright, whose own
# browser download cannot work offline. Installed when missing and we may (root, apt-get); otherwise they are
# skipped, except on CI (CI=true), where a missing browser fails them.
CHROMIUM_PKGS := chromium chromium-driver
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "[env] installing Debian's $(CHROMIUM_PKGS) for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends $(CHROMIUM_PKGS) >/dev/null || \
	  echo "*** apt-get could not install $(CHROMIUM_PKGS): the browser tests will be skipped (fail on CI) ***"; \
	else \
	  echo "*** No /usr/bin/chromium: the browser tests (tests/test_site.py, tests/test_lab.py) will be SKIPPED."; \
	  echo "*** To run them: sudo apt-get install -y --no-install-recommends $(CHROMIUM_PKGS)  (Debian/Ubuntu)"; \
	fi

# Execute every chapter in the current mode (VNAS_MODE, default quick), reusing the notebooks saved in
# _build/notebooks/ that ran in this mode from the same source, and write the offline HTML site (_build/index.html).
book: env
	$(PYTHON) -m vnas book --out _build

lint: env
	$(PYTHON) -m ruff check vnas chapters tests benchmarks

# The whole suite: linter, unit tests, every chapter executed in smoke mode, the HTML book and JupyterLab in
# headless Chromium.
test: lint
	$(PYTHON) -m pytest

# JupyterLab with the .py chapters opening as notebooks.
lab: env
	$(PYTHON) -m jupytext_config set-default-viewer
	$(PYTHON) -m jupyterlab --ServerApp.root_dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build .pytest_cache .ruff_cache
