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
.PHONY: help setup repro test test-gpu lint format lock clean s3-up s3-down check-remote

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the project with its dev tools

repro: setup ## Run the whole pipeline (dvc repro) on the built-in demo data
	dvc repro

test: setup ## Run the whole test suite
	pytest

test-gpu: setup ## Run the GPU suite on this machine's CUDA or MPS device (skipped without one)
	pytest -m gpu

lint: setup ## Check lint and formatting with ruff
	ruff check src tests bench
	ruff format --check src tests bench

format: setup ## Apply ruff's fixes and formatting
	ruff check --fix src tests bench
	ruff format src tests bench

# A local S3 server (rclone) for trying push/pull with no cloud account. S3_PORT=0: a free port.
S3_DIR ?= .cache/s3
S3_PORT ?= 0

s3-up: setup ## Start a local S3 server (objects kept in .cache/s3) and point the DVC remote at it
	python -m mlpipeline.devtools.s3server up --dir $(S3_DIR) --port $(S3_PORT)

s3-down: setup ## Stop the local S3 server and drop its endpoint from .dvc/config.local
	python -m mlpipeline.devtools.s3server down --dir $(S3_DIR)

check-remote: setup ## Tell in one line whether the DVC remote is reachable and writable
	python -m mlpipeline.remote_check

# Resolved in a fresh venv with no constraints, so the file holds what pyproject.toml alone
# takes today; its header comment is kept. Then `make setup` installs the new versions.
LOCK_VENV := .cache/lock-venv

lock: ## Re-resolve the newest versions pyproject.toml allows into constraints.txt
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ grep '^#' constraints.txt; $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^torch=='; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

clean: ## Remove the virtualenv and caches (not data or DVC's cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache
