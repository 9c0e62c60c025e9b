# Set-up and the two Quickstart commands: `make demo` (train the default dino model) and `make test`.
# torch==2.13.0 is installed first so that pip never pulls another (CUDA) torch build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench notebooks lab docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is needed"'
	$(PYTHON) -m venv $(VENV)
	@echo "== installing into $(VENV): pip, torch==2.13.0 (CPU), ddpmkit[test] =="
	$(BIN)/pip install --progress-bar on --upgrade pip
	$(BIN)/pip install --progress-bar on torch==2.13.0
	$(BIN)/pip install --progress-bar on -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/ddpm train --out runs/dino --overwrite

# the browser test of `ddpm playground` needs Chromium: installed here when apt and root allow
test: $(BIN)/.installed
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "note: no chromium/chromedriver: the playground's browser test will be skipped"
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_speed.py

# the tutorials in full mode (each <= 10 min on 2 cores); the executed copies go to docs/notebooks/
notebooks: $(BIN)/.installed
	$(BIN)/python benchmarks/run_notebooks.py

lab: $(BIN)/.installed
	$(BIN)/pip install --progress-bar on -c constraints.txt -e '.[notebooks]'
	cd notebooks && ../$(BIN)/jupyter lab

# the documentation site, warnings as errors, into site/ (open site/index.html)
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs notebooks/runs site .pytest_cache
