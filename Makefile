# Every target that needs Python builds the virtualenv first, so a fresh clone
# needs nothing but `make test` or `make serve`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint bench serve format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check runtime actors tests examples benchmarks
	$(BIN)/ruff format --check runtime actors tests examples benchmarks
	$(BIN)/mypy --strict runtime actors
	MYPYPATH=benchmarks $(BIN)/mypy --strict benchmarks/*.py
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/runtime_bench.py
	$(BIN)/python benchmarks/service_bench.py
	$(BIN)/python benchmarks/jobs_bench.py

serve: $(STAMP)
	$(BIN)/python examples/server.py

format: $(STAMP)
	$(BIN)/ruff check --fix runtime actors tests examples benchmarks
	$(BIN)/ruff format runtime actors tests examples benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
