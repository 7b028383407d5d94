# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench chaos ui cluster chromium sandbox clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/accord demo

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser test (tests/ui) drives Debian's headless Chromium; installed when missing.
chromium:
	sh scripts/ensure-chromium.sh

unit: $(STAMP) chromium
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

chaos: $(STAMP)
	ACCORD_CHAOS=full $(BIN)/pytest -q tests/chaos

ui: $(STAMP)
	$(BIN)/python -m flows.ui

# Scale-out on this machine: Prefect server on the local PostgreSQL, two workers, a partitioned sync.
cluster: $(STAMP)
	$(BIN)/python -m flows.cluster

sandbox: $(STAMP)
	$(BIN)/accord sandbox up --size small

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
