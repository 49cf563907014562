# caltars_bayes — two commands for a newcomer: `make demo` and `make test`.
# Both create .venv from the Python named in .python-version when it is missing
# or stale (pyproject.toml newer than the last install), then run.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYVER := $(shell cat .python-version 2>/dev/null || echo 3.12)
EXTRAS ?= io,jax,dask,dev

.PHONY: venv demo test test-fast test-long lint bench clean

# Find a Python >= 3.12: pyenv's pick for .python-version, then python$(PYVER), then python3.
BASE_PY := $(shell for c in "$$(pyenv which python 2>/dev/null)" python$(PYVER) python3.13 python3.12 python3; do \
	  [ -n "$$c" ] || continue; p=$$(command -v "$$c" 2>/dev/null) || continue; \
	  "$$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null && { echo "$$p"; break; }; \
	done)

$(STAMP): pyproject.toml .python-version
	@if [ -z "$(BASE_PY)" ]; then echo "error: no Python >= 3.12 found (install Python $(PYVER), e.g. 'pyenv install $(PYVER)')" >&2; exit 1; fi
	@if [ -x $(PY) ] && ! $(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then \
	  echo "removing stale $(VENV) (Python < 3.12)"; rm -rf $(VENV); fi
	@[ -x $(PY) ] || { echo "creating $(VENV) with $(BASE_PY)"; $(BASE_PY) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/caltars-bayes demo --out demo_output --force

# CI (.ci/run) runs this: ruff, mypy, the layers contract (lint-imports), and every
# test except the `long` ones (multi-trial studies, the slowest single-fit
# proofs and the numpyro/blackjax sampler paths, run by `make test-long`), on two
# workers (model compilation is single-threaded, so two test files at a time keep
# both cores busy), one worker per test file so module fixtures are fitted once.
test: $(STAMP)
	$(VENV)/bin/ruff check caltars_bayes tests benchmarks
	$(VENV)/bin/mypy caltars_bayes
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not long" -n 2 --dist loadfile --durations=25

test-long: $(STAMP)
	$(PY) -m pytest -q -m long

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check caltars_bayes tests benchmarks
	$(VENV)/bin/mypy caltars_bayes
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/run.py --out benchmarks/results.md

clean:
	rm -rf $(VENV) demo_output .pytest_cache
