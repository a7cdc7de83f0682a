# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to TORCH (the CPU wheel available here); a torch already
# present in the environment (say, your own CUDA build) is left alone.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format docs bench clean

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

# Lint: ruff's rules, ruff's formatting (checked, not applied) and the import layers of
# pyproject.toml's [tool.importlinter]. `make format` applies the formatting and ruff's fixes.
LINT_PATHS := pyroflows tests benchmarks examples

lint: $(STAMP)  # all three run, and it fails if any does
	status=0; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	$(BIN)/lint-imports --no-logo || status=1; \
	exit $$status

format: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

docs: $(STAMP)
	$(BIN)/sphinx-build -q -b html docs docs/_build/html
	@echo "docs written to docs/_build/html/index.html"

bench: $(STAMP)
	$(BIN)/python benchmarks/density_toy.py --flows iaf maf nice nsf nsf-coupling realnvp
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/destructors_toy.py
	$(BIN)/python benchmarks/mnist.py

clean:
	rm -rf $(VENV) docs/_build benchmarks/results .pytest_cache .ruff_cache .import_linter_cache
