# `make demo` and `make test` create .venv on first use and install the package with what it needs.
# torch is pinned to the CPU wheel first, so pip never resolves a multi-GB CUDA build for the range in pyproject.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench-engine clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ee-diffusion demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

bench-engine: $(STAMP)
	$(VENV)/bin/ee-diffusion bench-engine --out bench_out

clean:
	rm -rf $(VENV) demo_out bench_out
