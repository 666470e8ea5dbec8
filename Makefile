# densekit: `make demo` and `make test` each create .venv when missing and install what they need.
# torch is installed first and pinned, so nothing later pulls a multi-GB CUDA build.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
SHARED_DATA := $(abspath ../shared/data/beir)
export DENSEKIT_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
PYTEST_ARGS ?=
# Test workers (pytest-xdist): 2 on this 2-core machine; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: demo test lint bench clean

$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	touch $@

$(VENV)/.base: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e ".[dev,lucene]"
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/densekit index build scifact --model all-MiniLM-L6-v2 --out runs/scifact-minilm.idx
	$(VENV)/bin/densekit eval scifact --index runs/scifact-minilm.idx --split test
	$(VENV)/bin/densekit search runs/scifact-minilm.idx "Vitamin D deficiency increases the risk of multiple sclerosis." -k 5

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check densekit tests benchmarks notebooks
	$(VENV)/bin/ruff format --check densekit tests benchmarks notebooks

# make bench: every benchmark at full size, records in benchmarks/results/ (docs/benchmarks.md);
# make bench SIZE=smoke: seconds each, tiny data; ONLY=encode,index picks some.
SIZE ?= full
ONLY ?=
bench: $(VENV)/.dev
	$(PY) benchmarks/run.py --size $(SIZE) $(if $(ONLY),--only $(ONLY),)

clean:
	rm -rf $(VENV) runs .pytest_cache
