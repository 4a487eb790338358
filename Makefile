# Two commands on a fresh machine (Python 3.11 or 3.12):
#   make demo   - create .venv, install, run the quickstart classification search on the embedded synthetic dataset
#   make test   - create .venv, install with the dev and jax extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-slow lint bench-data bench-quality clean browser

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

# The browser tests (tests/test_serve.py) drive Debian's headless Chromium through its chromedriver. Installed with
# apt when missing (CI runs as root; elsewhere through sudo); nothing is downloaded at test time.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
	  echo ">> installing chromium and chromium-driver (apt) for the browser tests"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; }

test: $(VENV)/.installed-dev browser
	@echo ">> running the test suite (slow tests skipped; 'make test-slow' runs them)"
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup

test-slow: $(VENV)/.installed-dev browser
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
