# The two commands of the contract are `make run` and `make test`; both set up first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp

TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.tools-stamp

.PHONY: setup run test lint typecheck bench clean tools

setup: $(STAMP)

# Re-install only when the package definition changes, so `make setup` is cheap to repeat.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	@touch $(STAMP)

run: setup
	$(BIN)/auditlake demo

# Azurite (the Storage emulator the adapter tests use) comes from npm, pinned in package-lock.json.
node_modules/.bin/azurite: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# checkov pins an older pycep-parser than the project's Bicep tests use: it gets a venv of its own.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): Makefile
	@test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet 'checkov==3.3.30'
	@touch $(TOOLS_STAMP)

test: setup lint tools node_modules/.bin/azurite
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check function_app auditlake tests main.py
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) $(TOOLS) node_modules .auditlake .pytest_cache .mypy_cache .ruff_cache
