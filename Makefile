# The two commands the README gives: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install lint test test-fast demo proto bench

install:
	bash scripts/install.sh

proto: install
	PATH=$(VENV)/bin:$$PATH bash scripts/gen_proto.sh

lint: install
	$(VENV)/bin/ruff check agent vllm_hooks tests scripts
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -rs

test-fast: install
	$(PY) -m pytest -q -m "not vllm"

demo: install
	$(PY) scripts/demo.py


bench: install
	$(PY) scripts/benchmarks.py
	$(PY) scripts/bench_engine.py
