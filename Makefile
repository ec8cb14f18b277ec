# ihcflow — `make help` lists the targets. Everything runs inside .venv (created on demand).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch is installed first, alone: pip would otherwise take PyPI's CUDA build (several GB).
# TORCH_INDEX empty: pip's own configuration (this machine: the local CPU wheel). CI sets
# PyTorch's CPU index, as PyTorch documents it: TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH := torch==2.13.0
TORCH_INDEX ?=
EXTRAS := pipeline,serve,dev
# The stamp holds a hash of what the install depends on, not a time: a .venv restored from a
# CI cache is older than the fresh checkout's pyproject.toml, yet up to date.
STAMP := $(VENV)/.installed
SHA256 := $(shell command -v sha256sum || echo shasum -a 256)
INSTALL_KEY := $(firstword $(shell { cat pyproject.toml requirements.lock; echo '$(TORCH) [$(EXTRAS)]'; } | $(SHA256)))
ifneq ($(INSTALL_KEY),$(shell test -x $(BIN)/python && cat $(STAMP) 2>/dev/null))
.PHONY: $(STAMP)  # inputs changed, no stamp, or no venv: (re)install
endif
# dvc.yaml runs `python stages/...`: make sure that is the venv's python
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0

.DEFAULT_GOAL := help
.PHONY: help install lock data params repro test test-fast lint typecheck bench labelstudio clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F ':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install ihcflow with pinned dependencies (offline-safe)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[$(EXTRAS)]'
	echo '$(INSTALL_KEY)' > $@

lock: ## rewrite requirements.lock from .venv (after a dependency change in pyproject.toml)
	{ echo "# Every package of the Linux x86_64 CPU install, pinned (\`make lock\` writes it from .venv;"; \
	  echo "# tests/unit/test_lock.py checks it). torch comes from PyTorch's CPU index in CI (Makefile)."; \
	  $(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	} > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

data: install ## get data/ (DVC cache, remote, or the sample); with a remote, the outputs too
	$(BIN)/ihcflow data get

params: install ## compose params.yaml from conf/ (what `dvc exp run -S ...` does)
	$(BIN)/ihcflow params

repro: data ## run the pipeline (`dvc repro`), print the metrics and how far they are from HEAD's
	$(BIN)/dvc repro
	$(BIN)/ihcflow report metrics --against HEAD

# Two workers, a whole test file each (files share module fixtures: a trained model, a
# reproduced project); the slowest files are handed out first (tests/conftest.py).
PYTEST_PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder
test: install ## run the whole test suite (what CI runs), two files at a time
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: install ## tests without the slow ones
	$(BIN)/python -m pytest -m "not slow"

lint: install ## ruff lint + format check
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

typecheck: install ## mypy on src/ and stages/
	$(BIN)/mypy

bench: install ## run the benchmarks (figures in README)
	$(BIN)/python benchmarks/preprocess.py

# Label Studio (docs/labelling.md) gets a venv of its own: it pins numpy and opencv versions that
# clash with ours. Its whole tree is pinned in tools/labelstudio/requirements.lock; the stamp holds
# that file's hash, so a changed pin reinstalls. The labelling tests use it and skip without it.
LABEL_STUDIO := label-studio==1.23.2
LS_VENV ?= .venv-labelstudio
LS_LOCK := tools/labelstudio/requirements.lock
LS_STAMP := $(LS_VENV)/.installed
LS_KEY := $(firstword $(shell { cat $(LS_LOCK) 2>/dev/null; echo '$(LABEL_STUDIO)'; } | $(SHA256)))
ifneq ($(LS_KEY),$(shell test -x $(LS_VENV)/bin/label-studio && cat $(LS_STAMP) 2>/dev/null))
.PHONY: $(LS_STAMP)
endif

labelstudio: $(LS_STAMP) ## install Label Studio into .venv-labelstudio (~1 GB, 2-3 min; not in .venv)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c $(LS_LOCK) '$(LABEL_STUDIO)'
	echo '$(LS_KEY)' > $@

clean: ## remove pipeline outputs and caches (not data/, not .venv)
	rm -rf processed reports .cache .pytest_cache
