# The two commands a fresh clone needs: `make repro` and `make test`.
# Both create .venv on first use; targets put .venv/bin first on PATH, so the
# stages' `python` is the venv's whether or not you activated it.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup repro test lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the project with its dev tools

repro: setup ## Run the whole pipeline (dvc repro) on the built-in demo data
	dvc repro

test: setup ## Run the whole test suite
	pytest

lint: setup ## Check lint and formatting with ruff
	ruff check src tests bench
	ruff format --check src tests bench

format: setup ## Apply ruff's fixes and formatting
	ruff check --fix src tests bench
	ruff format src tests bench

clean: ## Remove the virtualenv and caches (not data or DVC's cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache
