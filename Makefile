# Every target bootstraps .venv itself: on a fresh machine `make demo` and `make test`
# are the only two commands a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
# An unpinned torch pulls a multi-GB CUDA build; install this pin first when torch is absent.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DIR ?= demo
SWEEP_DIR ?= sweep

.PHONY: setup demo test bench bench-quick lint sweep clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench.run

bench-quick: setup
	$(BIN)/python -m bench.run --quick

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

sweep: setup
	PATH="$(abspath $(BIN)):$$PATH" bash slurm/scaling.sh --local $(SWEEP_DIR)

clean:
	rm -rf $(DEMO_DIR) $(SWEEP_DIR) .pytest_cache
