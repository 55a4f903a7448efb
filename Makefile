# The two commands the README gives: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install lock lock-upgrade tools lint test test-fast faults demo proto bench bench-performance

# .venv synced to requirements/test.txt (fails first when a lock is stale against pyproject.toml).
install:
	bash scripts/install.sh

# Recompile requirements/*.txt from pyproject.toml and requirements/*.in, keeping every pin it can;
# lock-upgrade takes the newest allowed versions. Both rewrite the README's tested-versions table.
lock:
	python3 scripts/lock.py compile

lock-upgrade:
	python3 scripts/lock.py compile --upgrade

proto: install
	PATH=$(VENV)/bin:$$PATH bash scripts/gen_proto.sh

lint: install
	$(VENV)/bin/ruff check agent vllm_hooks harness tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# promtool, docker-compose and Grafana's schema, for the operations tests, and the Sigma tools venv
# (pySigma's backends), for the Sigma rules' tests (each skipped without).
tools:
	bash scripts/install_test_tools.sh

test: lint tools
	VLLM_AUDIT_GRAFANA_SCHEMA_DIR=$(CURDIR)/.cache/grafana-schema $(PY) -m pytest -q -rfEs

test-fast: install
	$(PY) -m pytest -q -m "not vllm and not faults"

# The fault suite alone (also part of `make test`), with its table of what each fault cost.
faults: install
	$(PY) -m pytest -q -rfEs tests/faults

demo: install
	$(PY) scripts/demo.py


bench: install
	$(PY) scripts/benchmarks.py
	$(PY) scripts/bench_engine.py

# The performance issue's figures in one run, written into the README's table of them.
bench-performance: install
	$(PY) scripts/bench_performance.py --write-readme
