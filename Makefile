# The two commands: `make dev` runs the whole stack, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck pytest schema install clean dashboard chromium bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/taskrunner dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict frontend-examples/python-client/follow.py

pytest: $(STAMP) dashboard chromium
	$(BIN)/pytest

test: lint typecheck pytest

schema: $(STAMP)
	$(BIN)/taskrunner export-schema

# The benchmark suite (bench/run.py): its own embedded stack, one JSON document on stdout,
# also written under bench/results/. Scale with ARGS, e.g. make bench ARGS="-n 10000".
$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(ARGS)

# The dashboard example: `npm ci` when its lock changes, `npm run build` (GraphQL codegen
# from schema.graphql, tsc, vite) when a source or the schema changes.
DASHBOARD := frontend-examples/dashboard
DASHBOARD_DEPS := $(DASHBOARD)/node_modules/.package-lock.json
DASHBOARD_SOURCES := schema.graphql \
	$(addprefix $(DASHBOARD)/,index.html codegen.ts tsconfig.json vite.config.ts) \
	$(shell find $(DASHBOARD)/src -path '*/src/gql' -prune -o -type f -print 2>/dev/null)

$(DASHBOARD_DEPS): $(DASHBOARD)/package.json $(DASHBOARD)/package-lock.json
	cd $(DASHBOARD) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(DASHBOARD)/dist/index.html: $(DASHBOARD_DEPS) $(DASHBOARD_SOURCES)
	cd $(DASHBOARD) && npm run --silent build
	touch $@

dashboard: $(DASHBOARD)/dist/index.html

# Debian's chromium, which tests/test_dashboard.py drives headless with playwright (no
# browser download). Installed only when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
		$(APT_INSTALL) || { $(SUDO) apt-get update -qq && $(APT_INSTALL); }; \
	else \
		echo "no apt-get here: install chromium yourself, or the browser tests skip"; \
	fi

chromium: $(CHROMIUM)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage
	rm -rf $(DASHBOARD)/node_modules $(DASHBOARD)/dist $(DASHBOARD)/src/gql
