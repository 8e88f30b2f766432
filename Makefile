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
.PHONY: help setup repro test test-fast test-gpu test-slurm lint format schema lock clean s3-up s3-down check-remote report data-diff data-update plots-page browser slurm verify gc release weights preset

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the project with its dev tools

repro: setup ## Run the whole pipeline (dvc repro) on the built-in demo data
	dvc repro

test: setup browser ## Run the whole test suite on every core
	pytest -n auto

test-slurm: setup slurm ## Run the SLURM recipe under a real local SLURM (installs Debian's where missing)
	pytest tests/test_slurm.py

test-fast: setup ## Run all but the slow tests (DVC runs, S3 flows, end-to-end training) on every core
	pytest -m "not slow" -n auto

test-gpu: setup ## Run the GPU suite on this machine's CUDA or MPS device (fails without one)
	MLPIPELINE_GPU_REQUIRED=1 pytest -m gpu

lint: setup ## Check lint and formatting with ruff
	ruff check src tests bench
	ruff format --check src tests bench

format: setup ## Apply ruff's fixes and formatting
	ruff check --fix src tests bench
	ruff format src tests bench

# Variables a user types (BASE, IMAGES_URL, KEEP, VERSION, ARTIFACT, MODEL, NAME, PRESET) reach the
# programs through the environment, as the exact text typed ($(value): unexpanded), never through a
# shell's quoting: the programs read MLPIPELINE_<NAME> and check it, so `VERSION='1.0.0;echo x'` is one bad
# version. Not exported under their own names: make would expand them on the way (a `$(shell ...)`).
unexport BASE IMAGES_URL KEEP VERSION ARTIFACT MODEL NAME PRESET

# BASE: any git revision; IMAGES_URL: where a PR comment finds the PNGs (default: beside report.md).
BASE ?= main
IMAGES_URL ?=

report: export MLPIPELINE_BASE = $(value BASE)
report: export MLPIPELINE_IMAGES_URL = $(value IMAGES_URL)
report: setup ## Compare BASE (default main) with the workspace: reports/compare/report.md + PNGs
	python -m mlpipeline.compare.report

data-diff: export MLPIPELINE_BASE = $(value BASE)
data-diff: setup ## What changed in the data since BASE (default main): added, removed, relabelled, moved
	python -m mlpipeline.compare.data_diff

# The weekly flow (docs/growing.md): new images in the source, then the next version is built on
# the one dvc.lock records, so only what changed is decoded, stored and pushed.
data-update: setup ## Set ingest.base to the data version dvc.lock records, then dvc repro
	python -m mlpipeline.devtools.data_update
	dvc repro

# The page `dvc plots show` fills (.dvc/config: plots.html_template), with the Vega scripts inside
# it so plots draw offline; committed, rebuilt from the npm versions vendor/vega pins.
PLOTS_PAGE := .dvc/plots-offline.html

plots-page: setup ## Rebuild the offline plots page from the Vega packages pinned in vendor/vega (npm)
	cd vendor/vega && npm ci --ignore-scripts --no-audit --no-fund
	python -m mlpipeline.devtools.plots_page vendor/vega/node_modules $(PLOTS_PAGE)

# Debian's Chromium, for the test that draws the plots page in a real browser: installed where
# missing when run as root with apt-get (CI); elsewhere that test is skipped with a note.
browser: ## Install Debian's chromium for the browser test, where missing
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		|| echo "make: no chromium here: the plots page browser test will be skipped"

# Debian's SLURM (slurmctld, slurmd), for the test that runs recipes/slurm under a real SLURM on
# this host (python -m mlpipeline.devtools.slurm_local): installed where missing, as root with apt.
slurm: ## Install Debian's slurm-wlm for the SLURM recipe's test, where missing
	@command -v slurmd >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		slurmctld slurmd slurm-client >/dev/null; } \
		|| echo "make: no SLURM here: the SLURM recipe's test will be skipped"

# A recipe's params (presets/<PRESET>.yaml, e.g. photos-small) written into params.yaml in place.
preset: export MLPIPELINE_PRESET = $(value PRESET)
preset: setup ## Write a params preset into params.yaml: PRESET=photos-small or photos-finetune (presets/)
	python -m mlpipeline.devtools.preset

schema: setup ## Regenerate params.schema.json from the params classes (then commit it)
	python -m mlpipeline.devtools.params_schema

# A local S3 server (rclone) for trying push/pull with no cloud account. S3_PORT=0: a free port.
S3_DIR ?= .cache/s3
S3_PORT ?= 0

s3-up: setup ## Start a local S3 server (objects kept in .cache/s3) and point the DVC remote at it
	python -m mlpipeline.devtools.s3server up --dir $(S3_DIR) --port $(S3_PORT)

s3-down: setup ## Stop the local S3 server and drop its endpoint from .dvc/config.local
	python -m mlpipeline.devtools.s3server down --dir $(S3_DIR)

check-remote: setup ## Tell in one line whether the DVC remote is reachable and writable
	python -m mlpipeline.cache.remote_check

verify: setup ## Rehash the workspace outputs and the DVC cache against dvc.lock; one line per mismatch
	python -m mlpipeline.cache.verify

# Cache hygiene: a dry run unless CONFIRM=1; CLOUD=1 cleans the DVC remote too. KEEP: dvc gc's scope
# flags (default -w -a -T --all-experiments: workspace, branch tips, tags, experiments).
gc: export MLPIPELINE_KEEP = $(value KEEP)
gc: setup ## List what `dvc gc` would remove and why (CONFIRM=1 removes it, CLOUD=1 the remote too)
	python -m mlpipeline.cache.gc $(if $(filter 1,$(CONFIRM)),--confirm) $(if $(filter 1,$(CLOUD)),--cloud)

# A pretrained checkpoint as DVC-tracked data (needs internet once; stages never download).
weights: export MLPIPELINE_MODEL = $(value MODEL)
weights: export MLPIPELINE_NAME = $(value NAME)
weights: setup ## Fetch MODEL=microsoft/resnet-50 from the Hugging Face hub into data/weights/NAME and dvc add it
	python -m mlpipeline.devtools.fetch_weights

# A model version: a GTO git tag ARTIFACT@vVERSION on the commit of its model card (cards/ARTIFACT/README.md),
# made once the model and its ONNX file are pushed.
ARTIFACT ?= image-classifier

release: export MLPIPELINE_VERSION = $(value VERSION)
release: export MLPIPELINE_ARTIFACT = $(value ARTIFACT)
release: setup ## Release VERSION=1.2.0: push the model and its ONNX file, commit the model card, tag it (GTO)
	python -m mlpipeline.versions.release

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
