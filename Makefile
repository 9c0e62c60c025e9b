# Set-up and the two Quickstart commands: `make demo` (train the default dino model) and `make test`.
# torch==2.13.0 is installed first so that pip never pulls another (CUDA) torch build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench notebooks lab docs clean

# the demo needs torch + ddpmkit alone; the tests add the [test] extra (docs, notebooks, browser, hf)
$(BIN)/.core: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is needed"'
	$(PYTHON) -m venv $(VENV)
	@echo "== installing into $(VENV): pip, torch==2.13.0 (CPU), ddpmkit =="
	$(BIN)/pip install --progress-bar on --upgrade pip
	$(BIN)/pip install --progress-bar on torch==2.13.0
	$(BIN)/pip install --progress-bar on -c constraints.txt -e .
	touch $@

$(BIN)/.installed: $(BIN)/.core
	@echo "== installing into $(VENV): ddpmkit[test] (pytest, ruff, docs, notebooks, playground, selenium) =="
	$(BIN)/pip install --progress-bar on -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.core
	$(BIN)/ddpm train --out runs/dino --overwrite

# The browser test of `ddpm playground` needs Chromium: with CHROMIUM=auto (default) it is installed
# with apt-get when chromedriver is missing and we are root; `make test CHROMIUM=no` skips that test.
CHROMIUM ?= auto
test: $(BIN)/.installed
	@if [ "$(CHROMIUM)" = no ]; then echo "note: CHROMIUM=no: the playground's browser test will be skipped"; \
	elif ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "== installing chromium + chromium-driver system-wide with apt-get, for the playground's browser test (skip: make test CHROMIUM=no) =="; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver || \
	      echo "note: apt-get failed: the playground's browser test will be skipped"; \
	  else echo "note: no chromium/chromedriver (and not root with apt-get): the playground's browser test will be skipped"; fi; \
	fi
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
