# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to TORCH (the CPU wheel available here); a torch already
# present in the environment (say, your own CUDA build) is left alone.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint docs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pyroflows demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check pyroflows tests benchmarks examples

docs: $(STAMP)
	$(BIN)/sphinx-build -q -b html docs docs/_build/html
	@echo "docs written to docs/_build/html/index.html"

bench: $(STAMP)
	$(BIN)/python benchmarks/density_toy.py --flows iaf maf nice nsf nsf-coupling realnvp
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/destructors_toy.py
	$(BIN)/python benchmarks/mnist.py

clean:
	rm -rf $(VENV) docs/_build benchmarks/results .pytest_cache
