# Two entry points: `make test` and `make demo`. Both create (or reuse) .venv and
# install what they need; the CPU build of torch 2.13.0 is installed first so the
# package's `torch` requirement is already satisfied and no CUDA wheels are pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast test-all lint bench demo paper tutorials mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Line and branch coverage of the package (pytest-cov).
COV := --cov=ssae_lens --cov-branch --cov-report=term

# Default suite (unit tests on tiny models) with its coverage, then the real-model tests
# (the coverage report after them is of both suites together), then the tutorials
# executed top to bottom (nbmake).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(COV)
	$(PY) -m pytest -q -m slow $(COV) --cov-append
	$(PY) -m pytest -q --nbmake tutorials

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(COV)

test-all: test

lint: $(STAMP)
	$(VENV)/bin/ruff check ssae_lens tests benchmarks tutorials
	$(VENV)/bin/ruff format --check ssae_lens tests benchmarks tutorials

bench: $(STAMP)
	$(PY) benchmarks/identifiability.py
	$(PY) benchmarks/train_step.py

demo: $(STAMP)
	$(PY) -m ssae_lens.demo

# Re-execute the tutorials and save their outputs in place: they are committed with their
# outputs so they read without being run (`make test` executes them without saving).
tutorials: $(STAMP)
	$(PY) -m pytest -q --nbmake --overwrite tutorials
	$(PY) tutorials/strip_metadata.py tutorials/*.ipynb

# The SSAE paper reproduction on Gemma-3-270M (benchmarks/results/paper.md, ~40 min on 2 CPUs).
paper: $(STAMP)
	$(PY) benchmarks/paper.py --config configs/paper.yaml

# Mutation testing of the core modules ([tool.mutmut] only_mutate in pyproject.toml) against the
# fast tests; not part of `make test`: it runs for hours on 2 CPUs. Results accumulate in
# mutants/ and an interrupted run resumes, but mutmut keeps earlier verdicts of unchanged code
# even when tests changed: `rm -rf mutants` first for a fresh measurement (and after moving modules).
MUTMUT_JOBS ?= 1
mutation: $(STAMP)
	nice -n 15 $(VENV)/bin/mutmut run --max-children $(MUTMUT_JOBS)
	$(PY) benchmarks/mutation_report.py

clean:
	rm -rf $(VENV) .pytest_cache .coverage mutants
