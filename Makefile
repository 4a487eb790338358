# Two commands on a fresh machine (Python 3.11 or 3.12):
#   make demo   - create .venv, install, run the quickstart classification search on the embedded synthetic dataset
#   make test   - create .venv, install with the dev and jax extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-slow lint bench-data bench-quality clean

$(VENV)/bin/python:
	@echo ">> creating virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps make both targets idempotent: re-installs happen only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@echo ">> installing leukemia-sweep into $(VENV) (first time takes a few minutes)"
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	@echo ">> installing leukemia-sweep with the dev and jax extras into $(VENV)"
	$(PIP) install --quiet -e ".[dev,jax]"
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@echo ">> running the quickstart classification search on the embedded synthetic dataset"
	$(VENV)/bin/sweep run classification --preset quickstart

test: $(VENV)/.installed-dev
	@echo ">> running the test suite (slow tests skipped; 'make test-slow' runs them)"
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -m slow

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-data: $(VENV)/.installed
	$(PY) benchmarks/bench_data.py

bench-quality: $(VENV)/.installed
	$(PY) benchmarks/bench_quality.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
