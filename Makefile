# npimage — set-up, demo, tests, benchmarks. Every target creates what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export AIRFLOW_HOME ?= $(CURDIR)/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: venv demo test lint bench bench-full bench-scale browser clean

venv: $(STAMP)

# The venv, pinned by constraints.txt (the full set the project is tested with).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,demo]'
	touch $(STAMP)

# Build the demo catalogue, run the real Airflow DAG on it, print the summary.
demo: $(STAMP)
	mkdir -p data
	$(BIN)/npimage demo --airflow

# Headless Chromium for the report's browser test (Debian packages; needs root).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi

# ruff, and mypy (config in pyproject.toml: strict on the core, checked everywhere else).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) browser lint
	$(BIN)/pytest

# Benchmarks (docs/BENCHMARKS.md): each prints a table, the last line one JSON object.
bench: $(STAMP)
	$(BIN)/python bench/compare.py --n 1 --m 100000 --repeat 50
	$(BIN)/python bench/compare.py --n 1 --m 100000 --repeat 50 --no-fv
	$(BIN)/python bench/compare.py --n 100000 --m 100000 --no-fv
	$(BIN)/python bench/compare.py --n 100000 --m 100000
	test -f data/clients/demo/current.json || $(MAKE) demo
	$(BIN)/python bench/nightly_verify.py  # bench/compare.py's nightly, then verification
	$(BIN)/python bench/signatures.py
	$(BIN)/python bench/throughput.py --repeat 3
	$(BIN)/python bench/consolidate.py --images 20000 100000
	$(BIN)/python bench/consolidate.py --images 100000 --fresh 0.02

# Images/s against the number of Celery workers (a real Airflow cluster; docs/SCALE.md).
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py --workers 1 2 --images 400

bench-full: bench
	$(BIN)/python bench/compare.py --n 1000000 --m 1000000 --no-fv

clean:
	rm -rf data airflow_home .pytest_cache
