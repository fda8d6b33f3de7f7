# Plain entry points: `make demo` trains and evaluates the demo model, `make test` runs the tests.
# Both create .venv and install the project on first use (torch from the local wheel store).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint completions

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check sparseinst_cli tests benchmarks

# Regenerate the shell completion scripts, each by its shell's generator (tests/test_cli.py checks).
completions: install
	$(BIN)/python -m sparseinst_cli.cli.completion completions

# The demo (11-13 minutes on 2 CPU cores, install included): generate the demo dataset
# (datasets/demo), train models/demo.yaml on it for DEMO_MINUTES of training, evaluate it on the
# val split (AP table printed, kept in runs/train/demo/metrics.jsonl), then draw its predictions
# on a few val images into runs/train/demo/predict.
DEMO_MINUTES ?= 10
.PHONY: demo
demo: install
	$(BIN)/sparseinst train --config demo --data demo \
		--time $(DEMO_MINUTES) --name demo --exist-ok
	$(BIN)/sparseinst predict datasets/demo/images/val/00000[1-6].jpg \
		--weights runs/train/demo/best.pth --out runs/train/demo/predict
