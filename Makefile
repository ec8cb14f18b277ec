# ihcflow — `make help` lists the targets. Everything runs inside .venv (created on demand).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# dvc.yaml runs `python stages/...`: make sure that is the venv's python
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0

.DEFAULT_GOAL := help
.PHONY: help install data params repro test test-fast lint typecheck bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F ':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install ihcflow with pinned dependencies (offline-safe)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[pipeline,serve,dev]'
	touch $@

data: install ## get data/ (DVC cache, remote, or the sample); with a remote, the outputs too
	$(BIN)/ihcflow data get

params: install ## compose params.yaml from conf/ (what `dvc exp run -S ...` does)
	$(BIN)/ihcflow params

repro: data ## run the pipeline (`dvc repro`) and print the metrics
	$(BIN)/dvc repro
	$(BIN)/ihcflow report metrics

test: install ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest

test-fast: install ## tests without the slow ones
	$(BIN)/python -m pytest -m "not slow"

lint: install ## ruff lint + format check
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

typecheck: install ## mypy on src/ and stages/
	$(BIN)/mypy

bench: install ## run the benchmarks (figures in README)
	$(BIN)/python benchmarks/preprocess.py

clean: ## remove pipeline outputs and caches (not data/, not .venv)
	rm -rf processed reports .cache .pytest_cache
