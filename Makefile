# Two commands on a fresh machine: `make demo` and `make test`. Both set up first (idempotent, quick when done).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
OUT   ?= out/demo

.PHONY: setup test test-fast demo lint format bench docs clean
setup:            ## apt packages (ffmpeg, libnuma1, postgresql) + .venv with the real stack + the project, editable
	@bash .ci/setup

test: setup       ## the whole suite, slow end-to-end tests included
	$(PY) -m pytest -q

test-fast: setup  ## everything but the tests marked slow
	$(PY) -m pytest -q -m "not slow"

demo: setup       ## the whole loop on the embedded default; prints where the results are
	$(VENV)/bin/dataengine demo --out $(OUT)

lint: setup       ## ruff (lint + format check), mypy, import contracts (layers, no cycles) and file sizes
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider tests/test_tree.py

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup      ## every benchmark in bench/, each printing its ratio to the speed of light
	$(PY) bench/decode.py
	$(PY) bench/caption.py
	$(PY) bench/caption_gate.py --world 32
	$(PY) bench/curation.py
	$(PY) bench/shards.py
	$(PY) bench/runner.py
	$(PY) bench/training.py
	$(PY) bench/distill.py
	$(PY) bench/tower_shape.py
	$(PY) bench/api.py

docs: setup       ## the documentation site (MkDocs, --strict: a broken link or anchor fails); open out/site/index.html
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir out/site

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
