# Entry points that do all set-up from a fresh clone:
#   make lab    opens JupyterLab on a working copy of the exercises (work/), for a learner
#   make install  only sets up .venv (an instructor's set-up: then .venv/bin/qkv release, qkv grade, ...)
#   make book   builds the site into _build/html
#   make test   runs the whole test suite (it builds the site first: the browser test visits it)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Nothing is ever fetched from a model hub, and Playwright drives Debian's chromium, never its own.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: install work lab book test test-fast test-gpu system-deps release clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

# The learner's working copy: work/NAME/ for every exercise that has none yet, copied from exercises/
# (which git tracks and `qkv release` rewrites); git ignores work/, and nothing in it is ever overwritten.
work: $(STAMP)
	@$(BIN)/python -m qkv_grading.workcopy

# A learner's JupyterLab on work/: the venv's bin on PATH (so `!qkv check NAME` works in a cell, and in
# its terminal, learner/jupyter/jupyter_server_config.py), nbgrader's instructor tools turned off
# (learner/jupyter/), listening on 127.0.0.1 only. LAB_ARGS passes more options: as root (in a container,
# say) LAB_ARGS="--allow-root --no-browser"; another port, LAB_ARGS="--port=8890".
LAB_ARGS ?=
lab: work
	PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" \
	JUPYTER_CONFIG_DIR="$(CURDIR)/learner/jupyter" \
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)/work" --ServerApp.ip=127.0.0.1 $(LAB_ARGS)

# Debian packages the tests need (a real browser). Installs only what is missing.
system-deps:
	@bash .ci/system-deps.sh

# MPLBACKEND is cleared for the build: the chapter kernels must use ipykernel's inline backend, which it
# picks only when MPLBACKEND is unset (with Agg set, every figure would silently vanish from the site).
book: $(STAMP)
	env -u MPLBACKEND $(BIN)/jupyter-book build . -W -n --keep-going

# GPU tests are deselected here (CI has no GPU); `make test-gpu` runs them on a machine with CUDA.
# Two test processes (pytest-xdist), a whole file on each at a time, longest files first (tests/conftest.py):
# most of the suite waits on kernels starting and notebooks running, so two halve it on 2 cores.
# TEST_ARGS passes more options, e.g. TEST_ARGS="-n 0" for one process.
TEST_ARGS ?=
test: $(STAMP) system-deps book
	$(BIN)/python -m pytest -m "not gpu" -n 2 --dist loadfile --no-loadscope-reorder $(TEST_ARGS)

# The quick loop while writing code: no real kernels, no site.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu"

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu

release: $(STAMP)
	$(BIN)/qkv release

clean:
	rm -rf _build .jupyter_cache
