#!/usr/bin/env bash
# Tools the test suite drives besides Python, installed from their registries:
#   - prometheus + promtool (Debian): `promtool check/test rules`, `check metrics`, and a real
#     Prometheus that evaluates every dashboard query;
#   - docker-compose (Debian): `docker-compose config -q` on the compose file (no engine needed);
#   - @grafana/schema + TypeScript (npm): the dashboard type-checked against Grafana's schema.
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
exit 0
