# Every target bootstraps .venv itself: on a fresh machine `make demo` and `make test`
# are the only two commands a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
# An unpinned torch pulls a multi-GB CUDA build; install this pin first when torch is absent.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DIR ?= demo
SWEEP_DIR ?= sweep

.PHONY: setup demo test test-quick bench bench-quick bench-gpu lint sweep clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The whole pipeline on the embedded default, in about 13 minutes on 2 CPU cores (goal 10: README):
# synth -> ingest (train and val scenes) -> audit -> train -> probe gate.
DEMO_SCENES ?= 32
DEMO_FRAMES ?= 160
DEMO_WIDTH  ?= 480
DEMO_SIZE   ?= 64x112
DEMO_STEPS  ?= 1000
demo: setup
	$(BIN)/mvm-synth --out $(DEMO_DIR)/nuscenes --version v1.0-trainval \
	  --scenes $(DEMO_SCENES) --frames-per-scene $(DEMO_FRAMES) --width $(DEMO_WIDTH)
	for split in train val; do \
	  $(BIN)/mvm-ingest --dataroot $(DEMO_DIR)/nuscenes --version v1.0-trainval --scenes $$split \
	    --size $(DEMO_SIZE) --shard-clips 32 --out $(DEMO_DIR)/shards/$$split || exit 1; \
	done
	$(BIN)/mvm-audit $(DEMO_DIR)/shards/train --against $(DEMO_DIR)/shards/val
	$(BIN)/mvm-audit $(DEMO_DIR)/shards/val --against $(DEMO_DIR)/shards/train
	$(BIN)/mvm-train --shards $(DEMO_DIR)/shards/train --out $(DEMO_DIR)/run --model tiny \
	  --steps $(DEMO_STEPS) --resume auto --viz-shards $(DEMO_DIR)/shards/val
	@# The gates' verdicts are the demo's result (ego-motion, and depth when the shards carry depth
	@# targets; report.md says when depth was skipped and why): a fail (exit 3) fails the demo.
	@echo "demo outputs: $(DEMO_DIR)/{nuscenes,shards,run,probe}"
	$(BIN)/mvm-probe --checkpoint $(DEMO_DIR)/run --train-shards $(DEMO_DIR)/shards/train \
	  --val-shards $(DEMO_DIR)/shards/val --out $(DEMO_DIR)/probe || { code=$$?; \
	  [ $$code -ne 3 ] || echo "demo: every stage ran; a probe task's gate FAILED (exit 3): $(DEMO_DIR)/probe/report.md says which and why (README: the demo's result)"; \
	  exit $$code; }

test: setup
	$(BIN)/python -m pytest -q

# The subset for iterating, under a minute on 2 CPU cores: no slow or Slurm tests (CI runs `make test`).
test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

bench: setup
	$(BIN)/python -m bench.run

bench-quick: setup
	$(BIN)/python -m bench.run --quick

# The one-command GPU check (bench/gpu.py): small and base at 144x256, T=8, under 9 minutes on a
# CUDA machine; without CUDA it says so and exits 0. GPU_SHARDS=DIR uses pre-built shards.
GPU_SHARDS ?=
bench-gpu: setup
	$(BIN)/python -m bench.gpu $(if $(GPU_SHARDS),--shards $(GPU_SHARDS))

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Local scaling sweep (same plan as slurm/scaling.sh, no sbatch): about 2 h 10 min on 2 CPU cores
# (goal 90 min, missed: docs/scaling.md). The base point's gate comes first (a fail stops it, exit
# 3); SWEEP_FLAGS=--no-gate scales anyway, marked.
SWEEP_FLAGS ?=
sweep: setup
	PATH="$(abspath $(BIN)):$$PATH" bash slurm/scaling.sh --local $(SWEEP_FLAGS) $(SWEEP_DIR)

clean:
	rm -rf $(DEMO_DIR) $(SWEEP_DIR) .pytest_cache
