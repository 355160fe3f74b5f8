# mpidcr — developer targets.  `make test` and `make demo` set up the environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mpidcr-setup-done
NP ?= 2

.PHONY: setup test test-fast test-slurm check lint docs demo bench clean help

help:
	@echo "make setup   - system MPI + parallel HDF5, .venv, mpi4py wheel, parallel h5py, mpidcr"
	@echo "make test    - set up if needed, then the whole test suite (MPI tests included)"
	@echo "make demo    - set up if needed, simulate a field, build its DCR model on $(NP) ranks, quicklooks"
	@echo "make test-slurm - start a local Slurm (root), submit the jobs/ templates, stop it"
	@echo "make check   - ruff and mypy (run by make test first)"
	@echo "make lint    - make check, and ruff format --check"
	@echo "make docs    - regenerate docs/config.md and the tutorial's figures, build the site (docs/_build/html)"
	@echo "make bench   - benchmarks (not part of the tests)"

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP) check
	$(PY) -m pytest -q tests

# static checks, run before the tests: ruff, and mypy on everything but the numba kernels
check: $(STAMP)
	$(VENV)/bin/ruff check mpidcr tests benchmarks examples
	$(VENV)/bin/mypy

# starts a local one-node Slurm (root, Debian), submits every jobs/ template, stops exactly those daemons
test-slurm: $(STAMP)
	bash scripts/local_slurm.sh start
	$(PY) -m pytest -q -m slurm tests/test_slurm.py; rc=$$?; bash scripts/local_slurm.sh stop; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not mpi and not slow" tests

lint: check
	$(VENV)/bin/ruff format --check mpidcr || true

# the configuration reference, the tutorial's figures, then the site (offline; warnings are errors)
docs: $(STAMP)
	$(PY) scripts/make_config_doc.py
	$(PY) examples/tutorial.py build/tutorial
	mkdir -p docs/_static/tutorial && cp build/tutorial/figures/*.png docs/_static/tutorial/
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

demo: $(STAMP)
	NP=$(NP) bash scripts/demo.sh

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info demo-output .pytest_cache
