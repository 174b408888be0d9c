# ts2 — `make help` lists the targets. Every target installs what it needs first (idempotent).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ts2-installed
SCALE ?= tiny

.DEFAULT_GOAL := help
.PHONY: help install test test-full lint format tiny-model tiny-rm reproduce-table1 benchmarks clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "setuptools<81"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv and install ts2 with its pinned dependencies (CPU torch 2.13.0)

test: install ## Run the default test tier (what CI runs; ~10 min on 2 CPU cores)
	$(BIN)/python -m pytest

test-full: install ## Run every tier, including tests marked slow
	$(BIN)/python -m pytest -m ""

lint: install ## Ruff lint + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install ## Apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

tiny-model: install ## Build (or find in the cache) the offline tiny Llama + BPE tokenizer
	$(BIN)/python -m ts2.models.tiny

tiny-rm: install ## Train (or find in the cache) the tiny Bradley-Terry reward model
	$(BIN)/python -m ts2.models.tiny_rm

reproduce-table1: install ## Table 1 end to end: train 8 methods, sample, score, write results/ (SCALE=tiny|paper)
	SCALE=$(SCALE) PY=$(BIN)/python bash experiments/table1/run.sh

benchmarks: install ## Loss, sampling, diversity and HumanEval benchmarks (prints tables, writes CSVs)
	$(BIN)/python benchmarks/losses.py --quick
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/diversity.py --quick
	$(BIN)/python benchmarks/humaneval.py

clean: ## Remove run folders and caches inside the repo (keeps .venv)
	rm -rf runs multirun outputs .cache .pytest_cache .ruff_cache
