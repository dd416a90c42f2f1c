# `make demo` and `make test` create .venv on first use and install the package with what it needs.
# torch is pinned to the CPU wheel first, so pip never resolves a multi-GB CUDA build for the range in pyproject.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test test-fast bench-engine clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ee-diffusion demo --out demo_out

# The package's tests and bench/'s (the benchmarks on our own models, with their own requirements), on two
# worker processes (pytest-xdist), each test file on one of them, each on one intra-op thread: the tiny models
# leave a second thread idle, so two files at a time use both cores of a 2-core machine.
XDIST := -n 2 --dist loadfile
test: $(STAMP) $(BENCH_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(XDIST)

# Everything but the tests marked slow (multi-process, SIGKILL, command-line end to end): under 2 minutes.
test-fast: $(STAMP) $(BENCH_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(XDIST) -m "not slow"

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench-engine: $(STAMP) $(BENCH_STAMP)
	$(PY) -m bench bench-engine --out bench_out

clean:
	rm -rf $(VENV) demo_out bench_out
