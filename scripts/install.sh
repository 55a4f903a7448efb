#!/usr/bin/env bash
# Creates .venv exactly as requirements/test.txt says (vLLM's CPU build, torch's +cpu build, the
# project's extras and its tools), then installs the project itself, editable, without
# resolving anything: every package and version comes from the hashed lock.
#
# 1. the lock must be current against pyproject.toml (scripts/lock.py check; `make lock` fixes);
# 2. the uv that the lock pins is bootstrapped into .venv with pip, by hash;
# 3. `uv pip sync` makes .venv equal to the lock (adds, removes, replaces);
# 4. the project is installed editable with --no-deps and the lock's setuptools.
# torch's +cpu wheel: pip's find-links directory (PIP_FIND_LINKS, as on this project's CI
# machines) or, elsewhere, PyTorch's CPU index in TORCH_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VLLM_AUDIT_VENV:-.venv}"
LOCK="requirements/test.txt"
started=$(date +%s%N)

"$PY" scripts/lock.py check

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

# The uv entry of the lock (name, version and hashes) as a one-package requirements file.
uv_pin=$(awk '/^uv==/{p=1} p{print} p&&!/\\$/{exit}' "$LOCK")
uv_version=$(printf '%s\n' "$uv_pin" | sed -n 's/^uv==\([^ ]*\).*/\1/p')
if [ "$("$VENV/bin/uv" --version 2>/dev/null | awk '{print $2}')" != "$uv_version" ]; then
  echo "==> bootstrapping uv ${uv_version} from the lock"
  pin_file=$(mktemp)
  printf '%s\n' "$uv_pin" >"$pin_file"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$pin_file"
  rm -f "$pin_file"
fi

sources=()
for links in ${PIP_FIND_LINKS:-}; do sources+=(--find-links "$links"); done
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  sources+=(--extra-index-url "$TORCH_INDEX_URL" --index-strategy unsafe-best-match)
fi
echo "==> syncing $VENV to $LOCK (first run downloads vLLM's CPU build, ~3.4 GB)"
"$VENV/bin/uv" pip sync -q --python "$VENV/bin/python" --require-hashes "${sources[@]}" "$LOCK"
echo "==> installing vllm-audit (editable, no dependency resolution)"
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
echo "==> install took $(( ($(date +%s%N) - started) / 1000000 )) ms"
