# Everything a fresh clone needs: `make test` builds .venv, installs fusioncam with its test extras, runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch by default; a GPU user keeps theirs with `make install TORCH_SPEC=` (skip) or any pip spec.
TORCH_SPEC ?= torch==2.13.0
IMG ?=
TEXT ?=
ARGS ?=

.PHONY: install browser test lint typecheck demo bench clean synth-models

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

# tests/test_report.py renders the gallery in headless Chromium: installed here when missing and apt can (root);
# elsewhere the test says how to get it. FUSIONCAM_CHROMIUM names another Chrome/Chromium binary.
browser:
	@if [ -z "$$FUSIONCAM_CHROMIUM" ] && ! command -v chromium chromium-browser google-chrome >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium for the gallery test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
		else echo "tests/test_report.py needs Chromium: sudo apt-get install -y chromium (or set FUSIONCAM_CHROMIUM)"; fi; \
	fi

test: install browser
	$(BIN)/ruff check fusioncam tests benchmarks
	$(BIN)/ruff format --check fusioncam tests benchmarks
	@$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check fusioncam tests benchmarks
	$(BIN)/ruff format --check fusioncam tests benchmarks

# mypy over fusioncam/, configured in pyproject.toml ([tool.mypy]); its cache (.mypy_cache) makes reruns take seconds.
typecheck: install
	$(BIN)/mypy

# The first thing to try: the example photo explained by the default model (fetched on first use) or, offline, the
# built-in toy models on a generated scene; `make demo IMG=photo.jpg TEXT="a dog"` for your own picture.
demo: install
	$(BIN)/fusioncam demo --out demo-out $(if $(IMG),--image "$(IMG)" $(if $(TEXT),--text "$(TEXT)"))

# Timings on random-weight models at real size, never part of `make test`: fusioncam at each precision against the
# LAVIS way and EfficientSAM's explicit attention, PNP-VQA by stage, and the CLI as users run it. The table goes to
# stdout, a JSON record per measurement to bench-results/ (--out). `make bench ARGS=--quick` takes about a minute on
# a 2-core CPU; ARGS="--only heatmap cli --device cuda" and the rest: .venv/bin/python -m benchmarks.suite --help.
bench: install
	$(BIN)/python -m benchmarks.suite $(ARGS)

# The built-in toy models behind the synth-* presets (fusioncam/data/synth): trained from random weights on synthetic
# scenes with fixed seeds on one CPU thread, in a few minutes. Prints the weights.toml section that declares them and
# says whether weights.toml's digests still match; commit the files and that section together.
synth-models: install
	$(BIN)/python -m fusioncam.synth_models --out fusioncam/data/synth --seed 0

clean:
	rm -rf $(VENV) demo-out .pytest_cache
