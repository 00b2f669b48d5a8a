# Every target that needs Python builds the virtualenv first, so a fresh clone
# needs nothing but `make test` or `make serve`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test deps lint bench soak serve format clean

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

# The multi-process tests (tests/cluster) start their own redis-server and nginx.
# Debian's packages are installed when either is missing (apt-get update only then).
# With CI=true one still missing is an error; elsewhere a warning, and those tests fail.
SERVER_PACKAGES := redis-server nginx

deps:
	@export PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	for program in $(SERVER_PACKAGES); do \
		command -v $$program >/dev/null || missing="$$missing $$program"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo="$$(command -v sudo || echo none)"; \
	if [ "$$sudo" != none ]; then \
		echo "installing$$missing"; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		&& $$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	for program in $$missing; do \
		command -v $$program >/dev/null && continue; \
		[ "$$CI" = true ] && { echo "error: $$program is missing" >&2; exit 1; }; \
		echo "warning: $$program is missing: the tests in tests/cluster will fail" >&2; \
	done; true

test: $(STAMP) deps lint
	$(BIN)/pytest

bench: $(STAMP) deps
	$(BIN)/python benchmarks/runtime_bench.py
	$(BIN)/python benchmarks/service_bench.py
	$(BIN)/python benchmarks/jobs_bench.py
	$(BIN)/python benchmarks/resume_bench.py

# The reliability tests (tests/reliability) at their large sizes, then the table of
# what each injected, how often, and what was lost. `make test` runs them small.
soak: $(STAMP) deps
	TROUPE_SOAK=1 $(BIN)/pytest tests/reliability -o timeout=1800

serve: $(STAMP)
	$(BIN)/python examples/server.py

format: $(STAMP)
	$(BIN)/ruff check --fix runtime actors tests examples benchmarks
	$(BIN)/ruff format runtime actors tests examples benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
