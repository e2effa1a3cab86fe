# One entry point for developers and CI: `make test` sets up .venv (CPU torch first) and runs everything.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: install up lint test test-fast bench clean

$(BIN)/jobformer: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_CPU)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/jobformer

install: $(BIN)/jobformer

# The first command on a fresh machine: the virtualenv and CPU torch that `make test` prepares, then
# `jobformer up` (it prints the dashboard's URL). Pass options with ARGS, e.g. `make up ARGS="--port 8080"`.
up: install
	$(BIN)/jobformer up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
