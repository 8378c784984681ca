# The whole set-up is two commands (see README.md):
#   make book   -> .venv + requirements + detlib (editable), then the HTML book in _build/html
#   make test   -> same set-up, then unit tests, nbval on every chapter, a strict book build
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed-stamp
CHAPTERS := $(sort $(wildcard chapters/*.ipynb))

.PHONY: setup vendor book test test-unit test-notebooks test-portable test-gpu test-book test-browser test-compat browser-deps bench notebooks sync lint clean

$(STAMP): requirements.txt pyproject.toml
	@echo "==> [setup] creating $(VENV) (if missing) and installing requirements.txt + detlib (editable)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)
	@echo "==> [setup] done: $(VENV) ($$($(PY) -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")'))"

setup: $(STAMP)

vendor: setup
	@$(PY) tools/fetch_vendor.py

book: setup vendor
	@echo "==> [book] building the HTML book from the committed notebook outputs"
	$(BIN)/jupyter-book build . --keep-going
	@echo "==> [book] done: open _build/html/index.html"

test: setup test-unit test-notebooks test-book test-browser
	@echo "==> [test] all passed: unit tests, nbval on $(words $(CHAPTERS)) chapter(s), strict book build, browser tests"

test-unit: setup
	@echo "==> [test] lint (ruff), then unit, property, parity and fresh-runtime tests (tests/)"
	$(BIN)/ruff check detlib tests bench tools book/_ext examples $(CHAPTERS)
	$(BIN)/ruff format --check detlib tests bench tools book/_ext examples $(CHAPTERS)
	$(BIN)/pytest tests -q --ignore=tests/browser

# The committed outputs come from a native run (`make notebooks`); `make test` re-runs the chapters
# under PyTorch's portable CPU kernels on one thread, the configuration furthest from that run.
NBVAL := $(BIN)/pytest -q -p no:cacheprovider --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
PORTABLE := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1

# `make test` runs the chapters two at a time, one kernel per chapter (`--dist loadscope`), each on
# one thread: the longest chapters (the last ones, which train) are handed out first.
NOTEBOOK_WORKERS ?= 2
CHAPTERS_LONGEST_FIRST := $(shell ls -r $(CHAPTERS) 2>/dev/null)

test-notebooks: setup
	@echo "==> [test] nbval: re-running every chapter ($(PORTABLE), $(NOTEBOOK_WORKERS) at a time) and comparing with its committed outputs"
	$(PORTABLE) $(NBVAL) -n $(NOTEBOOK_WORKERS) --dist loadscope --no-loadscope-reorder $(CHAPTERS_LONGEST_FIRST)

# The rest of the portability matrix: other CPU kernels and thread counts (one full nbval run each).
test-portable: setup
	@for config in "ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=2" "ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1" \
	               "ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2" "OMP_NUM_THREADS=1" "OMP_NUM_THREADS=2"; do \
	  echo "==> [test-portable] nbval with $$config"; \
	  env $$config $(NBVAL) $(CHAPTERS) || exit 1; \
	done
	@echo "==> [test-portable] every chapter passed nbval in every configuration"

# On a machine with an NVIDIA GPU: the CUDA tests, nbval with the chapters on the GPU, and the
# benchmarks (bench/results/cuda.json, and the GPU table of the Performance page).
test-gpu: setup
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu: no CUDA device visible to PyTorch')"
	@echo "==> [test-gpu] unit tests on CUDA (the CPU ones run too)"
	$(BIN)/pytest tests -q --ignore=tests/browser
	@echo "==> [test-gpu] nbval: every chapter on the GPU"
	$(NBVAL) $(CHAPTERS)
	@echo "==> [test-gpu] benchmarks on the GPU"
	$(PY) bench/run.py --device cuda

test-book: setup vendor
	@echo "==> [test] building the book with warnings as errors"
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "==> [test] book built: _build/html/index.html"

test-browser: setup browser-deps
	@echo "==> [test] the built book in Chromium, offline (screenshots in _build/screenshots/)"
	$(BIN)/pytest tests/browser -q

# Not part of `make test`: it downloads several PyTorch releases (GBs, kept in the wheel cache).
# Throwaway environments under $DETLIB_COMPAT_DIR (default /tmp/detlib-compat) at the floors of
# pyproject.toml and at the newest releases; unit tests and every chapter (nbval lax) in each.
test-compat:
	@echo "==> [compat] the declared floors and the newest releases, installed as Colab's bootstrap does"
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTHON) tools/compat.py
	@echo "==> [compat] results: book/_generated/compat.md (the book's Compatibility page)"

# Debian's Chromium for the browser tests (Playwright's own browser download is not used).
browser-deps:
	@if [ -x "$${CHROMIUM:-/usr/bin/chromium}" ]; then echo "==> [setup] chromium: $${CHROMIUM:-/usr/bin/chromium}"; \
	elif command -v apt-get >/dev/null; then echo "==> [setup] installing Debian's chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else echo "No Chromium found: install it and set CHROMIUM=/path/to/chromium"; exit 1; fi

bench: setup
	@echo "==> [bench] detlib vs torchvision vs the seeds' loops (writes bench/results/ and book/_generated/)"
	$(PY) bench/run.py
	@echo "==> [bench] done: book/_generated/benchmarks.md (run 'make book' to see it in the book)"

notebooks: setup
	@echo "==> [notebooks] executing every chapter in place (outputs and widget state saved)"
	$(PY) tools/execute_notebooks.py $(CHAPTERS)

sync: setup
	@echo "==> [sync] writing the repository URL from _config.yml into each chapter's badge and bootstrap cell"
	$(PY) tools/sync_notebooks.py $(CHAPTERS)

lint: setup
	$(BIN)/ruff check detlib tests bench tools book/_ext examples $(CHAPTERS)
	$(BIN)/ruff format --check detlib tests bench tools book/_ext examples $(CHAPTERS)

# Readable notebook diffs: `git diff` and merges show chapters cell by cell, sources first (nbdime's
# git drivers, which .gitattributes names for *.ipynb; the venv's path is written into this clone's
# .git/config, so no activated venv is needed). Run once per clone; without it git falls back to
# its plain text diff.
nbdime: setup
	git config diff.jupyternotebook.command "$(abspath $(BIN))/git-nbdiffdriver diff"
	git config merge.jupyternotebook.name "nbdime notebook merge"
	git config merge.jupyternotebook.driver "$(abspath $(BIN))/git-nbmergedriver merge %O %A %B %L %P"

clean:
	rm -rf _build .pytest_cache .hypothesis
