#!/usr/bin/env bash
# Regenerates the committed Python code for the wire contract in proto/.
# tests/test_proto_generated.py proves the committed code is what this produces.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-proto}"
python -m grpc_tools.protoc -I proto \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  proto/vllm_audit/v1/*.proto
