# Quick start: `make demo` pretrains the debug recipe end to end; `make test` runs the test suite.
# Both set up .venv first. Override PYTHON or TORCH (e.g. TORCH='torch>=2.4' for your own CUDA build).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/bert-pretrain train --config configs/debug.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/model_step.py

clean:
	rm -rf $(VENV) runs tokenizers prepared mlartifacts mlruns mlflow.db
