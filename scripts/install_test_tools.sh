#!/usr/bin/env bash
# Tools the test suite drives besides Python, installed from their registries:
#   - prometheus + promtool (Debian): `promtool check/test rules`, `check metrics`, and a real
#     Prometheus that evaluates every dashboard query;
#   - docker-compose (Debian): `docker-compose config -q` on the compose file (no engine needed);
#   - @grafana/schema + TypeScript (npm): the dashboard type-checked against Grafana's schema;
#   - pySigma and its ClickHouse, Elasticsearch and Splunk backends (PyPI) in a venv of their own,
#     .cache/sigma-venv (requirements/sigma-tools.txt): the backends declare Python >= 3.13 and
#     install only with --ignore-requires-python, so never into the product's .venv.
# Idempotent. Without root or a registry, the tests that need a missing tool skip and say why.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing prometheus (promtool) and docker-compose from Debian"
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus docker-compose >/dev/null 2>&1 \
      || echo "warning: apt-get could not install prometheus/docker-compose; their tests skip"
  else
    echo "note: promtool/docker-compose missing and no root apt-get; their tests skip"
  fi
fi

GRAFANA_DIR=".cache/grafana-schema"
if [ ! -d "$GRAFANA_DIR/node_modules/@grafana/schema" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "==> installing @grafana/schema and typescript (npm) into $GRAFANA_DIR"
    mkdir -p "$GRAFANA_DIR"
    npm install --silent --no-audit --no-fund --prefix "$GRAFANA_DIR" \
      @grafana/schema@13.2.3 typescript@7.0.2 >/dev/null 2>&1 \
      || echo "warning: npm could not install @grafana/schema; the dashboard schema test skips"
  else
    echo "note: npm missing; the dashboard schema test skips"
  fi
fi
SIGMA_VENV=".cache/sigma-venv"
SIGMA_PINS="requirements/sigma-tools.txt"
if ! cmp -s "$SIGMA_PINS" "$SIGMA_VENV/installed.txt" 2>/dev/null; then
  echo "==> installing pySigma and its backends into $SIGMA_VENV"
  # The interpreter the project's .venv was made from (the tools need no package of it).
  BASE_PY="$(.venv/bin/python -c 'import sys; print(sys.base_prefix)' 2>/dev/null)/bin/python3"
  [ -x "$BASE_PY" ] || BASE_PY="$(command -v python3)"
  rm -rf "$SIGMA_VENV"
  if "$BASE_PY" -m venv "$SIGMA_VENV" \
     && "$SIGMA_VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
        --ignore-requires-python -r "$SIGMA_PINS" >/dev/null 2>&1; then
    cp "$SIGMA_PINS" "$SIGMA_VENV/installed.txt"
  else
    echo "warning: pip could not install pySigma's backends; the Sigma tests skip"
    rm -rf "$SIGMA_VENV"
  fi
fi
exit 0
