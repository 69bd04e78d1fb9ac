# dlrun: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# test processes (pytest-xdist): one per core; WORKERS=0 runs the tests in one process
WORKERS ?= auto

.PHONY: help install train test test-slow test-gpu recipes bench lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install dlrun with its dev extras (editable)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
		| { grep -v '^WARNING: Location' || true; }
	@# an older .venv may hold hydra-optuna-sweeper, which no longer imports beside Optuna 4+
	$(BIN)/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	touch $(STAMP)

train: install ## Train the default experiment (extra overrides: make train ARGS="model=lenet5")
	$(BIN)/dlrun $(ARGS)

test: install ## Run the fast test suite (CPU, a few minutes; one process per core)
	$(BIN)/python -m pytest -n $(WORKERS) $(ARGS)

test-slow: install ## Run the slow tests too
	$(BIN)/python -m pytest -n $(WORKERS) -m "slow or not slow" $(ARGS)

test-gpu: install ## Run the tests that need a CUDA device (they skip without one)
	$(BIN)/python -m pytest -m gpu $(ARGS)

recipes: install ## Run every recipe in full and check its expected result (minutes)
	$(BIN)/python -m dlrun.recipes $(ARGS)

bench: install ## Benchmark dlrun's loop against a hand-written one (ARGS="--scale 0.25" for a quick one)
	$(BIN)/python -m dlrun.bench $(ARGS)

lint: install ## Lint with ruff
	$(BIN)/ruff check dlrun tests
	$(BIN)/ruff format --check dlrun tests

format: install ## Format the code with ruff
	$(BIN)/ruff check --fix dlrun tests
	$(BIN)/ruff format dlrun tests

clean: ## Remove build files, caches and run folders (outputs/ keeps its .gitignore)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
	find outputs -mindepth 1 -not -name .gitignore -prune -exec rm -rf {} +
