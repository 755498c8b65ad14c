# Everything a fresh clone needs: `make test` builds .venv, installs fusioncam with its test extras, runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch by default; a GPU user keeps theirs with `make install TORCH_SPEC=` (skip) or any pip spec.
TORCH_SPEC ?= torch==2.13.0
IMG ?=
MODEL ?= blip-itm-base
TEXT ?= two cats lying on a couch
BLOCK ?= 6

.PHONY: install test lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if [ -n "$(TORCH_SPEC)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) (override with TORCH_SPEC=...)"; \
		$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/ruff check fusioncam tests benchmarks
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check fusioncam tests benchmarks
	$(BIN)/ruff format --check fusioncam tests benchmarks

# The main job: a heatmap of an example image with the default model (weights and image fetched on first use).
demo: install
	@img="$(IMG)"; \
	if [ -z "$$img" ]; then img=$$($(BIN)/fusioncam example-image); fi; \
	$(BIN)/fusioncam heatmap "$$img" "$(TEXT)" --model $(MODEL) --block $(BLOCK) --out demo-out --per-word

clean:
	rm -rf $(VENV) demo-out .pytest_cache
