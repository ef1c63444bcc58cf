# modq: `make help` lists the targets.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install modq with its dev tools

dev: $(STAMP) ## run everything on embedded defaults: broker, SQLite, ingest, scorer, api, simulator
	$(BIN)/modq dev

lint: $(STAMP) ## ruff, mypy --strict on the domain core and contracts, import-linter layering
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: $(STAMP) ## lint, then every test (unit and integration on the real broker and PostgreSQL)
	$(MAKE) lint
	$(BIN)/python -m pytest

soak: $(STAMP) ## the slow soak variants the default test run leaves out
	$(BIN)/python -m pytest -m soak

bench: $(STAMP) ## drift-detector benchmark (see docs/benchmarks.md)
	$(BIN)/python bench/drift_benchmark.py

.PHONY: help install dev lint test soak bench
