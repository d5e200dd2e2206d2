# The README's commands. The environment is set up on first use: a .venv here, unless a virtualenv or
# conda environment is already active (then that one is used).
SHELL := /bin/bash
ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif
STAMP := $(shell $(PYTHON) -c 'import sys; print(sys.prefix)' 2>/dev/null || echo .venv)/.vnas-installed

.PHONY: env book test lint lab clean
env: $(STAMP)

# Installed without its dependencies: torchattacks pins an old `requests` that conflicts with JupyterLab, and a
# pyproject extra cannot say --no-deps. It needs scipy (a dev dependency) at import. Keep environment.yml in step.
NO_DEPS := torchattacks==3.5.1

$(STAMP): pyproject.toml Makefile
	@if [ ! -x "$(PYTHON)" ] && [ "$(PYTHON)" = ".venv/bin/python" ]; then python3 -m venv .venv; fi
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps $(NO_DEPS)
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch "$$($(PYTHON) -c 'import sys; print(sys.prefix)')/.vnas-installed"

# Execute every chapter in the current mode (VNAS_MODE, default quick) and write _build/ (notebooks + HTML).
book: env
	$(PYTHON) -m vnas book --out _build

lint: env
	$(PYTHON) -m ruff check vnas chapters tests benchmarks

# The whole suite: linter, unit tests, every chapter executed in smoke mode.
test: lint
	$(PYTHON) -m pytest

# JupyterLab with the .py chapters opening as notebooks.
lab: env
	$(PYTHON) -m pip install -e ".[dev,lab]"
	$(PYTHON) -m jupytext_config set-default-viewer
	$(PYTHON) -m jupyterlab --ServerApp.root_dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build .pytest_cache .ruff_cache
